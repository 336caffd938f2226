"""Torture tests: seeded random workloads checked against an independent decoder.

``python -m tests.torture.ddl --help`` runs the DDL torture test in its full form;
``tests/test_ddl_torture.py`` runs its quick form under pytest.
"""
