"""The server factory for the tests.

Integration tests run against PostgreSQL 15 (the system's) and 18 (the embedded wheel) by
default; the test id says which (``[pg15]``, ``[pg18]``). Pick one for a quick local run:

    CDC_TEST_PG=18 pytest            # or: pytest --pg 18

Fixtures:
* ``pg``: a session-scoped server, parametrized over the versions (shared: tests must create
  their own objects with unique names and clean up slots they leave active).
* ``pg_factory``: per-test servers with custom settings, stopped after the test
  (``pg_factory(settings={"wal_level": "replica"})``); for tests that restart or kill a server.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cdc_notebook.server.postgres import PostgresServer

ALL_VERSIONS = ("15", "18")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--pg", action="store", default=None,
                     help="PostgreSQL major versions to test against, comma-separated "
                     "(default: CDC_TEST_PG or 15,18)")


def selected_versions(config: pytest.Config) -> list[str]:
    raw = config.getoption("--pg") or os.environ.get("CDC_TEST_PG") or ",".join(ALL_VERSIONS)
    versions = [v.strip() for v in raw.split(",") if v.strip()]
    unknown = [v for v in versions if v not in ALL_VERSIONS]
    if unknown:
        raise pytest.UsageError(f"unknown PostgreSQL version(s) {unknown}; choose from {ALL_VERSIONS}")
    return versions


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "pg_version" in metafunc.fixturenames:
        versions = selected_versions(metafunc.config)
        metafunc.parametrize("pg_version", versions, ids=[f"pg{v}" for v in versions],
                             scope="session")


_servers: dict[str, PostgresServer] = {}


@pytest.fixture(scope="session")
def pg(pg_version: str) -> Iterator[PostgresServer]:
    """A shared server of the parametrized version (started once per session)."""
    if pg_version not in _servers:
        _servers[pg_version] = PostgresServer(version=int(pg_version)).start()
    yield _servers[pg_version]


@pytest.fixture(scope="session", autouse=True)
def _stop_shared_servers() -> Iterator[None]:
    yield
    for server in _servers.values():
        server.stop()
    _servers.clear()


@pytest.fixture
def pg_factory(pg_version: str) -> Iterator[Callable[..., PostgresServer]]:
    """Start throwaway servers of the parametrized version with custom settings."""
    started: list[PostgresServer] = []

    def make(**kwargs: Any) -> PostgresServer:
        kwargs.setdefault("version", int(pg_version))
        server = PostgresServer(**kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


_names = itertools.count()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Names for slots, publications and schemas that do not collide on a shared server."""
    base = f"t{os.getpid()}_{abs(hash(request.node.nodeid)) % 10**6}"

    def make(prefix: str = "obj") -> str:
        return f"{prefix}_{base}_{next(_names)}"

    return make


@pytest.fixture
def role_factory(pg: Any, unique_name: Callable[[str], str]) -> Iterator[Callable[..., str]]:
    """``role_factory(attributes)``: a role made for the test; what it owns in any database
    and the role itself are dropped afterwards."""
    made: list[str] = []

    def make(attributes: str = "LOGIN") -> str:
        name = unique_name("role")
        with pg.connect() as admin:
            admin.execute(sql.SQL("CREATE ROLE {} " + attributes).format(sql.Identifier(name)))
        made.append(name)
        return name

    yield make
    with pg.connect() as admin:
        dbs = [r[0] for r in admin.execute(
            "SELECT datname FROM pg_database WHERE datallowconn").fetchall()]
        for name in made:
            for d in dbs:
                with psycopg.connect(**pg.conninfo(dbname=d), autocommit=True) as c:
                    c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
