//! Property tests: arbitrary OTLP messages built with the official prost
//! types (opentelemetry-proto), encoded by prost, converted by us; plus
//! arbitrary, truncated and mutated bytes, which must give an error or a
//! result, never a panic, and the same verdict from `count_items`.

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, TimestampNanosecondType, UInt64Type};
use arrow_array::{Array, MapArray, RecordBatch, StringArray};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use proptest::prelude::*;
use prost::Message;
use signaldb_otlp::{convert, convert_with, count_items, count_items_with, Encoding, Policy, Signal, TimeWindow};

// ---------- strategies ----------

fn any_value() -> impl Strategy<Value = AnyValue> {
    let leaf = prop_oneof![
        ".{0,8}".prop_map(any_value::Value::StringValue),
        any::<bool>().prop_map(any_value::Value::BoolValue),
        any::<i64>().prop_map(any_value::Value::IntValue),
        any::<f64>().prop_map(any_value::Value::DoubleValue),
        prop::collection::vec(any::<u8>(), 0..6).prop_map(any_value::Value::BytesValue),
    ]
    .prop_map(|v| AnyValue { value: Some(v) });
    let leaf = prop_oneof![9 => leaf, 1 => Just(AnyValue { value: None })];
    leaf.prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3)
                .prop_map(|values| AnyValue { value: Some(any_value::Value::ArrayValue(ArrayValue { values })) }),
            prop::collection::vec(("[a-z]{0,3}", inner), 0..3).prop_map(|kvs| AnyValue {
                value: Some(any_value::Value::KvlistValue(KeyValueList {
                    values: kvs
                        .into_iter()
                        .map(|(key, v)| KeyValue { key, value: Some(v), ..Default::default() })
                        .collect(),
                })),
            }),
        ]
    })
}

fn attributes() -> impl Strategy<Value = Vec<KeyValue>> {
    prop::collection::vec(
        ("[a-z.]{0,6}", prop::option::of(any_value())).prop_map(|(key, value)| KeyValue {
            key,
            value,
            ..Default::default()
        }),
        0..4,
    )
}

fn id(len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), len).prop_filter("not all zero", |v| v.iter().any(|&b| b != 0))
}

fn ts() -> impl Strategy<Value = u64> {
    0u64..=i64::MAX as u64
}

fn resource() -> impl Strategy<Value = Option<Resource>> {
    prop::option::of((attributes(), any::<u32>()).prop_map(|(attributes, dropped_attributes_count)| Resource {
        attributes,
        dropped_attributes_count,
        ..Default::default()
    }))
}

fn scope() -> impl Strategy<Value = Option<InstrumentationScope>> {
    prop::option::of((".{0,5}", ".{0,5}", attributes(), any::<u32>()).prop_map(|(name, version, attributes, d)| {
        InstrumentationScope { name, version, attributes, dropped_attributes_count: d }
    }))
}

fn span_strategy() -> impl Strategy<Value = Span> {
    let ids = (id(16), id(8), prop_oneof![Just(vec![]), id(8)]);
    let events = prop::collection::vec(
        (ts(), ".{0,5}", attributes(), any::<u32>()).prop_map(|(t, name, attributes, d)| span::Event {
            time_unix_nano: t,
            name,
            attributes,
            dropped_attributes_count: d,
        }),
        0..3,
    );
    let links = prop::collection::vec(
        (id(16), id(8), ".{0,5}", attributes(), any::<u32>(), any::<u32>()).prop_map(
            |(trace_id, span_id, trace_state, attributes, d, flags)| span::Link {
                trace_id,
                span_id,
                trace_state,
                attributes,
                dropped_attributes_count: d,
                flags,
            },
        ),
        0..2,
    );
    let scalars = (".{0,8}", ".{0,4}", any::<i32>(), ts(), ts(), any::<u32>(), any::<[u32; 3]>());
    let status = prop::option::of((any::<i32>(), ".{0,5}").prop_map(|(code, message)| Status { code, message }));
    (ids, scalars, attributes(), events, links, status).prop_map(
        |(
            (trace_id, span_id, parent_span_id),
            (name, trace_state, kind, start, end, flags, d),
            attributes,
            events,
            links,
            status,
        )| Span {
            trace_id,
            span_id,
            parent_span_id,
            trace_state,
            name,
            kind,
            flags,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes,
            dropped_attributes_count: d[0],
            events,
            dropped_events_count: d[1],
            links,
            dropped_links_count: d[2],
            status,
        },
    )
}

