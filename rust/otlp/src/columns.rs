//! Arrow column builders shared by the tables: timestamps, hex ids,
//! attribute maps, lists of structs, and the resource/scope columns every
//! table repeats on each row.

use std::sync::Arc;

use arrow_array::builder::{MapBuilder, MapFieldNames, StringBuilder};
use arrow_array::types::TimestampNanosecondType;
use arrow_array::cast::AsArray;
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, ListArray, MapArray,
    PrimitiveArray, RecordBatch, StructArray, UInt32Array, UInt64Array,
};
use arrow_buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Fields, Schema};

use crate::common::{hex, render, KeyValue, Resource, Scope};
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

/// Lowercase-hex ids; an empty id is null.
pub struct IdCol(StringBuilder);

impl Default for IdCol {
    fn default() -> Self {
        Self::new()
    }
}

impl IdCol {
    pub fn new() -> Self {
        IdCol(StringBuilder::new())
    }
    #[inline]
    pub fn push(&mut self, id: &[u8]) {
        if id.is_empty() {
            self.0.append_null();
        } else {
            let mut buf = [0u8; 32];
            self.0.append_value(hex(id, &mut buf));
        }
    }
    pub fn finish(mut self) -> ArrayRef {
        Arc::new(self.0.finish())
    }
}

pub struct StrCol(pub StringBuilder);

impl Default for StrCol {
    fn default() -> Self {
        Self::new()
    }
}

impl StrCol {
    pub fn new() -> Self {
        StrCol(StringBuilder::new())
    }
    #[inline]
    pub fn push(&mut self, s: &str) {
        self.0.append_value(s);
    }
    #[inline]
    pub fn push_opt(&mut self, s: Option<&str>) {
        self.0.append_option(s);
    }
    pub fn finish(mut self) -> ArrayRef {
        Arc::new(self.0.finish())
    }
}

/// `map<string, string>` attributes: entries `key` (non-null) and `value`
/// (null only for an empty AnyValue).
pub struct AttrCol {
    b: MapBuilder<StringBuilder, StringBuilder>,
    scratch: String,
}

impl Default for AttrCol {
    fn default() -> Self {
        Self::new()
    }
}

impl AttrCol {
    pub fn new() -> Self {
        let names = MapFieldNames { entry: "entries".into(), key: "key".into(), value: "value".into() };
        AttrCol { b: MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new()), scratch: String::new() }
    }

    #[inline]
    pub fn push(&mut self, kvs: &[KeyValue<'_>]) -> Result<()> {
        for kv in kvs {
            self.b.keys().append_value(kv.key);
            let v = render(kv.value, &mut self.scratch)?;
            self.b.values().append_option(v);
        }
        self.b.append(true)?;
        Ok(())
    }

    pub fn finish(mut self) -> ArrayRef {
        Arc::new(self.b.finish())
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
        let spread = |a: ArrayRef| -> Result<ArrayRef> {
            Ok(arrow_select::take::take(a.as_ref(), &idx, None)?)
        };
        let spread_map = |a: ArrayRef| spread_map(&a, &idx);
        cols.push(("service_name", spread(self.service_name.finish())?, true));
        cols.push(("resource_attributes", spread_map(self.resource_attributes.finish())?, false));
        cols.push(("resource_dropped_attributes_count", spread(u32_array(self.resource_dropped))?, false));
        cols.push(("resource_schema_url", spread(self.resource_schema_url.finish())?, false));
        cols.push(("scope_name", spread(self.scope_name.finish())?, false));
        cols.push(("scope_version", spread(self.scope_version.finish())?, false));
        cols.push(("scope_attributes", spread_map(self.scope_attributes.finish())?, false));
        cols.push(("scope_dropped_attributes_count", spread(u32_array(self.scope_dropped))?, false));
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
