//! ExportMetricsServiceRequest → one table per metric type: `metrics_gauge`,
//! `metrics_sum`, `metrics_histogram`, `metrics_exponential_histogram`,
//! `metrics_summary`. One row per data point.
//!
//! A metric whose `data` oneof is unset has nothing to store: it is counted
//! in `rejected` as `metric_without_data`, never silently dropped. Points that
//! break the protos' rules or fall outside the time window are rejected the
//! same way (`admit`, `check_point`).

use std::ops::Range;

use crate::admit::{Admit, Reason};
use crate::columns::*;
use crate::common::{
    optional_span_id, optional_trace_id, push_attribute, timestamp, walk_items, KeyValue, Nesting, Resource, Scope,
};
use crate::error::{Context, DecodeError, Result};
use crate::wire::{Reader, Value};

pub const TABLES: &[&str] =
    &["metrics_gauge", "metrics_sum", "metrics_histogram", "metrics_exponential_histogram", "metrics_summary"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    #[default]
    None,
    Gauge,
    Sum,
    Histogram,
    ExponentialHistogram,
    Summary,
}

impl Kind {
    fn of_field(f: u32) -> Option<Kind> {
        match f {
            5 => Some(Kind::Gauge),
            7 => Some(Kind::Sum),
            9 => Some(Kind::Histogram),
            10 => Some(Kind::ExponentialHistogram),
            11 => Some(Kind::Summary),
            _ => None,
        }
    }
    fn field_name(self) -> &'static str {
        match self {
            Kind::None => "data",
            Kind::Gauge => "gauge",
            Kind::Sum => "sum",
            Kind::Histogram => "histogram",
            Kind::ExponentialHistogram => "exponential_histogram",
            Kind::Summary => "summary",
        }
    }
}

/// The metric a point belongs to.
#[derive(Debug, Default)]
pub struct Metric<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub unit: &'a str,
    pub kind: Kind,
    pub aggregation_temporality: i32,
    pub is_monotonic: bool,
}

/// A number (gauge/sum point value, exemplar value); `None` when unset.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Number {
    #[default]
    None,
    Double(f64),
    Int(i64),
}

impl Number {
    pub fn as_f64(self) -> Option<f64> {
        match self {
            Number::None => None,
            Number::Double(d) => Some(d),
            Number::Int(i) => Some(i as f64),
        }
    }
    pub fn as_i64(self) -> Option<i64> {
        match self {
            Number::Int(i) => Some(i),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
pub struct Exemplar<'a> {
    pub filtered_attributes: Range<usize>,
    pub time: i64,
    pub value: Number,
    pub span_id: &'a [u8],
    pub trace_id: &'a [u8],
}

/// Any data point, parsed in place; fields a type lacks stay at their default.
#[derive(Debug, Default)]
pub struct Point<'a> {
    pub attributes: Vec<KeyValue<'a>>,
    pub start: i64,
    pub time: i64,
    pub flags: u32,
    pub exemplars: Vec<Exemplar<'a>>,
    pub exemplar_attributes: Vec<KeyValue<'a>>,
    /// gauge, sum
    pub value: Number,
    /// histograms, summary
    pub count: u64,
    pub sum: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// histogram (explicit_bounds as f64 bits)
    pub bucket_counts: Vec<u64>,
    pub explicit_bounds: Vec<u64>,
    /// exponential histogram
    pub scale: i32,
    pub zero_count: u64,
    pub zero_threshold: f64,
    pub positive_offset: i32,
    pub positive_bucket_counts: Vec<u64>,
    pub negative_offset: i32,
    pub negative_bucket_counts: Vec<u64>,
    /// summary: (quantile, value)
    pub quantiles: Vec<(f64, f64)>,
}

impl<'a> Point<'a> {
    fn reset(&mut self) {
        self.attributes.clear();
        self.start = 0;
        self.time = 0;
        self.flags = 0;
        self.exemplars.clear();
        self.exemplar_attributes.clear();
        self.value = Number::None;
        self.count = 0;
        self.sum = None;
        self.min = None;
        self.max = None;
        self.bucket_counts.clear();
        self.explicit_bounds.clear();
        self.scale = 0;
        self.zero_count = 0;
        self.zero_threshold = 0.0;
        self.positive_offset = 0;
        self.positive_bucket_counts.clear();
        self.negative_offset = 0;
        self.negative_bucket_counts.clear();
        self.quantiles.clear();
    }