fn traces_request() -> impl Strategy<Value = ExportTraceServiceRequest> {
    let scope_spans = (scope(), prop::collection::vec(span_strategy(), 0..4), ".{0,3}")
        .prop_map(|(scope, spans, schema_url)| ScopeSpans { scope, spans, schema_url });
    let resource_spans = (resource(), prop::collection::vec(scope_spans, 0..3), ".{0,3}")
        .prop_map(|(resource, scope_spans, schema_url)| ResourceSpans { resource, scope_spans, schema_url });
    prop::collection::vec(resource_spans, 0..3).prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
}

fn logs_request() -> impl Strategy<Value = ExportLogsServiceRequest> {
    let record = (
        (ts(), ts(), any::<i32>(), ".{0,4}", prop::option::of(any_value())),
        attributes(),
        (prop_oneof![Just(vec![]), id(16)], prop_oneof![Just(vec![]), id(8)], any::<u32>(), ".{0,4}"),
    )
        .prop_map(|((t, o, sev, text, body), attributes, (trace_id, span_id, flags, event_name))| LogRecord {
            time_unix_nano: t,
            observed_time_unix_nano: o,
            severity_number: sev,
            severity_text: text,
            body,
            attributes,
            dropped_attributes_count: 0,
            flags,
            trace_id,
            span_id,
            event_name,
        });
    let scope_logs = (scope(), prop::collection::vec(record, 0..4)).prop_map(|(scope, log_records)| ScopeLogs {
        scope,
        log_records,
        schema_url: String::new(),
    });
    let resource_logs = (resource(), prop::collection::vec(scope_logs, 0..3))
        .prop_map(|(resource, scope_logs)| ResourceLogs { resource, scope_logs, schema_url: String::new() });
    prop::collection::vec(resource_logs, 0..3).prop_map(|resource_logs| ExportLogsServiceRequest { resource_logs })
}

fn metrics_request() -> impl Strategy<Value = ExportMetricsServiceRequest> {
    let number = || {
        (
            ts(),
            ts(),
            attributes(),
            prop::option::of(prop_oneof![
                any::<f64>().prop_map(number_data_point::Value::AsDouble),
                any::<i64>().prop_map(number_data_point::Value::AsInt),
            ]),
        )
            .prop_map(|(s, t, attributes, value)| NumberDataPoint {
                attributes,
                start_time_unix_nano: s,
                time_unix_nano: t,
                value,
                ..Default::default()
            })
    };
    // count: the buckets' sum (valid) or anything (rejected unless it happens to match)
    let hist =
        (ts(), any::<u64>(), any::<bool>(), prop::option::of(any::<f64>()), prop::collection::vec(0u64..1 << 40, 0..4))
            .prop_map(|(t, count, valid, sum, bucket_counts)| HistogramDataPoint {
                time_unix_nano: t,
                count: if valid { bucket_counts.iter().sum() } else { count },
                sum,
                explicit_bounds: (0..bucket_counts.len().saturating_sub(1)).map(|i| i as f64).collect(),
                bucket_counts,
                ..Default::default()
            });
    let data = prop_oneof![
        prop::collection::vec(number(), 0..3).prop_map(|data_points| Some(metric::Data::Gauge(Gauge { data_points }))),
        (prop::collection::vec(number(), 0..3), any::<bool>(), 0i32..3).prop_map(|(data_points, m, t)| Some(
            metric::Data::Sum(Sum { data_points, is_monotonic: m, aggregation_temporality: t })
        )),
        (prop::collection::vec(hist, 0..3), 0i32..3).prop_map(|(data_points, t)| Some(metric::Data::Histogram(
            Histogram { data_points, aggregation_temporality: t }
        ))),
        Just(None),
    ];
    let m = (".{0,5}", data).prop_map(|(name, data)| Metric { name, data, ..Default::default() });
    let scope_metrics = (scope(), prop::collection::vec(m, 0..4)).prop_map(|(scope, metrics)| ScopeMetrics {
        scope,
        metrics,
        schema_url: String::new(),
    });
    let resource_metrics = (resource(), prop::collection::vec(scope_metrics, 0..3))
        .prop_map(|(resource, scope_metrics)| ResourceMetrics { resource, scope_metrics, schema_url: String::new() });
    prop::collection::vec(resource_metrics, 0..3)
        .prop_map(|resource_metrics| ExportMetricsServiceRequest { resource_metrics })
}

