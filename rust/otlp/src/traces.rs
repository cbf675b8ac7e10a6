//! ExportTraceServiceRequest → the `traces` table.
//!
//! `walk` parses and validates; a `TraceSink` receives each span with its
//! resource and scope. `Counter` only counts (for `count_items`), `Table`
//! builds the Arrow columns.

use std::ops::Range;

use crate::admit::{Admit, Reason};
use crate::columns::*;
use crate::common::{
    count_items_hint, optional_span_id, push_attribute, required_id, timestamp, walk_items, KeyValue, Nesting,
    Resource, Scope,
};
use crate::error::{Context, Result};
use crate::wire::Reader;

#[derive(Debug, Default)]
pub struct Event<'a> {
    pub time: i64,
    pub name: &'a str,
    pub attributes: Range<usize>,
    pub dropped_attributes_count: u32,
}

#[derive(Debug, Default)]
pub struct Link<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub trace_state: &'a str,
    pub attributes: Range<usize>,
    pub dropped_attributes_count: u32,
    pub flags: u32,
}

/// One span, parsed in place. Reused from span to span (its vectors keep
/// their capacity); event and link attributes live in shared pools.
#[derive(Debug, Default)]
pub struct Span<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub trace_state: &'a str,
    pub parent_span_id: &'a [u8],
    pub flags: u32,
    pub name: &'a str,
    pub kind: i32,
    pub start: i64,
    pub end: i64,
    pub attributes: Vec<KeyValue<'a>>,
    pub dropped_attributes_count: u32,
    pub events: Vec<Event<'a>>,
    pub dropped_events_count: u32,
    pub links: Vec<Link<'a>>,
    pub dropped_links_count: u32,
    pub status_message: &'a str,
    pub status_code: i32,
    pub event_attributes: Vec<KeyValue<'a>>,
    pub link_attributes: Vec<KeyValue<'a>>,
}

impl<'a> Span<'a> {
    fn parse(&mut self, buf: &'a [u8]) -> Result<()> {
        self.trace_id = &[];
        self.span_id = &[];
        self.trace_state = "";
        self.parent_span_id = &[];
        self.flags = 0;
        self.name = "";
        self.kind = 0;
        let (mut start, mut end) = (0u64, 0u64);
        self.attributes.clear();
        self.dropped_attributes_count = 0;
        self.events.clear();
        self.dropped_events_count = 0;
        self.links.clear();
        self.dropped_links_count = 0;
        self.status_message = "";
        self.status_code = 0;
        self.event_attributes.clear();
        self.link_attributes.clear();

        let mut r = Reader::new(buf);
        while let Some((f, v)) = r.next()? {
            match f {
                1 => self.trace_id = v.bytes().within("trace_id")?,
                2 => self.span_id = v.bytes().within("span_id")?,
                3 => self.trace_state = v.string().within("trace_state")?,
                4 => self.parent_span_id = v.bytes().within("parent_span_id")?,
                5 => self.name = v.string().within("name")?,
                6 => self.kind = v.int32().within("kind")?,
                7 => start = v.fixed64().within("start_time_unix_nano")?,
                8 => end = v.fixed64().within("end_time_unix_nano")?,
                9 => {
                    let i = self.attributes.len();
                    push_attribute(&mut self.attributes, v, "attributes", i)?;
                    // the rest of a run of attributes without the field dispatch
                    while let Some(v) = r.next_if_tag(0x4a)? {
                        let i = self.attributes.len();
                        push_attribute(&mut self.attributes, v, "attributes", i)?;
                    }
                }
                10 => self.dropped_attributes_count = v.uint32().within("dropped_attributes_count")?,
                11 => {
                    let i = self.events.len();
                    let ev = parse_event(v.bytes().at("events", i)?, &mut self.event_attributes).at("events", i)?;
                    self.events.push(ev);
                }
                12 => self.dropped_events_count = v.uint32().within("dropped_events_count")?,
                13 => {
                    let i = self.links.len();
                    let l = parse_link(v.bytes().at("links", i)?, &mut self.link_attributes).at("links", i)?;
                    self.links.push(l);
                }
                14 => self.dropped_links_count = v.uint32().within("dropped_links_count")?,
                15 => {
                    let mut s = Reader::new(v.bytes().within("status")?);
                    while let Some((f, v)) = s.next().within("status")? {
                        match f {
                            2 => self.status_message = v.string().within("message").within("status")?,
                            3 => self.status_code = v.int32().within("code").within("status")?,
                            _ => {}
                        }
                    }
                }
                16 => self.flags = v.fixed32().within("flags")?,
                _ => {}
            }
        }
        required_id(self.trace_id, 16, "trace id").within("trace_id")?;
        required_id(self.span_id, 8, "span id").within("span_id")?;
        optional_span_id(self.parent_span_id).within("parent_span_id")?;
        self.start = timestamp(start).within("start_time_unix_nano")?;
        self.end = timestamp(end).within("end_time_unix_nano")?;
        Ok(())
    }
}