    fn parse(&mut self, kind: Kind, buf: &'a [u8]) -> Result<()> {
        self.reset();
        let (mut start, mut time) = (0u64, 0u64);
        let mut r = Reader::new(buf);
        while let Some((f, v)) = r.next()? {
            // fields 2 and 3 are the times in every point type
            match f {
                2 => start = v.fixed64().within("start_time_unix_nano")?,
                3 => time = v.fixed64().within("time_unix_nano")?,
                _ => match kind {
                    Kind::Gauge | Kind::Sum => self.number_field(f, v)?,
                    Kind::Histogram => self.histogram_field(f, v)?,
                    Kind::ExponentialHistogram => self.exp_field(f, v)?,
                    Kind::Summary => self.summary_field(f, v)?,
                    Kind::None => {}
                },
            }
        }
        self.start = timestamp(start).within("start_time_unix_nano")?;
        self.time = timestamp(time).within("time_unix_nano")?;
        Ok(())
    }

    fn attribute(&mut self, v: Value<'a>) -> Result<()> {
        let i = self.attributes.len();
        push_attribute(&mut self.attributes, v, "attributes", i)
    }

    fn exemplar(&mut self, v: Value<'a>) -> Result<()> {
        let i = self.exemplars.len();
        let e = parse_exemplar(v.bytes().at("exemplars", i)?, &mut self.exemplar_attributes).at("exemplars", i)?;
        self.exemplars.push(e);
        Ok(())
    }

    fn number_field(&mut self, f: u32, v: Value<'a>) -> Result<()> {
        match f {
            4 => self.value = Number::Double(v.double().within("as_double")?),
            5 => self.exemplar(v)?,
            6 => self.value = Number::Int(v.fixed64().within("as_int")? as i64),
            7 => self.attribute(v)?,
            8 => self.flags = v.uint32().within("flags")?,
            _ => {}
        }
        Ok(())
    }

    fn histogram_field(&mut self, f: u32, v: Value<'a>) -> Result<()> {
        match f {
            4 => self.count = v.fixed64().within("count")?,
            5 => self.sum = Some(v.double().within("sum")?),
            6 => v.push_fixed64s(&mut self.bucket_counts).within("bucket_counts")?,
            7 => v.push_fixed64s(&mut self.explicit_bounds).within("explicit_bounds")?,
            8 => self.exemplar(v)?,
            9 => self.attribute(v)?,
            10 => self.flags = v.uint32().within("flags")?,
            11 => self.min = Some(v.double().within("min")?),
            12 => self.max = Some(v.double().within("max")?),
            _ => {}
        }
        Ok(())
    }

    fn exp_field(&mut self, f: u32, v: Value<'a>) -> Result<()> {
        match f {
            1 => self.attribute(v)?,
            4 => self.count = v.fixed64().within("count")?,
            5 => self.sum = Some(v.double().within("sum")?),
            6 => self.scale = v.sint32().within("scale")?,
            7 => self.zero_count = v.fixed64().within("zero_count")?,
            8 => {
                let b = v.bytes().within("positive")?;
                parse_buckets(b, &mut self.positive_offset, &mut self.positive_bucket_counts).within("positive")?
            }
            9 => {
                let b = v.bytes().within("negative")?;
                parse_buckets(b, &mut self.negative_offset, &mut self.negative_bucket_counts).within("negative")?
            }
            10 => self.flags = v.uint32().within("flags")?,
            11 => self.exemplar(v)?,
            12 => self.min = Some(v.double().within("min")?),
            13 => self.max = Some(v.double().within("max")?),
            14 => self.zero_threshold = v.double().within("zero_threshold")?,
            _ => {}
        }
        Ok(())
    }