// ---------- helpers ----------

fn hex(b: &[u8]) -> Option<String> {
    if b.is_empty() {
        None
    } else {
        Some(b.iter().map(|x| format!("{x:02x}")).collect())
    }
}

fn strings(batch: &RecordBatch, col: &str) -> Vec<Option<String>> {
    let a: &StringArray = batch.column_by_name(col).unwrap().as_string::<i32>();
    (0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i).to_owned())).collect()
}

fn map_rows(batch: &RecordBatch, col: &str) -> Vec<Vec<(String, Option<String>)>> {
    let m: &MapArray = batch.column_by_name(col).unwrap().as_map();
    (0..m.len())
        .map(|i| {
            let e = m.value(i);
            let k = e.column(0).as_string::<i32>();
            let v = e.column(1).as_string::<i32>();
            (0..e.len()).map(|j| (k.value(j).to_owned(), v.is_valid(j).then(|| v.value(j).to_owned()))).collect()
        })
        .collect()
}

/// What the map value of an AnyValue must mean: strings verbatim, the rest
/// canonical JSON that parses back to the same value.
fn check_rendered(v: Option<&AnyValue>, got: &Option<String>) {
    let value = v.and_then(|v| v.value.as_ref());
    match (value, got) {
        (None, None) => {}
        (Some(any_value::Value::StringValue(s)), Some(g)) => assert_eq!(s, g),
        (Some(other), Some(g)) => {
            let j: serde_json::Value = serde_json::from_str(g).unwrap_or_else(|e| panic!("not JSON {g:?}: {e}"));
            match other {
                any_value::Value::BoolValue(b) => assert_eq!(j, serde_json::json!(b)),
                any_value::Value::IntValue(i) => assert_eq!(g, &i.to_string()),
                any_value::Value::DoubleValue(d) if d.is_finite() => {
                    assert!(j.is_number(), "{g}");
                    assert_eq!(g.parse::<f64>().unwrap().to_bits(), d.to_bits(), "{g}")
                }
                any_value::Value::DoubleValue(_) => assert!(j.is_string()),
                any_value::Value::BytesValue(_) => assert!(j.is_string()),
                any_value::Value::ArrayValue(a) => assert_eq!(j.as_array().unwrap().len(), a.values.len()),
                any_value::Value::KvlistValue(_) => assert!(j.is_object()),
                _ => {}
            }
        }
        (v, g) => panic!("value {v:?} rendered as {g:?}"),
    }
}

fn check_attrs(want: &[KeyValue], got: &[(String, Option<String>)]) {
    assert_eq!(want.len(), got.len());
    for (w, (k, v)) in want.iter().zip(got) {
        assert_eq!(&w.key, k);
        check_rendered(w.value.as_ref(), v);
    }
}

/// convert and count_items agree: same verdict, same counts; never a panic.
fn verdict(signal: Signal, body: &[u8]) -> Result<u64, String> {
    let c = count_items(signal, body, Encoding::Protobuf);
    match convert(signal, body, Encoding::Protobuf) {
        Ok(conv) => {
            let rows: usize = conv.tables.iter().map(|(_, b)| b.num_rows()).sum();
            assert_eq!(rows as u64, conv.items);
            let c = c.expect("count_items failed where convert succeeded");
            assert_eq!((c.items, c.rejected), (conv.items, conv.rejected));
            Ok(conv.items)
        }
        Err(e) => {
            assert_eq!(c.expect_err("count_items succeeded where convert failed").to_string(), e.to_string());
            assert!(e.to_string().starts_with("invalid Export"), "{e}");
            Err(e.to_string())
        }
    }
}

