"""The Arrow → Polars mapping used by the live frames, and its way back.

``pl.from_arrow`` is zero-copy for most types, but three things in the change batches do not
survive it as they are:

* **field metadata is dropped**: Polars dtypes carry no key/value metadata, so the live frames
  keep the batch's ``pa.Schema`` beside the ``pl.DataFrame`` (``LiveTable.arrow_schema``) and
  :func:`to_arrow` restores it;
* **a UUID becomes ``Binary``** (``fixed_size_binary(16)`` in the type-mapping spec, or the
  ``arrow.uuid`` extension: 16 raw bytes, unreadable in a table view, and not
  comparable with a UUID literal): the frames hold the canonical text form
  ``xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`` (lowercase) as ``pl.String``;
* **``month_day_nano_interval`` is refused** unless an unstable environment switch is set: the
  frames hold ``pl.Struct({"months": Int32, "days": Int32, "nanoseconds": Int64})``, which is
  exact (a PostgreSQL interval's months and days are not a fixed duration, so ``pl.Duration``
  would be wrong for ``'1 month'``).

Two more, found by trying every type: ``decimal256`` makes Polars panic, so a decimal of
precision ≤ 38 is narrowed to ``decimal128`` (exact) and a wider one becomes its exact decimal
text (``pl.String``); other extension types (``arrow.json``, ``arrow.opaque``) are given to
Polars as their storage type, the extension's name staying in the schema beside the frame.
Everything else is left to ``pl.from_arrow`` as it is (zero-copy).

The conversions are vectorized (NumPy over the Arrow buffers) and applied at every nesting level
(a UUID inside ``_cdc_before``'s struct, a list of intervals). See ``docs/notebook.md``.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

INTERVAL_STRUCT = pa.struct([("months", pa.int32()), ("days", pa.int32()),
                             ("nanoseconds", pa.int64())])
MAX_POLARS_DECIMAL_PRECISION = 38
# A month_day_nano_interval value's 16 bytes, part by part (INTERVAL_STRUCT's fields).
_INTERVAL_PARTS = ("months", "days", "nanoseconds")
_INTERVAL_DTYPE = np.dtype([("months", "<i4"), ("days", "<i4"), ("nanoseconds", "<i8")])

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
# Positions of the 32 hex digits inside the 36-character canonical text.
_UUID_DIGIT_POS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])
# Each byte's two lowercase hex digits as one little-endian uint16 (first digit first), and
# where the 8-4-4-4-12 groups of the 32 digits go in the text.
_HEX_PAIRS = np.array([_HEX[b >> 4] | (np.uint16(_HEX[b & 0x0F]) << 8) for b in range(256)],
                      dtype="<u2")
_UUID_GROUPS = ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32))
_UUID_GROUP_AT = (0, 9, 14, 19, 24)
_UUID_DASHES = np.array([8, 13, 18, 23])
_HEX_VALUE = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_VALUE[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX_VALUE[_c] = 10 + _i


UUID_STORAGE = pa.binary(16)


def _is_uuid(t: pa.DataType) -> bool:
    """A UUID column: ``fixed_size_binary(16)`` is what the type-mapping spec gives ``uuid``
    (and only ``uuid``: typemap.json's ``uuid_recv``, domains and arrays of it included);
    Arrow's canonical ``arrow.uuid`` extension is accepted too."""
    if isinstance(t, pa.BaseExtensionType):
        return bool(t.extension_name == "arrow.uuid")
    return bool(t == UUID_STORAGE)


def needs_conversion(t: pa.DataType) -> bool:
    """Whether a column of this Arrow type is rewritten before it reaches Polars."""
    if isinstance(t, pa.BaseExtensionType) or _is_uuid(t):
        return True
    if t == pa.month_day_nano_interval() or pa.types.is_decimal256(t):
        return True
    if pa.types.is_struct(t):
        return any(needs_conversion(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return needs_conversion(t.value_type)
    if pa.types.is_map(t):
        return needs_conversion(t.key_type) or needs_conversion(t.item_type)
    if pa.types.is_dictionary(t):
        return needs_conversion(t.value_type)
    return False


def frame_type(t: pa.DataType) -> pa.DataType:
    """The Arrow type a column has once converted (what Polars then imports)."""
    if _is_uuid(t):
        return pa.string()
    if isinstance(t, pa.BaseExtensionType):
        return frame_type(t.storage_type)
    if t == pa.month_day_nano_interval():
        return INTERVAL_STRUCT
    if pa.types.is_decimal256(t):
        if t.precision <= MAX_POLARS_DECIMAL_PRECISION:
            return pa.decimal128(t.precision, t.scale)
        return pa.string()
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(frame_type(t.field(i).type))
                          for i in range(t.num_fields)])
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(frame_type(t.value_type)))
    if pa.types.is_large_list(t):
        return pa.large_list(t.value_field.with_type(frame_type(t.value_type)))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_field.with_type(frame_type(t.value_type)), t.list_size)
    if pa.types.is_map(t):
        return pa.map_(frame_type(t.key_type), frame_type(t.item_type))
    if pa.types.is_dictionary(t):
        return pa.dictionary(t.index_type, frame_type(t.value_type))
    return t


