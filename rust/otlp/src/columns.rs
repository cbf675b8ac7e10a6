//! Arrow column builders shared by the tables: timestamps, hex ids,
//! attribute maps, lists of structs, and the resource/scope columns every
//! table repeats on each row.

use std::ops::Range;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampNanosecondType;
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, ListArray, MapArray, PrimitiveArray,
    RecordBatch, StringArray, StructArray, UInt32Array, UInt64Array,
};
use arrow_buffer::{Buffer, NullBuffer, NullBufferBuilder, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Fields, Schema};

use crate::common::{AnyValue, KeyValue, Resource, Scope};
use crate::error::{DecodeError, Result};
use crate::render::{format_i64, render, write_json, HEX_PAIRS};

/// A finished column: name, array, nullable.
pub type Column = (&'static str, ArrayRef, bool);

/// Builds a record batch from finished columns (the schema follows the arrays).
pub fn batch(columns: Vec<Column>) -> Result<RecordBatch> {
    let fields: Vec<Field> =
        columns.iter().map(|(n, a, nullable)| Field::new(*n, a.data_type().clone(), *nullable)).collect();
    let arrays = columns.into_iter().map(|(_, a, _)| a).collect();
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

pub fn ts_array(v: Vec<i64>) -> ArrayRef {
    Arc::new(PrimitiveArray::<TimestampNanosecondType>::new(ScalarBuffer::from(v), None).with_timezone("UTC"))
}

pub fn ts_opt_array(v: Vec<i64>, valid: Vec<bool>) -> ArrayRef {
    Arc::new(PrimitiveArray::<TimestampNanosecondType>::new(ScalarBuffer::from(v), nulls(valid)).with_timezone("UTC"))
}

fn nulls(valid: Vec<bool>) -> Option<NullBuffer> {
    if valid.iter().all(|&v| v) {
        None
    } else {
        Some(NullBuffer::from(valid))
    }
}

pub fn i32_array(v: Vec<i32>) -> ArrayRef {
    Arc::new(Int32Array::new(ScalarBuffer::from(v), None))
}
pub fn i64_array(v: Vec<i64>) -> ArrayRef {
    Arc::new(Int64Array::new(ScalarBuffer::from(v), None))
}
pub fn u32_array(v: Vec<u32>) -> ArrayRef {
    Arc::new(UInt32Array::new(ScalarBuffer::from(v), None))
}
pub fn u64_array(v: Vec<u64>) -> ArrayRef {
    Arc::new(UInt64Array::new(ScalarBuffer::from(v), None))
}
pub fn f64_array(v: Vec<f64>) -> ArrayRef {
    Arc::new(Float64Array::new(ScalarBuffer::from(v), None))
}
pub fn bool_array(v: Vec<bool>) -> ArrayRef {
    Arc::new(BooleanArray::from(v))
}
pub fn f64_opt_array(v: Vec<Option<f64>>) -> ArrayRef {
    Arc::new(Float64Array::from(v))
}
pub fn i64_opt_array(v: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(Int64Array::from(v))
}

/// `list<T>` from per-row offsets (starting at 0) and the flat child array.
pub fn list_array(offsets: Vec<i32>, child: ArrayRef, nullable_items: bool) -> Result<ArrayRef> {
    let field = Arc::new(Field::new("item", child.data_type().clone(), nullable_items));
    Ok(Arc::new(ListArray::try_new(field, OffsetBuffer::new(ScalarBuffer::from(offsets)), child, None)?))
}

/// `list<struct<...>>` from per-row offsets and the struct's columns.
pub fn list_of_struct(offsets: Vec<i32>, columns: Vec<Column>) -> Result<ArrayRef> {
    let fields: Fields =
        columns.iter().map(|(n, a, nullable)| Field::new(*n, a.data_type().clone(), *nullable)).collect();
    let arrays: Vec<ArrayRef> = columns.into_iter().map(|(_, a, _)| a).collect();
    let child: ArrayRef = Arc::new(StructArray::try_new(fields, arrays, None)?);
    list_array(offsets, child, false)
}

/// Appends the end offset of the current row.
#[inline]
pub fn push_offset(offsets: &mut Vec<i32>, len: usize) -> Result<()> {
    let end = i32::try_from(len).map_err(|_| DecodeError::new("too many nested items for one batch"))?;
    offsets.push(end);
    Ok(())
}

/// A new offsets vector: `[0]`.
pub fn offsets() -> Vec<i32> {
    vec![0]
}

/// A `utf8` column being built: one values buffer, the offsets, validity.
///
/// Arrow's `StringBuilder` does the same, but its appends are not inlined and
/// check the offset for overflow each time; here the appends inline, ids and
/// numbers are written straight into the values buffer, and the overflow check
/// is made once, in `finish`.
pub struct StrCol {
    values: Vec<u8>,
    /// Starts with 0; one more entry per row. Wraps past `i32::MAX` bytes,
    /// which `finish` then refuses.
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
}

impl Default for StrCol {
    fn default() -> Self {
        Self::new()
    }
}

impl StrCol {
    pub fn new() -> Self {
        StrCol { values: Vec::new(), offsets: vec![0], nulls: NullBufferBuilder::new(0) }
    }

    /// Room for `rows` more values of `bytes` bytes in all.
    pub fn reserve(&mut self, rows: usize, bytes: usize) {
        self.offsets.reserve(rows);
        self.values.reserve(bytes);
    }

    /// Room for `times` times as many values and bytes as there are so far.
    pub fn reserve_like(&mut self, times: usize) {
        self.reserve(self.len().saturating_mul(times), self.bytes().saturating_mul(times));
    }

    /// Values so far.
    #[inline]
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of values so far.
    #[inline]
    pub fn bytes(&self) -> usize {
        self.values.len()
    }

    #[inline(always)]
    fn end_value(&mut self) {
        self.offsets.push(self.values.len() as i32);
        self.nulls.append_non_null();
    }

    #[inline(always)]
    pub fn push(&mut self, s: &str) {
        self.values.extend_from_slice(s.as_bytes());
        self.end_value();
    }

    #[inline]
    pub fn push_null(&mut self) {
        self.offsets.push(self.values.len() as i32);
        self.nulls.append_null();
    }

    #[inline]
    pub fn push_opt(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.push(s),
            None => self.push_null(),
        }
    }

    /// Lowercase hex of `bytes` as one value.
    #[inline]
    pub fn push_hex(&mut self, bytes: &[u8]) {
        // 16 bytes (a trace id) at a time through a stack buffer: one copy into values
        for chunk in bytes.chunks(16) {
            let mut buf = [0u8; 32];
            for (pair, &b) in buf.chunks_exact_mut(2).zip(chunk) {
                pair.copy_from_slice(&HEX_PAIRS[b as usize]);
            }
            self.values.extend_from_slice(&buf[..2 * chunk.len()]);
        }
        self.end_value();
    }

    /// `v` in decimal as one value (as `{v}` formats it).
    #[inline]
    pub fn push_i64(&mut self, v: i64) {
        let mut buf = [0u8; 20];
        self.values.extend_from_slice(format_i64(v, &mut buf));
        self.end_value();
    }

    /// Appends values `range` of `src` (an array this module built), the
    /// whole run `times` over: the run's bytes are copied once and then
    /// doubled in place, so repeating costs a few large copies.
    ///
    /// Fails, rather than aborting on a failed allocation, when the result
    /// could not be one batch's column (`admit` keeps admitted requests far
    /// below that; this is the last line of defence).
    fn push_repeated(&mut self, src: &StringArray, range: Range<usize>, times: usize) -> Result<()> {
        if times == 0 || range.is_empty() {
            return Ok(());
        }
        let offs = src.value_offsets();
        let (first, end) = (offs[range.start] as usize, offs[range.end] as usize);
        let run = &src.value_data()[first..end];
        let base = self.values.len();
        let more = run.len().checked_mul(times).filter(|&n| base + n <= i32::MAX as usize);
        let more = more.ok_or_else(|| DecodeError::too_large("too many string bytes for one batch"))?;
        self.values.try_reserve_exact(more).map_err(|_| DecodeError::too_large("out of memory repeating a column"))?;
        self.offsets
            .try_reserve_exact(range.len().saturating_mul(times))
            .map_err(|_| DecodeError::too_large("out of memory repeating a column"))?;
        self.values.extend_from_slice(run);
        let mut have = 1;
        while have < times {
            let more = have.min(times - have);
            self.values.extend_from_within(base..base + more * run.len());
            have += more;
        }
        for rep in 0..times {
            let rep_base = base + rep * run.len() - first;
            self.offsets.extend(range.clone().map(|i| (rep_base + offs[i + 1] as usize) as i32));
        }
        match src.nulls() {
            None => self.nulls.append_n_non_nulls(range.len() * times),
            Some(n) => {
                for _ in 0..times {
                    for i in range.clone() {
                        self.nulls.append(n.is_valid(i));
                    }
                }
            }
        }
        Ok(())
    }

    /// The column with value `g` repeated `counts[g]` times, for every `g`.
    pub fn spread(self, counts: &[usize]) -> Result<ArrayRef> {
        let src = self.finish()?;
        let src = src.as_string::<i32>();
        let mut out = StrCol::new();
        for (g, &times) in counts.iter().enumerate() {
            out.push_repeated(src, g..g + 1, times)?;
        }
        out.finish()
    }

    pub fn finish(mut self) -> Result<ArrayRef> {
        if i32::try_from(self.values.len()).is_err() {
            return Err(DecodeError::too_large("too many string bytes for one batch"));
        }
        let offsets = ScalarBuffer::from(self.offsets);
        let values = Buffer::from_vec(self.values);
        let nulls = self.nulls.finish();
        debug_assert!(StringArray::try_new(OffsetBuffer::new(offsets.clone()), values.clone(), nulls.clone()).is_ok());
        // SAFETY: the offsets start at 0 and never decrease (each is the
        // values length after an append), and the last is the values length,
        // which fits in i32 (checked above) so none has wrapped. Every append
        // adds a whole `&str`, ASCII we format (hex digits, decimal digits) or
        // whole values of a valid StringArray (`push_repeated`), so each value
        // is valid UTF-8. (`StringArray::try_new` would re-validate all of
        // that, UTF-8 included.)
        let array = unsafe { StringArray::new_unchecked(OffsetBuffer::new_unchecked(offsets), values, nulls) };
        Ok(Arc::new(array))
    }
}

/// Lowercase-hex ids; an empty id is null.
#[derive(Default)]
pub struct IdCol(StrCol);

impl IdCol {
    pub fn new() -> Self {
        IdCol(StrCol::new())
    }

    /// Room for `rows` more ids of `id_len` bytes.
    pub fn reserve(&mut self, rows: usize, id_len: usize) {
        self.0.reserve(rows, rows.saturating_mul(2 * id_len));
    }

    /// Room for `times` times as many ids as there are so far.
    pub fn reserve_like(&mut self, times: usize) {
        self.0.reserve_like(times);
    }

    #[inline]
    pub fn push(&mut self, id: &[u8]) {
        if id.is_empty() {
            self.0.push_null();
        } else {
            self.0.push_hex(id);
        }
    }

    pub fn finish(self) -> Result<ArrayRef> {
        self.0.finish()
    }
}

/// `map<string, string>` attributes: entries `key` (non-null) and `value`
/// (null only for an empty AnyValue).
pub struct AttrCol {
    keys: StrCol,
    values: StrCol,
    offsets: Vec<i32>,
    scratch: String,
}

impl Default for AttrCol {
    fn default() -> Self {
        Self::new()
    }
}

impl AttrCol {
    pub fn new() -> Self {
        AttrCol { keys: StrCol::new(), values: StrCol::new(), offsets: offsets(), scratch: String::new() }
    }

    /// Room for `rows` more maps.
    pub fn reserve(&mut self, rows: usize) {
        self.offsets.reserve(rows);
    }

    /// Room for `times` times as many maps, entries and bytes as there are so far.
    pub fn reserve_like(&mut self, times: usize) {
        self.offsets.reserve((self.offsets.len() - 1).saturating_mul(times));
        self.keys.reserve_like(times);
        self.values.reserve_like(times);
    }

    /// Key and value bytes so far.
    pub fn bytes(&self) -> usize {
        self.keys.bytes() + self.values.bytes()
    }

    #[inline]
    pub fn push(&mut self, kvs: &[KeyValue<'_>]) -> Result<()> {
        for kv in kvs {
            self.keys.push(kv.key);
            match kv.value {
                AnyValue::Str(s) => self.values.push(s),
                AnyValue::Empty => self.values.push_null(),
                AnyValue::Int(i) => self.values.push_i64(i),
                AnyValue::Bool(b) => self.values.push(if b { "true" } else { "false" }),
                other => {
                    self.scratch.clear();
                    write_json(other, &mut self.scratch, 0)?;
                    self.values.push(&self.scratch);
                }
            }
        }
        push_offset(&mut self.offsets, self.keys.len())
    }

    /// The column with map `g` repeated `counts[g]` times, for every `g`.
    pub fn spread(self, counts: &[usize]) -> Result<ArrayRef> {
        let (keys, values) = (self.keys.finish()?, self.values.finish()?);
        let (keys, values) = (keys.as_string::<i32>(), values.as_string::<i32>());
        let mut out = AttrCol::new();
        for (g, &times) in counts.iter().enumerate() {
            let entries = self.offsets[g] as usize..self.offsets[g + 1] as usize;
            let (start, n) = (out.keys.len(), entries.len());
            out.keys.push_repeated(keys, entries.clone(), times)?;
            out.values.push_repeated(values, entries, times)?;
            out.offsets.reserve(times);
            for rep in 1..=times {
                push_offset(&mut out.offsets, start + rep * n)?;
            }
        }
        out.finish()
    }

    pub fn finish(self) -> Result<ArrayRef> {
        let fields =
            Fields::from(vec![Field::new("key", DataType::Utf8, false), Field::new("value", DataType::Utf8, true)]);
        let entries = StructArray::try_new(fields.clone(), vec![self.keys.finish()?, self.values.finish()?], None)?;
        let field = Arc::new(Field::new("entries", DataType::Struct(fields), false));
        let offsets = OffsetBuffer::new(ScalarBuffer::from(self.offsets));
        Ok(Arc::new(MapArray::try_new(field, offsets, entries, None, false)?))
    }
}

/// The resource and scope columns repeated on every row of every table.
///
/// Built once per resource/scope group, then spread over the group's rows at
/// the end, by doubling copies of each group's bytes (instead of re-appending
/// the same attributes on every row).
pub struct ResourceScopeCols {
    service_name: StrCol,
    resource_attributes: AttrCol,
    resource_dropped: Vec<u32>,
    resource_schema_url: StrCol,
    scope_name: StrCol,
    scope_version: StrCol,
    scope_attributes: AttrCol,
    scope_dropped: Vec<u32>,
    scope_schema_url: StrCol,
    scratch: String,
    last_group: Option<u64>,
    /// Rows of each group (a group's rows are consecutive: the walk finishes
    /// one ScopeX before starting the next).
    counts: Vec<usize>,
}

impl Default for ResourceScopeCols {
    fn default() -> Self {
        Self::new()
    }
}

impl ResourceScopeCols {
    pub fn new() -> Self {
        ResourceScopeCols {
            service_name: StrCol::new(),
            resource_attributes: AttrCol::new(),
            resource_dropped: Vec::new(),
            resource_schema_url: StrCol::new(),
            scope_name: StrCol::new(),
            scope_version: StrCol::new(),
            scope_attributes: AttrCol::new(),
            scope_dropped: Vec::new(),
            scope_schema_url: StrCol::new(),
            scratch: String::new(),
            last_group: None,
            counts: Vec::new(),
        }
    }

    #[inline]
    pub fn push(&mut self, res: &Resource<'_>, scope: &Scope<'_>) -> Result<()> {
        if self.last_group != Some(scope.group) {
            self.add_group(res, scope)?;
        }
        if let Some(rows) = self.counts.last_mut() {
            *rows += 1;
        }
        Ok(())
    }

    fn add_group(&mut self, res: &Resource<'_>, scope: &Scope<'_>) -> Result<()> {
        self.last_group = Some(scope.group);
        self.counts.push(0);
        let svc = match res.service_name() {
            Some(kv) => render(kv.value, &mut self.scratch)?,
            None => None,
        };
        self.service_name.push_opt(svc);
        self.resource_attributes.push(&res.attributes)?;
        self.resource_dropped.push(res.dropped_attributes_count);
        self.resource_schema_url.push(res.schema_url);
        self.scope_name.push(scope.name);
        self.scope_version.push(scope.version);
        self.scope_attributes.push(&scope.attributes)?;
        self.scope_dropped.push(scope.dropped_attributes_count);
        self.scope_schema_url.push(scope.schema_url);
        Ok(())
    }

    pub fn finish(self, cols: &mut Vec<Column>) -> Result<()> {
        let c = &self.counts;
        let spread_u32 = |v: Vec<u32>| {
            u32_array(v.into_iter().zip(c).flat_map(|(x, &times)| std::iter::repeat_n(x, times)).collect())
        };
        cols.push(("service_name", self.service_name.spread(c)?, true));
        cols.push(("resource_attributes", self.resource_attributes.spread(c)?, false));
        cols.push(("resource_dropped_attributes_count", spread_u32(self.resource_dropped), false));
        cols.push(("resource_schema_url", self.resource_schema_url.spread(c)?, false));
        cols.push(("scope_name", self.scope_name.spread(c)?, false));
        cols.push(("scope_version", self.scope_version.spread(c)?, false));
        cols.push(("scope_attributes", self.scope_attributes.spread(c)?, false));
        cols.push(("scope_dropped_attributes_count", spread_u32(self.scope_dropped), false));
        cols.push(("scope_schema_url", self.scope_schema_url.spread(c)?, false));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_ids_and_nulls() {
        let mut c = StrCol::new();
        c.push("a");
        c.push_null();
        c.push_hex(&(0..16).map(|i| i * 17).collect::<Vec<u8>>());
        c.push_hex(&[0xab, 0x01, 0xff]);
        c.push_i64(-42);
        c.push_opt(Some("é"));
        c.push_hex(&[]);
        let a = c.finish().unwrap();
        let a = a.as_string::<i32>();
        let got: Vec<Option<&str>> = a.iter().collect();
        assert_eq!(
            got,
            [
                Some("a"),
                None,
                Some("00112233445566778899aabbccddeeff"),
                Some("ab01ff"),
                Some("-42"),
                Some("é"),
                Some("")
            ]
        );
        assert!(StrCol::new().finish().unwrap().is_empty());
    }

    #[test]
    fn spread_repeats_each_group() {
        let counts = [3, 1, 0, 2];
        let mut c = StrCol::new();
        for v in [Some("ab"), None, Some("x"), Some("")] {
            c.push_opt(v);
        }
        let a = c.spread(&counts).unwrap();
        let got: Vec<Option<&str>> = a.as_string::<i32>().iter().collect();
        assert_eq!(got, [Some("ab"), Some("ab"), Some("ab"), None, Some(""), Some("")]);

        let kv = |key, value| KeyValue { key, value };
        let mut m = AttrCol::new();
        m.push(&[kv("a", AnyValue::Str("1")), kv("b", AnyValue::Empty)]).unwrap();
        m.push(&[]).unwrap();
        m.push(&[kv("c", AnyValue::Int(-7))]).unwrap();
        m.push(&[kv("d", AnyValue::Bool(true)), kv("e", AnyValue::Str("é"))]).unwrap();
        let a = m.spread(&counts).unwrap();
        let map = a.as_map();
        let rows: Vec<Vec<(String, Option<String>)>> = (0..map.len())
            .map(|i| {
                let e = map.value(i);
                let (k, v) = (e.column(0).as_string::<i32>(), e.column(1).as_string::<i32>());
                k.iter().zip(v.iter()).map(|(k, v)| (k.unwrap().to_owned(), v.map(str::to_owned))).collect()
            })
            .collect();
        let g0 = vec![("a".to_owned(), Some("1".to_owned())), ("b".to_owned(), None)];
        let g3 = vec![("d".to_owned(), Some("true".to_owned())), ("e".to_owned(), Some("é".to_owned()))];
        assert_eq!(rows, [g0.clone(), g0.clone(), g0, vec![], g3.clone(), g3]);
        assert_eq!(a.data_type(), AttrCol::new().finish().unwrap().data_type());
    }
}