fn parse_event<'a>(buf: &'a [u8], pool: &mut Vec<KeyValue<'a>>) -> Result<Event<'a>> {
    let first = pool.len();
    let mut ev = Event::default();
    let mut time = 0u64;
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        match f {
            1 => time = v.fixed64().within("time_unix_nano")?,
            2 => ev.name = v.string().within("name")?,
            3 => {
                let i = pool.len() - first;
                push_attribute(pool, v, "attributes", i)?;
            }
            4 => ev.dropped_attributes_count = v.uint32().within("dropped_attributes_count")?,
            _ => {}
        }
    }
    ev.time = timestamp(time).within("time_unix_nano")?;
    ev.attributes = first..pool.len();
    Ok(ev)
}

fn parse_link<'a>(buf: &'a [u8], pool: &mut Vec<KeyValue<'a>>) -> Result<Link<'a>> {
    let first = pool.len();
    let mut l = Link::default();
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        match f {
            1 => l.trace_id = v.bytes().within("trace_id")?,
            2 => l.span_id = v.bytes().within("span_id")?,
            3 => l.trace_state = v.string().within("trace_state")?,
            4 => {
                let i = pool.len() - first;
                push_attribute(pool, v, "attributes", i)?;
            }
            5 => l.dropped_attributes_count = v.uint32().within("dropped_attributes_count")?,
            6 => l.flags = v.fixed32().within("flags")?,
            _ => {}
        }
    }
    required_id(l.trace_id, 16, "trace id").within("trace_id")?;
    required_id(l.span_id, 8, "span id").within("span_id")?;
    l.attributes = first..pool.len();
    Ok(l)
}

pub trait TraceSink<'a> {
    /// Told once, before the first span: the request's size and its number of
    /// spans as far as its framing says (a capacity hint).
    fn expect(&mut self, _request_bytes: usize, _spans: usize) {}
    fn span(&mut self, res: &Resource<'a>, scope: &Scope<'a>, span: &Span<'a>) -> Result<()>;
}

/// Walks an ExportTraceServiceRequest (or TracesData: same wire form),
/// handing the spans `admit` takes to `sink`.
pub fn walk<'a, S: TraceSink<'a>>(buf: &'a [u8], sink: &mut S, admit: &mut Admit) -> Result<()> {
    const NESTING: Nesting = Nesting { resources: "resource_spans", scopes: "scope_spans", items: "spans" };
    sink.expect(buf.len(), count_items_hint(buf));
    let mut span = Span::default();
    walk_items(buf, &NESTING, |b, res, scope| {
        span.parse(b)?;
        if let Some(reason) = check(&span, admit) {
            admit.reject(reason);
            return Ok(());
        }
        admit.charge(b.len(), res, scope)?;
        sink.span(res, scope, &span)
    })
}

/// Why a parsed span does not become a row, if it does not.
#[inline]
fn check(span: &Span<'_>, admit: &Admit) -> Option<Reason> {
    if let Some(reason) = admit.check_time(span.start) {
        return Some(reason);
    }
    (span.end < span.start).then_some(Reason::SpanEndBeforeStart)
}

/// Counts spans.
#[derive(Default)]
pub struct Counter(pub u64);

impl<'a> TraceSink<'a> for Counter {
    #[inline]
    fn span(&mut self, _: &Resource<'a>, _: &Scope<'a>, _: &Span<'a>) -> Result<()> {
        self.0 += 1;
        Ok(())
    }
}