    fn summary_field(&mut self, f: u32, v: Value<'a>) -> Result<()> {
        match f {
            4 => self.count = v.fixed64().within("count")?,
            5 => self.sum = Some(v.double().within("sum")?),
            6 => {
                let i = self.quantiles.len();
                let mut q = (0.0, 0.0);
                let mut r = Reader::new(v.bytes().at("quantile_values", i)?);
                while let Some((f, v)) = r.next().at("quantile_values", i)? {
                    match f {
                        1 => q.0 = v.double().within("quantile").at("quantile_values", i)?,
                        2 => q.1 = v.double().within("value").at("quantile_values", i)?,
                        _ => {}
                    }
                }
                self.quantiles.push(q);
            }
            7 => self.attribute(v)?,
            8 => self.flags = v.uint32().within("flags")?,
            _ => {}
        }
        Ok(())
    }
}

fn parse_buckets(buf: &[u8], offset: &mut i32, counts: &mut Vec<u64>) -> Result<()> {
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        match f {
            1 => *offset = v.sint32().within("offset")?,
            2 => v.push_varints(counts).within("bucket_counts")?,
            _ => {}
        }
    }
    Ok(())
}

fn parse_exemplar<'a>(buf: &'a [u8], pool: &mut Vec<KeyValue<'a>>) -> Result<Exemplar<'a>> {
    let first = pool.len();
    let mut e = Exemplar::default();
    let mut time = 0u64;
    let mut r = Reader::new(buf);
    while let Some((f, v)) = r.next()? {
        match f {
            2 => time = v.fixed64().within("time_unix_nano")?,
            3 => e.value = Number::Double(v.double().within("as_double")?),
            4 => e.span_id = v.bytes().within("span_id")?,
            5 => e.trace_id = v.bytes().within("trace_id")?,
            6 => e.value = Number::Int(v.fixed64().within("as_int")? as i64),
            7 => {
                let i = pool.len() - first;
                push_attribute(pool, v, "filtered_attributes", i)?;
            }
            _ => {}
        }
    }
    optional_trace_id(e.trace_id).within("trace_id")?;
    optional_span_id(e.span_id).within("span_id")?;
    e.time = timestamp(time).within("time_unix_nano")?;
    e.filtered_attributes = first..pool.len();
    Ok(e)
}

pub trait MetricSink<'a> {
    fn point(&mut self, res: &Resource<'a>, scope: &Scope<'a>, m: &Metric<'a>, p: &Point<'a>) -> Result<()>;
}

/// Walks an ExportMetricsServiceRequest (or MetricsData), handing the points
/// `admit` takes to `sink`.
pub fn walk<'a, S: MetricSink<'a>>(buf: &'a [u8], sink: &mut S, admit: &mut Admit) -> Result<()> {
    const NESTING: Nesting = Nesting { resources: "resource_metrics", scopes: "scope_metrics", items: "metrics" };
    let mut point = Point::default();
    walk_items(buf, &NESTING, |b, res, scope| walk_metric(b, res, scope, &mut point, sink, admit))
}

/// Why a parsed point does not become a row, if it does not: outside the time
/// window, or against a rule the OTLP metrics proto states for its type.
fn check_point(kind: Kind, p: &Point<'_>, admit: &Admit) -> Option<Reason> {
    if let Some(reason) = admit.check_time(p.time) {
        return Some(reason);
    }
    let total = |counts: &[u64]| counts.iter().map(|&c| u128::from(c)).sum::<u128>();
    match kind {
        Kind::Histogram => {
            // "The number of elements in bucket_counts array must be by one greater than the
            // number of elements in explicit_bounds array", or both are empty.
            let buckets = p.bucket_counts.len();
            if (buckets == 0 && !p.explicit_bounds.is_empty())
                || (buckets > 0 && buckets != p.explicit_bounds.len() + 1)
            {
                return Some(Reason::HistogramBucketsMismatch);
            }
            // "The sum of the bucket_counts must equal the value in the count field."
            if buckets > 0 && total(&p.bucket_counts) != u128::from(p.count) {
                return Some(Reason::HistogramCountMismatch);
            }
            // "The values in the explicit_bounds array must be strictly increasing" (NaN is not).
            let bounds = p.explicit_bounds.iter().map(|&b| f64::from_bits(b));
            let increasing = bounds.clone().zip(bounds.clone().skip(1)).all(|(a, b)| a < b);
            if !increasing || bounds.clone().any(f64::is_nan) {
                return Some(Reason::HistogramBoundsInvalid);
            }
        }
        Kind::ExponentialHistogram => {
            if !(-10..=20).contains(&p.scale) {
                return Some(Reason::ExpHistogramScaleOutOfRange);
            }
            // count = zero_count + the positive and negative bucket counts.
            let sum = u128::from(p.zero_count) + total(&p.positive_bucket_counts) + total(&p.negative_bucket_counts);
            if sum != u128::from(p.count) {
                return Some(Reason::ExpHistogramCountMismatch);
            }
        }
        Kind::Summary => {
            for &(q, v) in &p.quantiles {
                if !(0.0..=1.0).contains(&q) {
                    return Some(Reason::SummaryQuantileInvalid); // NaN is not in the range either
                }
                if v.is_nan() || v < 0.0 {
                    return Some(Reason::SummaryValueInvalid); // "Quantile values must NOT be negative" (or NaN)
                }
            }
        }
        Kind::Gauge | Kind::Sum | Kind::None => {}
    }
    None
}

