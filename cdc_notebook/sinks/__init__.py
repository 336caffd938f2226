"""Sinks that persist a stream and acknowledge only what they committed (docs/delivery.md).

* :mod:`cdc_notebook.sinks.delta`: :class:`DeltaSink`, each captured table as a Delta Lake
  mirror (and changelog), exactly once (the ``delta`` extra: ``pip install
  'cdc-notebook[delta]'``);
* :mod:`cdc_notebook.sinks.ray`: its key-hash partitions written by Ray actors (the ``ray``
  extra);
* :mod:`cdc_notebook.sinks.changes`: the pure change logic (net effect, partitions, types);
* :mod:`cdc_notebook.sinks.writer`: the Delta I/O and the exactly-once markers;
* :mod:`cdc_notebook.sinks.cli`: ``python -m cdc_notebook sink``.

``docs/scale.md`` describes the design and the model past one slot.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DeltaSink"]


def __getattr__(name: str) -> Any:
    if name == "DeltaSink":
        from cdc_notebook.sinks.delta import DeltaSink

        return DeltaSink
    raise AttributeError(name)
