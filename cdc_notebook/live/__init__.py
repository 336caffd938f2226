"""Live Polars frames: each table's changelog and materialized mirror, folded from the stream
(``tables``: ``LiveTable``, ``LiveFrames``, ``LiveReader``), with the Arrow → Polars type
conversions (``polars_types``)."""
