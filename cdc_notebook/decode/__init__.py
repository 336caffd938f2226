"""What the server sends, decoded: wal2arrow frames and pgoutput messages become the same
events (``events``) and the same Arrow batches, built by the one type-mapping spec
(``typespec``, ``typemap.json``). The stream reads through the :class:`Decoder` protocol of
``decoder``; nothing here does I/O."""
