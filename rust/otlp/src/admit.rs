//! Which items of a request become rows, and what the rows will cost.
//!
//! Every walk (`traces::walk`, `logs::walk`, `metrics::walk`) asks an `Admit`
//! about each parsed item before handing it to its sink, so validation
//! (`count_items`, at the acceptor, before the ack) and conversion (`convert`,
//! in the forwarder, maybe days later) make the same decisions from the same
//! `Policy`:
//!
//! - **OTLP validity.** An item that breaks a rule of the OTLP protos (a span
//!   ending before it starts, histogram buckets that do not match their
//!   bounds or count, a summary quantile outside [0, 1], an exponential
//!   histogram scale outside [-10, 20], ...) is rejected: counted by reason,
//!   never a row. The other items of the request are kept (OTLP partial
//!   success). A malformed request (bad wire format, bad ids) is still an
//!   error for the whole request.
//! - **The time window.** With a `TimeWindow`, an item whose time (span start,
//!   log time or else observed time, point time) is before `min_ns` or after
//!   `max_ns` is rejected (`time_too_old`, `time_in_future`), so one request
//!   touches at most the window's hours, not millions of hour partitions. A
//!   log record with neither time gets the window's `now_ns` as its observed
//!   time (the acceptor observed it then). The window is fixed when the
//!   acceptor takes the request and stored with it, so a later conversion
//!   rejects exactly what the client was told was rejected.
//! - **Cost.** Resource and scope fields (and a metric's name, description and
//!   unit) are repeated on every row they cover: a small request can name
//!   gigabytes of rows. `Admit` adds up, as items are admitted, each row's
//!   bytes: the item's wire bytes, a fixed per-row overhead, and the rendered
//!   bytes of everything repeated onto it. Once the sum passes
//!   `max_converted_bytes` the walk stops with a `TooLarge` error, before any
//!   large allocation: conversion stays within memory the operator chose,
//!   and an acknowledged request never fails for size later.

use crate::common::{AnyValue, KeyValue, Resource, Scope};
use crate::error::{DecodeError, Result};
use crate::render::render;

/// The most `max_converted_bytes` may be: every string column of one batch
/// then stays far below Arrow's 2 GiB (i32 offsets) limit.
pub const CONVERT_CEILING: u64 = 1 << 30;

/// Fixed bytes a row costs beyond its wire bytes (fixed-width columns,
/// offsets and validity of its string, list and map columns).
const ROW_BYTES: u64 = 160;

/// Offsets a map entry (key and value) adds to its row.
const ENTRY_BYTES: u64 = 8;

/// Items with times outside `[min_ns, max_ns]` are rejected; `now_ns` is when
/// the acceptor took the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    pub min_ns: i64,
    pub max_ns: i64,
    pub now_ns: i64,
}

/// What a conversion admits: the same for `count_items` and `convert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub window: Option<TimeWindow>,
    /// Rows bytes (see the module docs) above which the request is refused.
    pub max_converted_bytes: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { window: None, max_converted_bytes: CONVERT_CEILING }
    }
}

/// Why an item did not become a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    MetricWithoutData,
    TimeMissing,
    TimeTooOld,
    TimeInFuture,
    SpanEndBeforeStart,
    HistogramBucketsMismatch,
    HistogramCountMismatch,
    HistogramBoundsInvalid,
    ExpHistogramScaleOutOfRange,
    ExpHistogramCountMismatch,
    SummaryQuantileInvalid,
    SummaryValueInvalid,
}

const REASONS: usize = 12;

impl Reason {
    const ALL: [Reason; REASONS] = [
        Reason::MetricWithoutData,
        Reason::TimeMissing,
        Reason::TimeTooOld,
        Reason::TimeInFuture,
        Reason::SpanEndBeforeStart,
        Reason::HistogramBucketsMismatch,
        Reason::HistogramCountMismatch,
        Reason::HistogramBoundsInvalid,
        Reason::ExpHistogramScaleOutOfRange,
        Reason::ExpHistogramCountMismatch,
        Reason::SummaryQuantileInvalid,
        Reason::SummaryValueInvalid,
    ];

    /// The label the acceptor reports (partial-success message, metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MetricWithoutData => "metric_without_data",
            Reason::TimeMissing => "time_missing",
            Reason::TimeTooOld => "time_too_old",
            Reason::TimeInFuture => "time_in_future",
            Reason::SpanEndBeforeStart => "span_end_before_start",
            Reason::HistogramBucketsMismatch => "histogram_bucket_counts_not_bounds_plus_one",
            Reason::HistogramCountMismatch => "histogram_count_not_sum_of_buckets",
            Reason::HistogramBoundsInvalid => "histogram_bounds_not_increasing",
            Reason::ExpHistogramScaleOutOfRange => "exponential_histogram_scale_out_of_range",
            Reason::ExpHistogramCountMismatch => "exponential_histogram_count_not_sum_of_buckets",
            Reason::SummaryQuantileInvalid => "summary_quantile_out_of_range",
            Reason::SummaryValueInvalid => "summary_value_invalid",
        }
    }
}

/// One request's admission decisions and running cost. Built by `convert`
/// and `count_items`, consulted by the walks.
pub struct Admit {
    policy: Policy,
    rejected: [u64; REASONS],
    cost: u64,
    /// The scope group whose repeated bytes `group_bytes` holds.
    group: Option<u64>,
    group_bytes: u64,
    scratch: String,
}