fn walk_metric<'a, S: MetricSink<'a>>(
    buf: &'a [u8],
    res: &Resource<'a>,
    scope: &Scope<'a>,
    point: &mut Point<'a>,
    sink: &mut S,
    admit: &mut Admit,
) -> Result<()> {
    // Pass 1: scalars and which oneof member is set. Setting a different
    // member clears the earlier one, so only the last run of the final
    // member counts (occurrences in that run merge: their points concatenate).
    let mut m = Metric::default();
    let mut run_start = 0usize;
    let mut r = Reader::new(buf);
    let mut ordinal = 0usize;
    while let Some((f, v)) = r.next()? {
        match f {
            1 => m.name = v.string().within("name")?,
            2 => m.description = v.string().within("description")?,
            3 => m.unit = v.string().within("unit")?,
            _ => {
                if let Some(kind) = Kind::of_field(f) {
                    v.bytes().within(kind.field_name())?;
                    if kind != m.kind {
                        m.kind = kind;
                        run_start = ordinal;
                    }
                }
            }
        }
        ordinal += 1;
    }
    if m.kind == Kind::None {
        admit.reject(Reason::MetricWithoutData);
        return Ok(());
    }
    // The metric's own strings are repeated on each of its points' rows.
    let repeated = m.name.len() + m.description.len() + m.unit.len();
    let name = m.kind.field_name();
    // Pass 2: the data message's own scalars (temporality, monotonic).
    let mut data = Vec::new();
    let mut r = Reader::new(buf);
    let mut ordinal = 0usize;
    while let Some((f, v)) = r.next()? {
        if ordinal >= run_start && Kind::of_field(f) == Some(m.kind) {
            data.push(v.bytes()?);
        }
        ordinal += 1;
    }
    for b in &data {
        let mut r = Reader::new(b);
        while let Some((f, v)) = r.next().within(name)? {
            match (m.kind, f) {
                (Kind::Sum | Kind::Histogram | Kind::ExponentialHistogram, 2) => {
                    m.aggregation_temporality = v.int32().within("aggregation_temporality").within(name)?
                }
                (Kind::Sum, 3) => m.is_monotonic = v.boolean().within("is_monotonic").within(name)?,
                _ => {}
            }
        }
    }
    // Pass 3: the points.
    let mut i = 0;
    for b in &data {
        let mut r = Reader::new(b);
        while let Some((f, v)) = r.next().within(name)? {
            if f == 1 {
                let pb = v.bytes().at("data_points", i).within(name)?;
                point.parse(m.kind, pb).at("data_points", i).within(name)?;
                if let Some(reason) = check_point(m.kind, point, admit) {
                    admit.reject(reason);
                } else {
                    admit.charge(pb.len() + repeated, res, scope).at("data_points", i).within(name)?;
                    sink.point(res, scope, &m, point).at("data_points", i).within(name)?;
                }
                i += 1;
            }
        }
    }
    Ok(())
}

/// Counts points.
#[derive(Default)]
pub struct Counter(pub u64);

impl<'a> MetricSink<'a> for Counter {
    #[inline]
    fn point(&mut self, _: &Resource<'a>, _: &Scope<'a>, _: &Metric<'a>, _: &Point<'a>) -> Result<()> {
        self.0 += 1;
        Ok(())
    }
}

/// Columns every metrics table has.
struct PointCols {
    rows: usize,
    metric_name: StrCol,
    metric_description: StrCol,
    metric_unit: StrCol,
    attributes: AttrCol,
    start_time: Vec<i64>,
    time: Vec<i64>,
    flags: Vec<u32>,
    ex_offsets: Vec<i32>,
    ex_time: Vec<i64>,
    ex_value: Vec<Option<f64>>,
    ex_value_int: Vec<Option<i64>>,
    ex_trace_id: IdCol,
    ex_span_id: IdCol,
    ex_attributes: AttrCol,
    rs: ResourceScopeCols,
}

