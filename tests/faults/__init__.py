"""The fault-injection suite: the delivery contract (at-least-once, made once per reader by
the high-water mark) under server restarts and crashes, a killed walsender, a cut or stalled
network, a killed consumer, an invalidated slot and a full spill directory.

``tests/test_faults.py`` is the quick form (CI); ``python -m tests.faults`` the full form
(``docs/reliability.md``). Modules: ``workload`` (the writer and its log, the truth),
``consumer`` (the consumer process), ``records`` (its durable log), ``proxy`` (the TCP fault
proxy), ``check`` (the comparison), ``harness`` (one fault end to end), ``report`` (tables).
"""
