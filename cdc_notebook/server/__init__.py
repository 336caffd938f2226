"""The throwaway PostgreSQL for demos, notebooks and tests (``postgres``), the wal2arrow build
against its headers (``build``), the watchdog that stops it when its owner dies
(``watchdog``), the private files both rely on (``private``: directories 0700 with their owner
checked, secret files created with their final mode) and the progress of their long steps
(``progress``)."""