def polars_dtype(t: pa.DataType) -> pl.DataType:
    """The Polars dtype a column of Arrow type ``t`` has in a live frame."""
    converted = frame_type(t)
    # (no pa.array([]): pyarrow's array() imports pandas the first time, a second or so)
    empty = pa.Table.from_batches([], schema=pa.schema([pa.field("x", converted)]))
    return pl.from_arrow(empty).schema["x"]  # type: ignore[union-attr]


# --------------------------------------------------------------------------- Arrow → frame


def _validity(arr: pa.Array) -> pa.Array | None:
    return arr.is_null() if arr.null_count else None


def _validity_buffer(arr: pa.Array) -> pa.Buffer | None:
    """A fresh validity bitmap starting at bit 0 (the array may be a slice)."""
    if not arr.null_count:
        return None
    return pc.is_valid(arr).buffers()[1]


def _uuid_to_text(arr: pa.Array) -> pa.Array:
    storage = arr.storage if isinstance(arr, pa.ExtensionArray) else arr
    n = len(storage)
    raw = np.frombuffer(storage.buffers()[1], dtype=np.uint8,
                        count=(storage.offset + n) * 16)[storage.offset * 16:].reshape(n, 16)
    digits = _HEX_PAIRS[raw].view(np.uint8)  # (n, 32): two hex digits per byte
    text = np.empty((n, 36), dtype=np.uint8)
    for (start, stop), at in zip(_UUID_GROUPS, _UUID_GROUP_AT, strict=True):
        text[:, at:at + stop - start] = digits[:, start:stop]
    text[:, _UUID_DASHES] = ord("-")
    offsets = np.arange(0, 36 * (n + 1), 36, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n,
                                 [_validity_buffer(storage), pa.py_buffer(offsets),
                                  pa.py_buffer(text)],
                                 null_count=storage.null_count)


def _interval_to_struct(arr: pa.Array) -> pa.Array:
    n = len(arr)
    values = np.frombuffer(arr.buffers()[1], dtype=_INTERVAL_DTYPE,
                           count=arr.offset + n)[arr.offset:]
    children = [pa.array(np.ascontiguousarray(values[name])) for name in _INTERVAL_PARTS]
    return pa.StructArray.from_arrays(children, fields=list(INTERVAL_STRUCT),
                                      mask=_validity(arr))


def convert_array(arr: pa.Array) -> pa.Array:
    """Rewrite one Arrow array into the types the live frames hold (see the module doc)."""
    t = arr.type
    if not needs_conversion(t):
        return arr
    if _is_uuid(t):
        return _uuid_to_text(arr)
    if isinstance(t, pa.BaseExtensionType):
        return convert_array(arr.storage)
    if t == pa.month_day_nano_interval():
        return _interval_to_struct(arr)
    if pa.types.is_decimal256(t):
        return arr.cast(frame_type(t))
    if pa.types.is_struct(t):
        children = [convert_array(child) for child in arr.flatten()]
        fields = [t.field(i).with_type(c.type) for i, c in enumerate(children)]
        return pa.StructArray.from_arrays(children, fields=fields, mask=_validity(arr))
    if pa.types.is_fixed_size_list(t):
        return convert_array(arr.cast(pa.list_(t.value_field)))
    if pa.types.is_map(t):
        keys = convert_array(arr.keys)
        items = convert_array(arr.items)
        return pa.MapArray.from_arrays(arr.offsets, keys, items, mask=_validity(arr))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        cls = pa.ListArray if pa.types.is_list(t) else pa.LargeListArray
        values = convert_array(arr.values)
        field = t.value_field.with_type(values.type)
        return cls.from_arrays(arr.offsets, values, type=pa.list_(field)
                               if cls is pa.ListArray else pa.large_list(field),
                               mask=_validity(arr))
    if pa.types.is_dictionary(t):
        return pa.DictionaryArray.from_arrays(arr.indices, convert_array(arr.dictionary))
    raise TypeError(f"no frame conversion for Arrow type {t}")  # unreachable: needs_conversion


