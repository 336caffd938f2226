"""The initial snapshot: a table read at the slot's exported snapshot in chunked binary COPY,
decoded into the same change batches as the stream (``op = 'r'``)."""