impl PointCols {
    fn new() -> Self {
        PointCols {
            rows: 0,
            metric_name: StrCol::new(),
            metric_description: StrCol::new(),
            metric_unit: StrCol::new(),
            attributes: AttrCol::new(),
            start_time: Vec::new(),
            time: Vec::new(),
            flags: Vec::new(),
            ex_offsets: offsets(),
            ex_time: Vec::new(),
            ex_value: Vec::new(),
            ex_value_int: Vec::new(),
            ex_trace_id: IdCol::new(),
            ex_span_id: IdCol::new(),
            ex_attributes: AttrCol::new(),
            rs: ResourceScopeCols::new(),
        }
    }

    fn push(&mut self, res: &Resource<'_>, scope: &Scope<'_>, m: &Metric<'_>, p: &Point<'_>) -> Result<()> {
        self.rows += 1;
        self.metric_name.push(m.name);
        self.metric_description.push(m.description);
        self.metric_unit.push(m.unit);
        self.attributes.push(&p.attributes)?;
        self.start_time.push(p.start);
        self.time.push(p.time);
        self.flags.push(p.flags);
        for e in &p.exemplars {
            self.ex_time.push(e.time);
            self.ex_value.push(e.value.as_f64());
            self.ex_value_int.push(e.value.as_i64());
            self.ex_trace_id.push(e.trace_id);
            self.ex_span_id.push(e.span_id);
            self.ex_attributes.push(&p.exemplar_attributes[e.filtered_attributes.clone()])?;
        }
        push_offset(&mut self.ex_offsets, self.ex_time.len())?;
        self.rs.push(res, scope)
    }

    /// The leading columns; `finish_tail` adds exemplars and resource/scope.
    fn finish_head(&mut self) -> Result<Vec<Column>> {
        use std::mem::take;
        Ok(vec![
            ("metric_name", take(&mut self.metric_name).finish()?, false),
            ("metric_description", take(&mut self.metric_description).finish()?, false),
            ("metric_unit", take(&mut self.metric_unit).finish()?, false),
            ("attributes", take(&mut self.attributes).finish()?, false),
            ("start_time", ts_array(take(&mut self.start_time)), false),
            ("time", ts_array(take(&mut self.time)), false),
            ("flags", u32_array(take(&mut self.flags)), false),
        ])
    }

    fn finish_tail(self, cols: &mut Vec<Column>) -> Result<()> {
        let exemplars = list_of_struct(
            self.ex_offsets,
            vec![
                ("time", ts_array(self.ex_time), false),
                ("value", f64_opt_array(self.ex_value), true),
                ("value_int", i64_opt_array(self.ex_value_int), true),
                ("trace_id", self.ex_trace_id.finish()?, true),
                ("span_id", self.ex_span_id.finish()?, true),
                ("filtered_attributes", self.ex_attributes.finish()?, false),
            ],
        )?;
        cols.push(("exemplars", exemplars, false));
        self.rs.finish(cols)
    }
}

struct Gauge {
    c: PointCols,
    value: Vec<Option<f64>>,
    value_int: Vec<Option<i64>>,
}

struct Sum {
    c: PointCols,
    value: Vec<Option<f64>>,
    value_int: Vec<Option<i64>>,
    is_monotonic: Vec<bool>,
    temporality: Vec<i32>,
}

struct Histogram {
    c: PointCols,
    count: Vec<u64>,
    sum: Vec<Option<f64>>,
    min: Vec<Option<f64>>,
    max: Vec<Option<f64>>,
    bucket_offsets: Vec<i32>,
    bucket_counts: Vec<u64>,
    bound_offsets: Vec<i32>,
    explicit_bounds: Vec<f64>,
    temporality: Vec<i32>,
}