/// Builds the `traces` table.
pub struct Table {
    rows: usize,
    /// From `expect`: spans announced, request size.
    expected: usize,
    request_bytes: usize,
    trace_id: IdCol,
    span_id: IdCol,
    parent_span_id: IdCol,
    trace_state: StrCol,
    name: StrCol,
    kind: Vec<i32>,
    flags: Vec<u32>,
    start_time: Vec<i64>,
    end_time: Vec<i64>,
    duration_ns: Vec<i64>,
    status_code: Vec<i32>,
    status_message: StrCol,
    span_attributes: AttrCol,
    dropped_attributes_count: Vec<u32>,
    events_offsets: Vec<i32>,
    event_time: Vec<i64>,
    event_name: StrCol,
    event_attributes: AttrCol,
    event_dropped: Vec<u32>,
    dropped_events_count: Vec<u32>,
    links_offsets: Vec<i32>,
    link_trace_id: IdCol,
    link_span_id: IdCol,
    link_trace_state: StrCol,
    link_attributes: AttrCol,
    link_dropped: Vec<u32>,
    link_flags: Vec<u32>,
    dropped_links_count: Vec<u32>,
    rs: ResourceScopeCols,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            rows: 0,
            expected: 0,
            request_bytes: 0,
            trace_id: IdCol::new(),
            span_id: IdCol::new(),
            parent_span_id: IdCol::new(),
            trace_state: StrCol::new(),
            name: StrCol::new(),
            kind: Vec::new(),
            flags: Vec::new(),
            start_time: Vec::new(),
            end_time: Vec::new(),
            duration_ns: Vec::new(),
            status_code: Vec::new(),
            status_message: StrCol::new(),
            span_attributes: AttrCol::new(),
            dropped_attributes_count: Vec::new(),
            events_offsets: offsets(),
            event_time: Vec::new(),
            event_name: StrCol::new(),
            event_attributes: AttrCol::new(),
            event_dropped: Vec::new(),
            dropped_events_count: Vec::new(),
            links_offsets: offsets(),
            link_trace_id: IdCol::new(),
            link_span_id: IdCol::new(),
            link_trace_state: StrCol::new(),
            link_attributes: AttrCol::new(),
            link_dropped: Vec::new(),
            link_flags: Vec::new(),
            dropped_links_count: Vec::new(),
            rs: ResourceScopeCols::new(),
        }
    }
}

impl<'a> TraceSink<'a> for Table {
    fn expect(&mut self, request_bytes: usize, spans: usize) {
        // A valid span takes at least 30 bytes on the wire (its two ids with
        // their tags and lengths, plus its own tag and length): a request
        // full of empty spans must not make us reserve rows it cannot fill.
        const MIN_SPAN_BYTES: usize = 30;
        let n = spans.min(request_bytes / MIN_SPAN_BYTES);
        self.expected = n;
        self.request_bytes = request_bytes;
        for v in [&mut self.kind, &mut self.status_code] {
            v.reserve(n);
        }
        for v in [&mut self.flags, &mut self.dropped_attributes_count, &mut self.dropped_events_count] {
            v.reserve(n);
        }
        self.dropped_links_count.reserve(n);
        for v in [&mut self.start_time, &mut self.end_time, &mut self.duration_ns] {
            v.reserve(n);
        }
        self.events_offsets.reserve(n);
        self.links_offsets.reserve(n);
        self.trace_id.reserve(n, 16);
        self.span_id.reserve(n, 8);
        self.parent_span_id.reserve(n, 8);
        self.span_attributes.reserve(n);
    }