def arrow_to_polars(data: pa.RecordBatch | pa.Table) -> pl.DataFrame:
    """A record batch or table as a Polars frame, with the conversions of this module."""
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    if any(needs_conversion(f.type) for f in data.schema):
        columns = []
        for col in data.columns:
            chunks = [convert_array(chunk) for chunk in col.chunks]
            columns.append(pa.chunked_array(chunks, type=frame_type(col.type)))
        data = pa.Table.from_arrays(columns, names=data.column_names)
    else:
        data = data.replace_schema_metadata(None)
    return pl.from_arrow(data)  # type: ignore[return-value]


# --------------------------------------------------------------------------- frame → Arrow


def _text_to_uuid(arr: pa.Array, uuid_type: pa.DataType) -> pa.Array:
    n = len(arr)
    filled = pc.fill_null(arr, "00000000-0000-0000-0000-000000000000")
    try:
        fixed = pc.cast(pc.cast(filled, pa.binary()), pa.binary(36))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError("not a canonical UUID text (36 characters, 8-4-4-4-12 hex digits)") \
            from exc
    text = np.frombuffer(fixed.buffers()[1], dtype=np.uint8,
                         count=(fixed.offset + n) * 36)[fixed.offset * 36:].reshape(n, 36)
    digits = _HEX_VALUE[text[:, _UUID_DIGIT_POS]]
    if (digits == 255).any():
        raise ValueError("not a canonical UUID text (hex digits expected)")
    raw = (digits[:, 0::2] << 4) | digits[:, 1::2]
    storage = pa.Array.from_buffers(UUID_STORAGE, n,
                                    [_validity_buffer(arr), pa.py_buffer(raw.tobytes())],
                                    null_count=arr.null_count)
    if isinstance(uuid_type, pa.BaseExtensionType):
        return pa.ExtensionArray.from_storage(uuid_type, storage)
    return storage


def restore_array(arr: pa.Array, target: pa.DataType) -> pa.Array:
    """The inverse of :func:`convert_array`: a frame column back to its batch type."""
    if not needs_conversion(target):
        return arr if arr.type == target else arr.cast(target)
    if _is_uuid(target):
        return _text_to_uuid(arr, target)
    if isinstance(target, pa.BaseExtensionType):
        return pa.ExtensionArray.from_storage(target, restore_array(arr, target.storage_type))
    if target == pa.month_day_nano_interval():
        n = len(arr)
        values = np.zeros(n, dtype=_INTERVAL_DTYPE)
        for name, part in zip(_INTERVAL_PARTS, arr.flatten(), strict=True):
            values[name] = pc.fill_null(part, 0).to_numpy(zero_copy_only=False)
        return pa.Array.from_buffers(target, n, [_validity_buffer(arr),
                                                 pa.py_buffer(values.tobytes())],
                                     null_count=arr.null_count)
    if pa.types.is_decimal256(target):
        return arr.cast(target)
    if pa.types.is_struct(target):
        children = [restore_array(child, target.field(i).type)
                    for i, child in enumerate(arr.flatten())]
        return pa.StructArray.from_arrays(children, fields=list(target), mask=_validity(arr))
    if pa.types.is_list(target) or pa.types.is_large_list(target) \
            or pa.types.is_fixed_size_list(target):
        values = restore_array(arr.values, target.value_type)
        as_list = pa.ListArray.from_arrays(arr.offsets, values,
                                           type=pa.list_(target.value_field),
                                           mask=_validity(arr))
        return as_list.cast(target)
    if pa.types.is_map(target):
        return pa.MapArray.from_arrays(arr.offsets, restore_array(arr.keys, target.key_type),
                                       restore_array(arr.items, target.item_type),
                                       mask=_validity(arr))
    if pa.types.is_dictionary(target):
        return pa.DictionaryArray.from_arrays(arr.indices,
                                              restore_array(arr.dictionary, target.value_type))
    raise TypeError(f"no restore for Arrow type {target}")


def to_arrow(frame: pl.DataFrame, schema: pa.Schema) -> pa.Table:
    """A live frame back to Arrow with the batch schema (types and field metadata) restored.

    Columns of ``frame`` missing from ``schema`` are kept as Polars exports them.
    """
    table = frame.to_arrow()
    columns, fields = [], []
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if name in schema.names:
            field = schema.field(name)
            col = restore_array(col, field.type)
        else:
            field = pa.field(name, col.type)
        columns.append(col)
        fields.append(field)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=schema.metadata))
