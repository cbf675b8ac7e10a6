"""What the writer checks in every Flight batch before it stores any of it.

Arrow IPC from a peer is untrusted: whatever reaches the Flight port ends up in
the writer WAL and then in Parquet that every reader must be able to open. A
batch is stored only when

- its schema is exactly the table's reference schema (``tables.reference_schema``,
  the Rust converter's): the same names, types and nullability at every level,
  nested children included (``pa.Schema.equals`` ignores the names of list and
  map children, so they are compared here too);
- no non-nullable column, and no non-nullable child of a valid nested value,
  holds a null (Arrow does not enforce nullability; Parquet writers and readers
  do, and a null in ``trace_id`` made the Parquet build fail for ever);
- the IPC buffers are consistent and every string is valid UTF-8
  (``RecordBatch.validate(full=True)``: Arrow's SIMD UTF-8 check, offsets and
  lengths; a string that is not UTF-8 was stored as Parquet that neither pyarrow
  nor DuckDB could read);
- it is at most ``writer.max_batch_bytes`` (Arrow buffer bytes).

Each failure raises ``BatchRefused`` with a ``reason`` (the label of
``signaldb_writer_refused_batches_total``) and a message naming the column.
"""

from __future__ import annotations

import pyarrow as pa


class BatchRefused(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def field_difference(got: pa.Field, want: pa.Field, path: str) -> str | None:
    """The first difference between two fields (names, types, nullability, recursively), or None."""
    if got.name != want.name:
        return f"{path}: field named {got.name!r}, want {want.name!r}"
    if got.nullable != want.nullable:
        return f"{path}: nullable={got.nullable}, want nullable={want.nullable}"
    gt, wt = got.type, want.type
    if gt.num_fields != wt.num_fields or (wt.num_fields == 0 and not gt.equals(wt)):
        return f"{path}: type {gt}, want {wt}"
    if type(gt) is not type(wt):
        return f"{path}: type {gt}, want {wt}"
    if isinstance(wt, pa.MapType) and gt.keys_sorted != wt.keys_sorted:
        return f"{path}: keys_sorted={gt.keys_sorted}, want {wt.keys_sorted}"
    for i in range(wt.num_fields):
        child_want = wt.field(i)
        diff = field_difference(gt.field(i), child_want, f"{path}.{child_want.name}")
        if diff:
            return diff
    return None


def schema_difference(got: pa.Schema, want: pa.Schema) -> str | None:
    """None when ``got`` is exactly ``want`` (metadata aside); else the first difference."""
    if got.names != want.names:
        missing = [n for n in want.names if n not in got.names]
        if missing:
            return f"missing column {missing[0]!r}"
        extra = [n for n in got.names if n not in want.names]
        if extra:
            return f"unexpected columns {extra}"
        return "columns are in a different order"
    for g, w in zip(got, want, strict=True):
        diff = field_difference(g, w, w.name)
        if diff:
            return diff
    return None


def _has_child_nulls(array: pa.Array) -> bool:
    """Any null anywhere below ``array`` in its raw child buffers: a cheap over-approximation
    (a null under a null parent, or outside a slice, counts too), exact checks follow."""
    t = array.type
    if isinstance(t, pa.StructType):
        return any(array.field(i).null_count or _has_child_nulls(array.field(i)) for i in range(t.num_fields))
    if isinstance(t, pa.MapType | pa.ListType | pa.LargeListType):
        return bool(array.values.null_count) or _has_child_nulls(array.values)
    return False


def _children(array: pa.Array) -> list[tuple[pa.Field, pa.Array]]:
    """(field, the child's values under *valid* parent slots of this slice) for a nested array."""
    t = array.type
    if isinstance(t, pa.StructType):
        valid = array.is_valid() if array.null_count else None
        out = []
        for i in range(t.num_fields):
            child = array.field(i)  # sliced to the parent; the parent's nulls not merged in
            out.append((t.field(i), child if valid is None else child.filter(valid)))
        return out
    if isinstance(t, pa.MapType):
        entries = pa.ListArray.from_arrays(
            array.offsets, array.values, mask=array.is_null() if array.null_count else None
        )
        return [(pa.field("entries", array.values.type, nullable=False), entries.flatten())]
    if isinstance(t, pa.ListType | pa.LargeListType):
        return [(t.value_field, array.flatten())]  # only valid lists, only this slice
    return []


def _check_nulls(field: pa.Field, array: pa.Array, path: str) -> None:
    if not field.nullable and array.null_count:
        raise BatchRefused("null", f"non-nullable {path} holds {array.null_count} null(s)")
    if not _has_child_nulls(array):  # the usual case: nothing below can be null
        return
    for child_field, child in _children(array):
        _check_nulls(child_field, child, f"{path}.{child_field.name}")


def check_batch(batch: pa.RecordBatch, want: pa.Schema, max_bytes: int) -> pa.RecordBatch:
    """Raises ``BatchRefused`` unless ``batch`` may be stored; returns it under the reference schema."""
    size = batch.get_total_buffer_size()
    if size > max_bytes:
        raise BatchRefused("too_large", f"batch of {size} bytes over writer.max_batch_bytes ({max_bytes})")
    diff = schema_difference(batch.schema, want)
    if diff:
        raise BatchRefused("schema", f"schema does not match the table: {diff}")
    try:
        batch.validate(full=True)  # offsets, lengths, UTF-8 of every string (nested too)
    except pa.ArrowInvalid as err:
        reason = "utf8" if "utf8" in str(err).lower() or "utf-8" in str(err).lower() else "malformed"
        raise BatchRefused(reason, f"batch is not valid Arrow: {err}") from None
    for field, column in zip(want, batch.columns, strict=True):
        _check_nulls(field, column, field.name)
    # The peer's schema metadata (and child names, equal by now) never reach the WAL or Parquet.
    return pa.RecordBatch.from_arrays(batch.columns, schema=want)


__all__ = ["BatchRefused", "check_batch", "schema_difference"]