    #[inline]
    fn span(&mut self, res: &Resource<'a>, scope: &Scope<'a>, s: &Span<'a>) -> Result<()> {
        if self.rows == 1 && self.expected > 1 {
            self.reserve_like_first_span();
        }
        self.rows += 1;
        self.trace_id.push(s.trace_id);
        self.span_id.push(s.span_id);
        self.parent_span_id.push(s.parent_span_id);
        self.trace_state.push(s.trace_state);
        self.name.push(s.name);
        self.kind.push(s.kind);
        self.flags.push(s.flags);
        self.start_time.push(s.start);
        self.end_time.push(s.end);
        self.duration_ns.push(s.end - s.start);
        self.status_code.push(s.status_code);
        self.status_message.push(s.status_message);
        self.span_attributes.push(&s.attributes)?;
        self.dropped_attributes_count.push(s.dropped_attributes_count);
        for e in &s.events {
            self.event_time.push(e.time);
            self.event_name.push(e.name);
            self.event_attributes.push(&s.event_attributes[e.attributes.clone()])?;
            self.event_dropped.push(e.dropped_attributes_count);
        }
        push_offset(&mut self.events_offsets, self.event_time.len())?;
        self.dropped_events_count.push(s.dropped_events_count);
        for l in &s.links {
            self.link_trace_id.push(l.trace_id);
            self.link_span_id.push(l.span_id);
            self.link_trace_state.push(l.trace_state);
            self.link_attributes.push(&s.link_attributes[l.attributes.clone()])?;
            self.link_dropped.push(l.dropped_attributes_count);
            self.link_flags.push(l.flags);
        }
        push_offset(&mut self.links_offsets, self.link_flags.len())?;
        self.dropped_links_count.push(s.dropped_links_count);
        self.rs.push(res, scope)
    }
}

impl Table {
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// After the first span: room in the variable-size columns for the
    /// expected spans if they resemble it, but never more bytes than the
    /// request holds (so one large first span cannot inflate the reservation).
    #[cold]
    fn reserve_like_first_span(&mut self) {
        let first = self.name.bytes()
            + self.trace_state.bytes()
            + self.status_message.bytes()
            + self.span_attributes.bytes()
            + self.event_name.bytes()
            + self.event_attributes.bytes()
            + self.link_trace_state.bytes()
            + self.link_attributes.bytes()
            + 48 * self.link_flags.len()
            + 8 * self.event_time.len();
        let times = (self.expected - 1).min(self.request_bytes / first.max(1));
        self.name.reserve_like(times);
        self.trace_state.reserve_like(times);
        self.status_message.reserve_like(times);
        self.span_attributes.reserve_like(times);
        self.event_time.reserve(self.event_time.len() * times);
        self.event_name.reserve_like(times);
        self.event_attributes.reserve_like(times);
        self.link_trace_id.reserve_like(times);
        self.link_span_id.reserve_like(times);
        self.link_trace_state.reserve_like(times);
        self.link_attributes.reserve_like(times);
    }

    pub fn finish(self) -> Result<arrow_array::RecordBatch> {
        let events = list_of_struct(
            self.events_offsets,
            vec![
                ("time", ts_array(self.event_time), false),
                ("name", self.event_name.finish()?, false),
                ("attributes", self.event_attributes.finish()?, false),
                ("dropped_attributes_count", u32_array(self.event_dropped), false),
            ],
        )?;
        let links = list_of_struct(
            self.links_offsets,
            vec![
                ("trace_id", self.link_trace_id.finish()?, false),
                ("span_id", self.link_span_id.finish()?, false),
                ("trace_state", self.link_trace_state.finish()?, false),
                ("attributes", self.link_attributes.finish()?, false),
                ("dropped_attributes_count", u32_array(self.link_dropped), false),
                ("flags", u32_array(self.link_flags), false),
            ],
        )?;
        let mut cols: Vec<Column> = vec![
            ("trace_id", self.trace_id.finish()?, false),
            ("span_id", self.span_id.finish()?, false),
            ("parent_span_id", self.parent_span_id.finish()?, true),
            ("trace_state", self.trace_state.finish()?, false),
            ("name", self.name.finish()?, false),
            ("kind", i32_array(self.kind), false),
            ("flags", u32_array(self.flags), false),
            ("start_time", ts_array(self.start_time), false),
            ("end_time", ts_array(self.end_time), false),
            ("duration_ns", i64_array(self.duration_ns), false),
            ("status_code", i32_array(self.status_code), false),
            ("status_message", self.status_message.finish()?, false),
            ("span_attributes", self.span_attributes.finish()?, false),
            ("dropped_attributes_count", u32_array(self.dropped_attributes_count), false),
            ("events", events, false),
            ("dropped_events_count", u32_array(self.dropped_events_count), false),
            ("links", links, false),
            ("dropped_links_count", u32_array(self.dropped_links_count), false),
        ];
        self.rs.finish(&mut cols)?;
        batch(cols)
    }
}