// ---------- properties ----------

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn traces_convert_faithfully(req in traces_request()) {
        let body = req.encode_to_vec();
        let conv = convert(Signal::Traces, &body, Encoding::Protobuf).unwrap();
        let batch = &conv.tables[0].1;
        let all: Vec<(&ResourceSpans, &ScopeSpans, &Span)> = req.resource_spans.iter()
            .flat_map(|r| r.scope_spans.iter().flat_map(move |s| s.spans.iter().map(move |sp| (r, s, sp))))
            .collect();
        // OTLP: a span ends at or after its start; the others are rejected, not rows
        let (spans, ended_early): (Vec<_>, Vec<_>) =
            all.into_iter().partition(|(_, _, sp)| sp.end_time_unix_nano >= sp.start_time_unix_nano);
        let expected_rejected = if ended_early.is_empty() { vec![] } else { vec![("span_end_before_start", ended_early.len() as u64)] };
        prop_assert_eq!(&conv.rejected, &expected_rejected);
        prop_assert_eq!(batch.num_rows(), spans.len());
        prop_assert_eq!(verdict(Signal::Traces, &body), Ok(spans.len() as u64));
        let trace_ids = strings(batch, "trace_id");
        let parents = strings(batch, "parent_span_id");
        let names = strings(batch, "name");
        let attrs = map_rows(batch, "span_attributes");
        let res_attrs = map_rows(batch, "resource_attributes");
        let scope_names = strings(batch, "scope_name");
        let start = batch.column_by_name("start_time").unwrap().as_primitive::<TimestampNanosecondType>();
        let events = batch.column_by_name("events").unwrap().as_list::<i32>();
        for (i, (r, s, sp)) in spans.iter().enumerate() {
            prop_assert_eq!(&trace_ids[i], &hex(&sp.trace_id));
            prop_assert_eq!(&parents[i], &hex(&sp.parent_span_id));
            prop_assert_eq!(names[i].as_deref(), Some(sp.name.as_str()));
            prop_assert_eq!(start.value(i), sp.start_time_unix_nano as i64);
            prop_assert_eq!(events.value_length(i) as usize, sp.events.len());
            check_attrs(&sp.attributes, &attrs[i]);
            check_attrs(r.resource.as_ref().map_or(&[][..], |r| &r.attributes), &res_attrs[i]);
            prop_assert_eq!(scope_names[i].as_deref(), Some(s.scope.as_ref().map_or("", |s| s.name.as_str())));
        }
    }

    #[test]
    fn logs_convert_faithfully(req in logs_request()) {
        let body = req.encode_to_vec();
        let conv = convert(Signal::Logs, &body, Encoding::Protobuf).unwrap();
        let batch = &conv.tables[0].1;
        let recs: Vec<&LogRecord> = req.resource_logs.iter()
            .flat_map(|r| r.scope_logs.iter().flat_map(|s| s.log_records.iter())).collect();
        prop_assert_eq!(batch.num_rows(), recs.len());
        prop_assert_eq!(verdict(Signal::Logs, &body), Ok(recs.len() as u64));
        let bodies = strings(batch, "body");
        let trace_ids = strings(batch, "trace_id");
        let attrs = map_rows(batch, "log_attributes");
        for (i, r) in recs.iter().enumerate() {
            check_rendered(r.body.as_ref(), &bodies[i]);
            prop_assert_eq!(&trace_ids[i], &hex(&r.trace_id));
            check_attrs(&r.attributes, &attrs[i]);
        }
    }

    #[test]
    fn metrics_convert_faithfully(req in metrics_request()) {
        let body = req.encode_to_vec();
        let conv = convert(Signal::Metrics, &body, Encoding::Protobuf).unwrap();
        let metrics: Vec<&Metric> = req.resource_metrics.iter()
            .flat_map(|r| r.scope_metrics.iter().flat_map(|s| s.metrics.iter())).collect();
        let no_data = metrics.iter().filter(|m| m.data.is_none()).count() as u64;
        let mut gauge_values = vec![];
        let mut hist_counts = vec![];
        let mut sums = 0usize;
        for m in &metrics {
            match &m.data {
                Some(metric::Data::Gauge(g)) => gauge_values.extend(g.data_points.iter().map(|p| match p.value {
                    Some(number_data_point::Value::AsDouble(d)) => Some(d.to_bits()),
                    Some(number_data_point::Value::AsInt(i)) => Some((i as f64).to_bits()),
                    None => None,
                })),
                Some(metric::Data::Sum(s)) => sums += s.data_points.len(),
                Some(metric::Data::Histogram(h)) => hist_counts.extend(h.data_points.iter().map(|p| (p.count, p.bucket_counts.clone()))),
                _ => {}
            }
        }
        let table = |n: &str| &conv.tables.iter().find(|(name, _)| *name == n).unwrap().1;
        let g = table("metrics_gauge").column_by_name("value").unwrap().as_primitive::<Float64Type>();
        let got: Vec<Option<u64>> = (0..g.len()).map(|i| g.is_valid(i).then(|| g.value(i).to_bits())).collect();
        prop_assert_eq!(got, gauge_values);
        prop_assert_eq!(table("metrics_sum").num_rows(), sums);
        // OTLP: a histogram's count is the sum of its buckets (when it has buckets)
        let bad_count = hist_counts.iter().filter(|(c, b)| !b.is_empty() && u128::from(*c) != b.iter().map(|&x| u128::from(x)).sum::<u128>()).count() as u64;
        hist_counts.retain(|(c, b)| b.is_empty() || u128::from(*c) == b.iter().map(|&x| u128::from(x)).sum::<u128>());
        let h = table("metrics_histogram");
        let counts = h.column_by_name("count").unwrap().as_primitive::<UInt64Type>();
        let buckets = h.column_by_name("bucket_counts").unwrap().as_list::<i32>();
        prop_assert_eq!(h.num_rows(), hist_counts.len());
        for (i, (count, b)) in hist_counts.iter().enumerate() {
            prop_assert_eq!(counts.value(i), *count);
            let v = buckets.value(i);
            prop_assert_eq!(v.as_primitive::<UInt64Type>().values().to_vec(), b.clone());
        }
        let mut expected_rejected = vec![];
        if no_data > 0 { expected_rejected.push(("metric_without_data", no_data)); }
        if bad_count > 0 { expected_rejected.push(("histogram_count_not_sum_of_buckets", bad_count)); }
        prop_assert_eq!(&conv.rejected, &expected_rejected);
        prop_assert_eq!(verdict(Signal::Metrics, &body), Ok(conv.items));
    }

    /// With a time window, exactly the spans whose start is set and inside it
    /// (and that end after they start) become rows, in order; count_items
    /// agrees under the same policy.
    #[test]
    fn window_keeps_exactly_the_spans_inside(req in traces_request(), a in ts(), b in ts()) {
        let (min_ns, max_ns) = (a.min(b) as i64, a.max(b) as i64);
        let policy = Policy { window: Some(TimeWindow { min_ns, max_ns, now_ns: min_ns }), ..Policy::default() };
        let body = req.encode_to_vec();
        let conv = convert_with(Signal::Traces, &body, Encoding::Protobuf, &policy).unwrap();
        let counted = count_items_with(Signal::Traces, &body, Encoding::Protobuf, &policy).unwrap();
        prop_assert_eq!((counted.items, &counted.rejected), (conv.items, &conv.rejected));
        let kept: Vec<i64> = req.resource_spans.iter().flat_map(|r| r.scope_spans.iter().flat_map(|s| s.spans.iter()))
            .filter(|sp| sp.start_time_unix_nano != 0)
            .map(|sp| (sp.start_time_unix_nano as i64, sp.end_time_unix_nano as i64))
            .filter(|&(start, end)| start >= min_ns && start <= max_ns && end >= start)
            .map(|(start, _)| start)
            .collect();
        let start = conv.tables[0].1.column_by_name("start_time").unwrap().as_primitive::<TimestampNanosecondType>();
        prop_assert_eq!(start.values().to_vec(), kept);
    }

    #[test]
    fn truncated_requests_error_or_convert(req in traces_request(), cut in any::<prop::sample::Index>()) {
        let body = req.encode_to_vec();
        if !body.is_empty() {
            let n = cut.index(body.len());
            let _ = verdict(Signal::Traces, &body[..n]);
        }
    }

    #[test]
    fn mutated_requests_never_panic(
        req in traces_request(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut body = req.encode_to_vec();
        if !body.is_empty() {
            for (i, b) in edits {
                let n = i.index(body.len());
                body[n] = b;
            }
            for signal in [Signal::Traces, Signal::Logs, Signal::Metrics] {
                let _ = verdict(signal, &body);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..300)) {
        for signal in [Signal::Traces, Signal::Logs, Signal::Metrics] {
            let _ = verdict(signal, &body);
            let _ = count_items(signal, &body, Encoding::Json);
        }
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let mut v = AnyValue { value: Some(any_value::Value::IntValue(1)) };
    for _ in 0..200 {
        v = AnyValue { value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![v] })) };
    }
    let sp = Span {
        trace_id: vec![1; 16],
        span_id: vec![1; 8],
        attributes: vec![KeyValue { key: "deep".into(), value: Some(v), ..Default::default() }],
        ..Default::default()
    };
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans { spans: vec![sp], ..Default::default() }],
            ..Default::default()
        }],
    };
    let e = verdict(Signal::Traces, &req.encode_to_vec()).unwrap_err();
    assert!(e.contains("nested more than"), "{e}");
}
