"""The throwaway PostgreSQL for demos, notebooks and tests (``postgres``), the wal2arrow build
against its headers (``build``), and the watchdog that stops it when its owner dies
(``watchdog``)."""
