//! ExportLogsServiceRequest → the `logs` table.

use crate::admit::Admit;
use crate::columns::*;
use crate::common::{
    optional_span_id, optional_trace_id, parse_any_value, push_attribute, timestamp, walk_items, AnyValue, KeyValue,
    Nesting, Resource, Scope,
};
use crate::error::{Context, Result};
use crate::render::render;
use crate::wire::Reader;

/// One log record, parsed in place; reused from record to record.
#[derive(Debug)]
pub struct LogRecord<'a> {
    pub time: i64,
    pub observed_time: i64,
    pub severity_number: i32,
    pub severity_text: &'a str,
    pub body: AnyValue<'a>,
    pub attributes: Vec<KeyValue<'a>>,
    pub dropped_attributes_count: u32,
    pub flags: u32,
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub event_name: &'a str,
}

impl Default for LogRecord<'_> {
    fn default() -> Self {
        LogRecord {
            time: 0,
            observed_time: 0,
            severity_number: 0,
            severity_text: "",
            body: AnyValue::Empty,
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            flags: 0,
            trace_id: &[],
            span_id: &[],
            event_name: "",
        }
    }
}

impl<'a> LogRecord<'a> {
    fn parse(&mut self, buf: &'a [u8]) -> Result<()> {
        let (mut time, mut observed) = (0u64, 0u64);
        self.severity_number = 0;
        self.severity_text = "";
        self.body = AnyValue::Empty;
        self.attributes.clear();
        self.dropped_attributes_count = 0;
        self.flags = 0;
        self.trace_id = &[];
        self.span_id = &[];
        self.event_name = "";
        let mut r = Reader::new(buf);
        while let Some((f, v)) = r.next()? {
            match f {
                1 => time = v.fixed64().within("time_unix_nano")?,
                2 => self.severity_number = v.int32().within("severity_number")?,
                3 => self.severity_text = v.string().within("severity_text")?,
                5 => self.body = parse_any_value(v.bytes().within("body")?, 0).within("body")?,
                6 => {
                    let i = self.attributes.len();
                    push_attribute(&mut self.attributes, v, "attributes", i)?;
                    // the rest of a run of attributes without the field dispatch
                    while let Some(v) = r.next_if_tag(0x32)? {
                        let i = self.attributes.len();
                        push_attribute(&mut self.attributes, v, "attributes", i)?;
                    }
                }
                7 => self.dropped_attributes_count = v.uint32().within("dropped_attributes_count")?,
                8 => self.flags = v.fixed32().within("flags")?,
                9 => self.trace_id = v.bytes().within("trace_id")?,
                10 => self.span_id = v.bytes().within("span_id")?,
                11 => observed = v.fixed64().within("observed_time_unix_nano")?,
                12 => self.event_name = v.string().within("event_name")?,
                _ => {}
            }
        }
        optional_trace_id(self.trace_id).within("trace_id")?;
        optional_span_id(self.span_id).within("span_id")?;
        self.time = timestamp(time).within("time_unix_nano")?;
        self.observed_time = timestamp(observed).within("observed_time_unix_nano")?;
        Ok(())
    }
}

pub trait LogSink<'a> {
    fn record(&mut self, res: &Resource<'a>, scope: &Scope<'a>, rec: &LogRecord<'a>) -> Result<()>;
}

/// Walks an ExportLogsServiceRequest (or LogsData), handing the records
/// `admit` takes to `sink`.
pub fn walk<'a, S: LogSink<'a>>(buf: &'a [u8], sink: &mut S, admit: &mut Admit) -> Result<()> {
    const NESTING: Nesting = Nesting { resources: "resource_logs", scopes: "scope_logs", items: "log_records" };
    let mut rec = LogRecord::default();
    walk_items(buf, &NESTING, |b, res, scope| {
        rec.parse(b)?;
        if rec.time == 0 && rec.observed_time == 0 {
            // Neither clock set: the acceptor observed it when it took the request.
            if let Some(window) = admit.window() {
                rec.observed_time = window.now_ns;
            }
        }
        // A record's place in time is its own time, or else its observed time
        // (the writer partitions by the same rule).
        let time = if rec.time != 0 { rec.time } else { rec.observed_time };
        if let Some(reason) = admit.check_time(time) {
            admit.reject(reason);
            return Ok(());
        }
        admit.charge(b.len(), res, scope)?;
        sink.record(res, scope, &rec)
    })
}

/// Counts log records.
#[derive(Default)]
pub struct Counter(pub u64);

impl<'a> LogSink<'a> for Counter {
    #[inline]
    fn record(&mut self, _: &Resource<'a>, _: &Scope<'a>, _: &LogRecord<'a>) -> Result<()> {
        self.0 += 1;
        Ok(())
    }
}

/// Builds the `logs` table.
#[derive(Default)]
pub struct Table {
    rows: usize,
    time: Vec<i64>,
    observed_time: Vec<i64>,
    severity_number: Vec<i32>,
    severity_text: StrCol,
    body: StrCol,
    log_attributes: AttrCol,
    dropped_attributes_count: Vec<u32>,
    flags: Vec<u32>,
    trace_id: IdCol,
    span_id: IdCol,
    event_name: StrCol,
    rs: ResourceScopeCols,
    scratch: String,
}

impl<'a> LogSink<'a> for Table {
    fn record(&mut self, res: &Resource<'a>, scope: &Scope<'a>, l: &LogRecord<'a>) -> Result<()> {
        self.rows += 1;
        self.time.push(l.time);
        self.observed_time.push(l.observed_time);
        self.severity_number.push(l.severity_number);
        self.severity_text.push(l.severity_text);
        let body = render(l.body, &mut self.scratch).within("body")?;
        self.body.push_opt(body);
        self.log_attributes.push(&l.attributes)?;
        self.dropped_attributes_count.push(l.dropped_attributes_count);
        self.flags.push(l.flags);
        self.trace_id.push(l.trace_id);
        self.span_id.push(l.span_id);
        self.event_name.push(l.event_name);
        self.rs.push(res, scope)
    }
}

impl Table {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn finish(self) -> Result<arrow_array::RecordBatch> {
        let mut cols: Vec<Column> = vec![
            ("time", ts_array(self.time), false),
            ("observed_time", ts_array(self.observed_time), false),
            ("severity_number", i32_array(self.severity_number), false),
            ("severity_text", self.severity_text.finish()?, false),
            ("body", self.body.finish()?, true),
            ("log_attributes", self.log_attributes.finish()?, false),
            ("dropped_attributes_count", u32_array(self.dropped_attributes_count), false),
            ("flags", u32_array(self.flags), false),
            ("trace_id", self.trace_id.finish()?, true),
            ("span_id", self.span_id.finish()?, true),
            ("event_name", self.event_name.finish()?, false),
        ];
        self.rs.finish(&mut cols)?;
        batch(cols)
    }
}