impl Admit {
    pub fn new(policy: Policy) -> Self {
        Admit { policy, rejected: [0; REASONS], cost: 0, group: None, group_bytes: 0, scratch: String::new() }
    }

    pub fn window(&self) -> Option<TimeWindow> {
        self.policy.window
    }

    #[cold]
    pub fn reject(&mut self, reason: Reason) {
        self.rejected[reason as usize] += 1;
    }

    /// Rejections by reason, in a fixed order, only the reasons that occurred.
    pub fn rejected(&self) -> Vec<(&'static str, u64)> {
        Reason::ALL
            .iter()
            .filter(|r| self.rejected[**r as usize] > 0)
            .map(|r| (r.as_str(), self.rejected[*r as usize]))
            .collect()
    }

    /// Bytes of rows admitted so far (see the module docs).
    pub fn converted_bytes(&self) -> u64 {
        self.cost
    }

    /// Whether an item's time is inside the window (always, without one). An
    /// unset time (0) is `time_missing`.
    #[inline]
    pub fn check_time(&self, time_ns: i64) -> Option<Reason> {
        let w = self.policy.window?;
        if time_ns == 0 {
            Some(Reason::TimeMissing)
        } else if time_ns < w.min_ns {
            Some(Reason::TimeTooOld)
        } else if time_ns > w.max_ns {
            Some(Reason::TimeInFuture)
        } else {
            None
        }
    }

    /// Charges one admitted row: `own_bytes` (the item's wire bytes plus any
    /// per-item field repeated onto it) and its resource/scope bytes. Errors
    /// once the request's rows pass `max_converted_bytes`.
    #[inline]
    pub fn charge(&mut self, own_bytes: usize, res: &Resource<'_>, scope: &Scope<'_>) -> Result<()> {
        if self.group != Some(scope.group) {
            self.group = Some(scope.group);
            self.group_bytes = self.repeated_bytes(res, scope)?;
        }
        self.cost = self.cost.saturating_add(ROW_BYTES + own_bytes as u64 + self.group_bytes);
        if self.cost > self.policy.max_converted_bytes {
            return Err(DecodeError::too_large(format!(
                "the request converts to more than {} bytes of rows (resource, scope and metric fields are \
                 repeated on every row they cover); the limit is {}",
                self.policy.max_converted_bytes, self.policy.max_converted_bytes
            )));
        }
        Ok(())
    }

    /// The bytes the resource and scope columns take on each row of a group.
    #[cold]
    fn repeated_bytes(&mut self, res: &Resource<'_>, scope: &Scope<'_>) -> Result<u64> {
        let mut n = self.attributes_bytes(&res.attributes)? + self.attributes_bytes(&scope.attributes)?;
        if let Some(kv) = res.service_name() {
            n += rendered_len(kv.value, &mut self.scratch)?;
        }
        n += (res.schema_url.len() + scope.name.len() + scope.version.len() + scope.schema_url.len()) as u64;
        Ok(n)
    }

    fn attributes_bytes(&mut self, kvs: &[KeyValue<'_>]) -> Result<u64> {
        let mut n = 0;
        for kv in kvs {
            n += ENTRY_BYTES + kv.key.len() as u64 + rendered_len(kv.value, &mut self.scratch)?;
        }
        Ok(n)
    }
}

/// The bytes an attribute value takes as a map value (`render::render`).
fn rendered_len(v: AnyValue<'_>, scratch: &mut String) -> Result<u64> {
    Ok(render(v, scratch)?.map_or(0, |s| s.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_decisions() {
        let mut a =
            Admit::new(Policy { window: Some(TimeWindow { min_ns: 10, max_ns: 20, now_ns: 15 }), ..Policy::default() });
        assert_eq!(a.check_time(0), Some(Reason::TimeMissing));
        assert_eq!(a.check_time(9), Some(Reason::TimeTooOld));
        assert_eq!(a.check_time(10), None);
        assert_eq!(a.check_time(20), None);
        assert_eq!(a.check_time(21), Some(Reason::TimeInFuture));
        a.reject(Reason::TimeTooOld);
        a.reject(Reason::TimeTooOld);
        a.reject(Reason::MetricWithoutData);
        assert_eq!(a.rejected(), vec![("metric_without_data", 1), ("time_too_old", 2)]);
        let open = Admit::new(Policy::default());
        assert_eq!(open.check_time(0), None);
    }

    #[test]
    fn cost_repeats_group_bytes_and_stops_at_the_limit() {
        let mut res = Resource::default();
        res.attributes.push(KeyValue { key: "k", value: AnyValue::Str("0123456789") });
        let scope = Scope::default();
        let per_row = ROW_BYTES + 5 + ENTRY_BYTES + 1 + 10;
        let mut a = Admit::new(Policy { window: None, max_converted_bytes: per_row * 3 });
        for _ in 0..3 {
            a.charge(5, &res, &scope).unwrap();
        }
        assert_eq!(a.converted_bytes(), per_row * 3);
        let err = a.charge(5, &res, &scope).unwrap_err();
        assert!(err.is_too_large(), "{err}");
    }
}