struct ExpHistogram {
    c: PointCols,
    count: Vec<u64>,
    sum: Vec<Option<f64>>,
    min: Vec<Option<f64>>,
    max: Vec<Option<f64>>,
    scale: Vec<i32>,
    zero_count: Vec<u64>,
    zero_threshold: Vec<f64>,
    positive_offset: Vec<i32>,
    pos_offsets: Vec<i32>,
    positive_bucket_counts: Vec<u64>,
    negative_offset: Vec<i32>,
    neg_offsets: Vec<i32>,
    negative_bucket_counts: Vec<u64>,
    temporality: Vec<i32>,
}

struct Summary {
    c: PointCols,
    count: Vec<u64>,
    sum: Vec<f64>,
    q_offsets: Vec<i32>,
    quantile: Vec<f64>,
    quantile_value: Vec<f64>,
}

/// Builds the five metrics tables.
pub struct Tables {
    gauge: Gauge,
    sum: Sum,
    histogram: Histogram,
    exp: ExpHistogram,
    summary: Summary,
}

impl Default for Tables {
    fn default() -> Self {
        Tables {
            gauge: Gauge { c: PointCols::new(), value: vec![], value_int: vec![] },
            sum: Sum {
                c: PointCols::new(),
                value: vec![],
                value_int: vec![],
                is_monotonic: vec![],
                temporality: vec![],
            },
            histogram: Histogram {
                c: PointCols::new(),
                count: vec![],
                sum: vec![],
                min: vec![],
                max: vec![],
                bucket_offsets: offsets(),
                bucket_counts: vec![],
                bound_offsets: offsets(),
                explicit_bounds: vec![],
                temporality: vec![],
            },
            exp: ExpHistogram {
                c: PointCols::new(),
                count: vec![],
                sum: vec![],
                min: vec![],
                max: vec![],
                scale: vec![],
                zero_count: vec![],
                zero_threshold: vec![],
                positive_offset: vec![],
                pos_offsets: offsets(),
                positive_bucket_counts: vec![],
                negative_offset: vec![],
                neg_offsets: offsets(),
                negative_bucket_counts: vec![],
                temporality: vec![],
            },
            summary: Summary {
                c: PointCols::new(),
                count: vec![],
                sum: vec![],
                q_offsets: offsets(),
                quantile: vec![],
                quantile_value: vec![],
            },
        }
    }
}

impl<'a> MetricSink<'a> for Tables {
    fn point(&mut self, res: &Resource<'a>, scope: &Scope<'a>, m: &Metric<'a>, p: &Point<'a>) -> Result<()> {
        match m.kind {
            Kind::Gauge => {
                let t = &mut self.gauge;
                t.c.push(res, scope, m, p)?;
                t.value.push(p.value.as_f64());
                t.value_int.push(p.value.as_i64());
            }
            Kind::Sum => {
                let t = &mut self.sum;
                t.c.push(res, scope, m, p)?;
                t.value.push(p.value.as_f64());
                t.value_int.push(p.value.as_i64());
                t.is_monotonic.push(m.is_monotonic);
                t.temporality.push(m.aggregation_temporality);
            }
            Kind::Histogram => {
                let t = &mut self.histogram;
                t.c.push(res, scope, m, p)?;
                t.count.push(p.count);
                t.sum.push(p.sum);
                t.min.push(p.min);
                t.max.push(p.max);
                t.bucket_counts.extend_from_slice(&p.bucket_counts);
                push_offset(&mut t.bucket_offsets, t.bucket_counts.len())?;
                t.explicit_bounds.extend(p.explicit_bounds.iter().map(|&b| f64::from_bits(b)));
                push_offset(&mut t.bound_offsets, t.explicit_bounds.len())?;
                t.temporality.push(m.aggregation_temporality);
            }
            Kind::ExponentialHistogram => {
                let t = &mut self.exp;
                t.c.push(res, scope, m, p)?;
                t.count.push(p.count);
                t.sum.push(p.sum);
                t.min.push(p.min);
                t.max.push(p.max);
                t.scale.push(p.scale);
                t.zero_count.push(p.zero_count);
                t.zero_threshold.push(p.zero_threshold);
                t.positive_offset.push(p.positive_offset);
                t.positive_bucket_counts.extend_from_slice(&p.positive_bucket_counts);
                push_offset(&mut t.pos_offsets, t.positive_bucket_counts.len())?;
                t.negative_offset.push(p.negative_offset);
                t.negative_bucket_counts.extend_from_slice(&p.negative_bucket_counts);
                push_offset(&mut t.neg_offsets, t.negative_bucket_counts.len())?;
                t.temporality.push(m.aggregation_temporality);
            }
            Kind::Summary => {
                let t = &mut self.summary;
                t.c.push(res, scope, m, p)?;
                t.count.push(p.count);
                t.sum.push(p.sum.unwrap_or(0.0));
                for &(q, v) in &p.quantiles {
                    t.quantile.push(q);
                    t.quantile_value.push(v);
                }
                push_offset(&mut t.q_offsets, t.quantile.len())?;
            }
            Kind::None => return Err(DecodeError::new("internal error: point of a metric without data")),
        }
        Ok(())
    }
}

