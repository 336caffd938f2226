"""One replication stream per slot: the replication connection (``replication``), the decoder
chosen for the slot's plugin, the router that fans batches out to per-table readers
(``router``, ``reader``), acknowledgement of what was consumed (``acks``), joins of tables that
start matching while streaming (``joins``), key-hash partitions (``partition``), and
``CDCStream``, which sets it all up (``cdc_stream``)."""
