//! Arrow column builders shared by the tables: timestamps, hex ids,
//! attribute maps, lists of structs, and the resource/scope columns every
//! table repeats on each row.

use std::sync::Arc;

use arrow_array::types::TimestampNanosecondType;
use arrow_array::cast::AsArray;
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, ListArray, MapArray,
    PrimitiveArray, RecordBatch, StringArray, StructArray, UInt32Array, UInt64Array,
};
use arrow_buffer::{Buffer, NullBuffer, NullBufferBuilder, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Fields, Schema};

use crate::common::{render, write_json, AnyValue, KeyValue, Resource, Scope, HEX_PAIRS};
use crate::error::{DecodeError, Result};

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
    Arc::new(
        PrimitiveArray::<TimestampNanosecondType>::new(ScalarBuffer::from(v), nulls(valid))
            .with_timezone("UTC"),
    )
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

    pub fn finish(mut self) -> Result<ArrayRef> {
        if i32::try_from(self.values.len()).is_err() {
            return Err(DecodeError::new("too many string bytes for one batch"));
        }
        let offsets = ScalarBuffer::from(self.offsets);
        let values = Buffer::from_vec(self.values);
        let nulls = self.nulls.finish();
        debug_assert!(StringArray::try_new(OffsetBuffer::new(offsets.clone()), values.clone(), nulls.clone()).is_ok());
        // SAFETY: the offsets start at 0 and never decrease (each is the
        // values length after an append), and the last is the values length,
        // which fits in i32 (checked above) so none has wrapped. Every append
        // adds a whole `&str` or ASCII we format (hex digits, decimal digits),
        // so each value is valid UTF-8. (`StringArray::try_new` would
        // re-validate all of that, UTF-8 included.)
        let array = unsafe { StringArray::new_unchecked(OffsetBuffer::new_unchecked(offsets), values, nulls) };
        Ok(Arc::new(array))
    }
}

/// `v` in decimal into the end of `buf`, as `format!("{v}")` writes it.
#[inline]
pub fn format_i64(v: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut n = v.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
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

    pub fn finish(self) -> Result<ArrayRef> {
        let fields = Fields::from(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("value", DataType::Utf8, true),
        ]);
        let entries = StructArray::try_new(fields.clone(), vec![self.keys.finish()?, self.values.finish()?], None)?;
        let field = Arc::new(Field::new("entries", DataType::Struct(fields), false));
        let offsets = OffsetBuffer::new(ScalarBuffer::from(self.offsets));
        Ok(Arc::new(MapArray::try_new(field, offsets, entries, None, false)?))
    }
}

/// The resource and scope columns repeated on every row of every table.
///
/// Built once per resource/scope group, then spread over the group's rows
/// with one `take` per column at the end (instead of re-appending the same
/// attributes on every row).
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
    groups: u32,
    last_group: Option<u64>,
    rows: Vec<u32>,
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
            groups: 0,
            last_group: None,
            rows: Vec::new(),
        }
    }

    /// Room for `rows` more rows.
    pub fn reserve(&mut self, rows: usize) {
        self.rows.reserve(rows);
    }

    #[inline]
    pub fn push(&mut self, res: &Resource<'_>, scope: &Scope<'_>) -> Result<()> {
        if self.last_group != Some(scope.group) {
            self.add_group(res, scope)?;
        }
        self.rows.push(self.groups - 1);
        Ok(())
    }

    fn add_group(&mut self, res: &Resource<'_>, scope: &Scope<'_>) -> Result<()> {
        self.last_group = Some(scope.group);
        self.groups += 1;
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
        let idx = UInt32Array::new(ScalarBuffer::from(self.rows), None);
        let spread = |a: Result<ArrayRef>| -> Result<ArrayRef> {
            Ok(arrow_select::take::take(a?.as_ref(), &idx, None)?)
        };
        let spread_map = |a: Result<ArrayRef>| spread_map(&a?, &idx);
        cols.push(("service_name", spread(self.service_name.finish())?, true));
        cols.push(("resource_attributes", spread_map(self.resource_attributes.finish())?, false));
        cols.push(("resource_dropped_attributes_count", spread(Ok(u32_array(self.resource_dropped)))?, false));
        cols.push(("resource_schema_url", spread(self.resource_schema_url.finish())?, false));
        cols.push(("scope_name", spread(self.scope_name.finish())?, false));
        cols.push(("scope_version", spread(self.scope_version.finish())?, false));
        cols.push(("scope_attributes", spread_map(self.scope_attributes.finish())?, false));
        cols.push(("scope_dropped_attributes_count", spread(Ok(u32_array(self.scope_dropped)))?, false));
        cols.push(("scope_schema_url", spread(self.scope_schema_url.finish())?, false));
        Ok(())
    }
}

/// `take` for a map column: arrow's `take` copies list/map entries row by row
/// through `MutableArrayData`; taking the entries' key and value columns with
/// one index of entries is several times faster.
fn spread_map(a: &ArrayRef, rows: &UInt32Array) -> Result<ArrayRef> {
    let map = a.as_map();
    let DataType::Map(field, ordered) = map.data_type() else {
        return Err(DecodeError::new("internal error: attribute column is not a map"));
    };
    let src = map.value_offsets();
    let mut entries = Vec::new();
    let mut offsets = Vec::with_capacity(rows.len() + 1);
    offsets.push(0i32);
    for &g in rows.values() {
        let g = g as usize;
        entries.extend(src[g] as u32..src[g + 1] as u32);
        push_offset(&mut offsets, entries.len())?;
    }
    let entries = arrow_select::take::take(map.entries(), &UInt32Array::from(entries), None)?;
    let nulls = map.nulls().and_then(|n| {
        let valid: Vec<bool> = rows.values().iter().map(|&g| n.is_valid(g as usize)).collect();
        NullBuffer::from(valid).into()
    });
    Ok(Arc::new(MapArray::try_new(
        field.clone(),
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        entries.as_struct().clone(),
        nulls,
        *ordered,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal() {
        let mut buf = [0u8; 20];
        for v in [0, 1, -1, 9, 10, -10, 123456789, i64::MAX, i64::MIN, i64::MIN + 1] {
            assert_eq!(format_i64(v, &mut buf), v.to_string().as_bytes());
        }
    }

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
            [Some("a"), None, Some("00112233445566778899aabbccddeeff"), Some("ab01ff"), Some("-42"), Some("é"), Some("")]
        );
        assert!(StrCol::new().finish().unwrap().is_empty());
    }
}