impl Tables {
    pub fn rows(&self) -> u64 {
        (self.gauge.c.rows + self.sum.c.rows + self.histogram.c.rows + self.exp.c.rows + self.summary.c.rows) as u64
    }

    pub fn finish(self) -> Result<Vec<(&'static str, arrow_array::RecordBatch)>> {
        let mut out = Vec::with_capacity(5);

        let Gauge { mut c, value, value_int } = self.gauge;
        let mut cols = c.finish_head()?;
        cols.push(("value", f64_opt_array(value), true));
        cols.push(("value_int", i64_opt_array(value_int), true));
        c.finish_tail(&mut cols)?;
        out.push((TABLES[0], batch(cols)?));

        let Sum { mut c, value, value_int, is_monotonic, temporality } = self.sum;
        let mut cols = c.finish_head()?;
        cols.push(("value", f64_opt_array(value), true));
        cols.push(("value_int", i64_opt_array(value_int), true));
        cols.push(("is_monotonic", bool_array(is_monotonic), false));
        cols.push(("aggregation_temporality", i32_array(temporality), false));
        c.finish_tail(&mut cols)?;
        out.push((TABLES[1], batch(cols)?));

        let h = self.histogram;
        let mut c = h.c;
        let mut cols = c.finish_head()?;
        cols.push(("count", u64_array(h.count), false));
        cols.push(("sum", f64_opt_array(h.sum), true));
        cols.push(("bucket_counts", list_array(h.bucket_offsets, u64_array(h.bucket_counts), false)?, false));
        cols.push(("explicit_bounds", list_array(h.bound_offsets, f64_array(h.explicit_bounds), false)?, false));
        cols.push(("min", f64_opt_array(h.min), true));
        cols.push(("max", f64_opt_array(h.max), true));
        cols.push(("aggregation_temporality", i32_array(h.temporality), false));
        c.finish_tail(&mut cols)?;
        out.push((TABLES[2], batch(cols)?));

        let e = self.exp;
        let mut c = e.c;
        let mut cols = c.finish_head()?;
        cols.push(("count", u64_array(e.count), false));
        cols.push(("sum", f64_opt_array(e.sum), true));
        cols.push(("scale", i32_array(e.scale), false));
        cols.push(("zero_count", u64_array(e.zero_count), false));
        cols.push(("zero_threshold", f64_array(e.zero_threshold), false));
        cols.push(("positive_offset", i32_array(e.positive_offset), false));
        cols.push((
            "positive_bucket_counts",
            list_array(e.pos_offsets, u64_array(e.positive_bucket_counts), false)?,
            false,
        ));
        cols.push(("negative_offset", i32_array(e.negative_offset), false));
        cols.push((
            "negative_bucket_counts",
            list_array(e.neg_offsets, u64_array(e.negative_bucket_counts), false)?,
            false,
        ));
        cols.push(("min", f64_opt_array(e.min), true));
        cols.push(("max", f64_opt_array(e.max), true));
        cols.push(("aggregation_temporality", i32_array(e.temporality), false));
        c.finish_tail(&mut cols)?;
        out.push((TABLES[3], batch(cols)?));

        let s = self.summary;
        let mut c = s.c;
        let mut cols = c.finish_head()?;
        cols.push(("count", u64_array(s.count), false));
        cols.push(("sum", f64_array(s.sum), false));
        let q = list_of_struct(
            s.q_offsets,
            vec![("quantile", f64_array(s.quantile), false), ("value", f64_array(s.quantile_value), false)],
        )?;
        cols.push(("quantile_values", q, false));
        c.finish_tail(&mut cols)?;
        out.push((TABLES[4], batch(cols)?));

        Ok(out)
    }
}
