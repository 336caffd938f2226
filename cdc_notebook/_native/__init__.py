"""The compiled decoders (C, Arrow C data interface) and the glue that feeds them the spec.

``TablePlan`` says how one table's change batches are built: the batch schema (the table's
columns mapped by :mod:`cdc_notebook.decode.typespec`, then the ``_cdc_*`` columns) and, per column, the
decoder kind of the spec entry that applies (a ``typreceive`` name, ``numeric_text``, ``other``,
or ``("array", element kind)``). Decoders hand out each batch as an ``arrow_array`` capsule
(a struct array); :func:`import_batch` turns it into a ``pyarrow.RecordBatch`` without copying,
through the Arrow PyCapsule protocol (:class:`NativeBatch` has ``__arrow_c_array__``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._native import (
    CopyDecoder,
    NativeDecodeError,
    PgoutputDecoder,
    TablePlan,
    libpq_bind,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from cdc_notebook.decode.typespec import TypeMapping

__all__ = ["CopyDecoder", "NativeDecodeError", "PgoutputDecoder", "TablePlan", "decoder_kind",
           "make_plan", "import_batch", "libpq_bind", "NativeBatch"]


def decoder_kind(mapping: TypeMapping) -> Any:
    """The native decoder kind of a spec mapping."""
    if mapping.kind == "array":
        if mapping.element is None:
            from cdc_notebook.errors import TypeMappingError

            raise TypeMappingError(f"the array mapping {mapping} names no element type",
                                   hint="an array entry of the type-mapping spec needs its "
                                   "element's mapping")
        return ("array", decoder_kind(mapping.element))
    return mapping.kind


def make_plan(columns: list[tuple[str, TypeMapping]]) -> TablePlan:
    """A TablePlan for a table whose columns are ``(name, mapping)`` in order."""
    from cdc_notebook.decode.typespec import change_batch_schema

    schema = change_batch_schema([m.field(name) for name, m in columns])
    return TablePlan(schema, [decoder_kind(m) for _, m in columns])


class NativeBatch:
    """A batch built by the native decoders, importable through the Arrow PyCapsule protocol."""

    __slots__ = ("_schema", "_capsule")

    def __init__(self, schema: pa.Schema, capsule: Any):
        self._schema = schema
        self._capsule = capsule

    def __arrow_c_array__(self, requested_schema: Any = None) -> tuple[Any, Any]:
        capsule, self._capsule = self._capsule, None
        if capsule is None:
            raise ValueError("this native batch was already imported")
        return self._schema.__arrow_c_schema__(), capsule


def import_batch(schema: pa.Schema, capsule: Any) -> pa.RecordBatch:
    """The RecordBatch of a decoder's ``arrow_array`` capsule (zero copy), through pyarrow's
    public PyCapsule-protocol import (``pa.record_batch`` of an ``__arrow_c_array__`` object,
    pyarrow >= 14)."""
    import pyarrow as pa

    return pa.record_batch(NativeBatch(schema, capsule))
