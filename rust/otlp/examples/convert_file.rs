//! Times `convert` and `count_items` on a request read from a file, in Rust
//! alone (no Python): `cargo run --release -p signaldb-otlp --example
//! convert_file -- REQUEST.pb traces [ITERATIONS] [count_items|convert]`
//! (the last argument times one of the two alone, e.g. under `perf record`).

use std::time::Instant;

use signaldb_otlp::{convert, count_items, Encoding, Signal};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: convert_file REQUEST.pb traces|logs|metrics [ITERATIONS] [count_items|convert]");
        std::process::exit(2);
    }
    let body = std::fs::read(&args[1]).expect("read the request file");
    let signal = Signal::parse(&args[2]).expect("traces, logs or metrics");
    let iters: u32 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let only = args.get(4).map(String::as_str);
    let items = count_items(signal, &body, Encoding::Protobuf).expect("valid request").items;
    for (name, f) in [
        ("count_items", &(|| count_items(signal, &body, Encoding::Protobuf).map(|c| c.items)) as &dyn Fn() -> _),
        ("convert", &|| convert(signal, &body, Encoding::Protobuf).map(|c| c.items)),
    ] {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let t0 = Instant::now();
        for _ in 0..iters {
            f().expect("convert");
        }
        let per = t0.elapsed().as_secs_f64() / f64::from(iters);
        println!("{name:12} {:9.1} us/request  {:12.0} items/s", per * 1e6, items as f64 / per);
    }
}
