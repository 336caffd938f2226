"""Table patterns against real catalogs: the grammar's table of examples, discovery, preview."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cdc_notebook.errors import InvalidPattern, NoTablesMatched
from cdc_notebook.provision.patterns import (
    TablePattern,
    catalog_cache,
    discover_tables,
    match_tables,
    parse_patterns,
    preview,
)

PUBLIC_TABLES = {"public.users", "public.user_001", "public.user_002", "public.user_x",
                 "public.user_1", "public.user_01", "public.orders", "public.audit_log",
                 "public.audit_2024"}

SETUP = """
CREATE TABLE public.users (id int PRIMARY KEY, name text);
CREATE TABLE public.user_001 (id int PRIMARY KEY);
CREATE TABLE public.user_002 (id int PRIMARY KEY);
CREATE TABLE public.user_x (id int PRIMARY KEY);
CREATE TABLE public.user_1 (id int PRIMARY KEY);
CREATE TABLE public.user_01 (id int PRIMARY KEY);
CREATE TABLE public.orders (id int PRIMARY KEY);
CREATE TABLE public.audit_log (id int PRIMARY KEY);
CREATE TABLE public.audit_2024 (id int PRIMARY KEY);
CREATE VIEW public.user_view AS SELECT * FROM public.users;
CREATE MATERIALIZED VIEW public.user_mv AS SELECT * FROM public.users;
CREATE SCHEMA analytics;
CREATE TABLE analytics.orders (id int PRIMARY KEY);
CREATE TABLE analytics.events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, kind text);
CREATE SCHEMA "Sales";
CREATE TABLE "Sales"."Q1.Totals" (region text PRIMARY KEY, total numeric);
CREATE TABLE "Sales"."q1" (id int);
CREATE SCHEMA sales;
CREATE TABLE sales."Q1.Totals" (id int);
CREATE SCHEMA keys;
CREATE TABLE keys.no_pk (a int, b text);
CREATE TABLE keys.full_ri (a int, b text);
ALTER TABLE keys.full_ri REPLICA IDENTITY FULL;
CREATE TABLE keys.idx_ri (a int NOT NULL, b int NOT NULL, c text);
CREATE UNIQUE INDEX idx_ri_ab ON keys.idx_ri (b, a);
ALTER TABLE keys.idx_ri REPLICA IDENTITY USING INDEX idx_ri_ab;
CREATE TABLE keys.composite (x int, y int, z text, PRIMARY KEY (y, x));
CREATE TABLE keys.nothing (id int PRIMARY KEY);
ALTER TABLE keys.nothing REPLICA IDENTITY NOTHING;
INSERT INTO keys.composite SELECT g, g, 'z' FROM generate_series(1, 500) g;
ANALYZE keys.composite;
CREATE SCHEMA parts;
CREATE TABLE parts.measurements (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE parts.measurements_2024 PARTITION OF parts.measurements
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE parts.measurements_2025 PARTITION OF parts.measurements
    FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE UNLOGGED TABLE parts.scratch (id int PRIMARY KEY);
"""


@pytest.fixture(scope="module")
def catalog_db(pg: Any, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A fresh database holding the example tables (its public schema is ours alone)."""
    dbname = f"patterns_{abs(hash(request.node.nodeid)) % 10**8}_{pg.major}"
    with pg.connect() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(dbname)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    info = pg.conninfo(dbname=dbname)
    with psycopg.connect(**info, autocommit=True) as conn:
        conn.execute(SETUP)
    yield info
    with pg.connect() as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dbname)))


@pytest.fixture
def conn(catalog_db: dict[str, Any]) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(**catalog_db, autocommit=True) as c:
        yield c


EXAMPLES = [
    ("public.users", {"public.users"}),
    ("users", {"public.users"}),
    ("PUBLIC.Users", {"public.users"}),
    ("public.*", PUBLIC_TABLES),
    ("*", PUBLIC_TABLES),
    ("public.user_*", {"public.user_001", "public.user_002", "public.user_x", "public.user_1",
                       "public.user_01"}),
    ("public.user_?", {"public.user_1", "public.user_x"}),
    ("*.orders", {"public.orders", "analytics.orders"}),
    ("public.user_[0-9]+", {"public.user_001", "public.user_002", "public.user_1",
                            "public.user_01"}),
    ("public.user_[0-9]{3}", {"public.user_001", "public.user_002"}),
    (["public.users", "analytics.*"], {"public.users", "analytics.orders", "analytics.events"}),
    ("public.users, analytics.*", {"public.users", "analytics.orders", "analytics.events"}),
    (["public.*", "!public.audit_*"], PUBLIC_TABLES - {"public.audit_log", "public.audit_2024"}),
    ('"Sales"."Q1.Totals"', {"Sales.Q1.Totals"}),
    ('"Sales".*', {"Sales.Q1.Totals", "Sales.q1"}),
    ("sales.*", {"Sales.Q1.Totals", "Sales.q1", "sales.Q1.Totals"}),
    ('sales."Q1.Totals"', {"Sales.Q1.Totals", "sales.Q1.Totals"}),
    ("(sales|analytics).(q1|events)", {"Sales.q1", "analytics.events"}),
    ("parts.*", {"parts.measurements"}),
    ("parts.measurements_2024", {"parts.measurements_2024"}),
]


@pytest.mark.parametrize(("patterns", "expected"), EXAMPLES, ids=[str(e[0]) for e in EXAMPLES])
def test_pattern_examples(conn: psycopg.Connection[Any], patterns: Any,
                          expected: set[str]) -> None:
    got = {t.qualified_name for t in match_tables(conn, patterns)}
    assert got == expected


def test_views_and_system_tables_never_match(conn: psycopg.Connection[Any]) -> None:
    for pattern in ("public.user_view", "public.user_mv", "pg_catalog.pg_class", "*.pg_class",
                    "information_schema.tables"):
        with pytest.raises(NoTablesMatched):
            match_tables(conn, pattern)
    everything = {t.qualified_name for t in match_tables(conn, "*.*")}
    assert not any(n.startswith(("pg_", "information_schema")) for n in everything)
    assert "public.user_view" not in everything and "public.users" in everything


def test_no_match_names_pattern_and_near_misses(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(NoTablesMatched) as info:
        match_tables(conn, ["public.users", "public.usres"])
    err = info.value
    assert err.patterns == ["public.usres"]
    assert "public.users" in err.near_misses
    assert "public.usres" in str(err) and "did you mean" in str(err)
    # a schema slip: the table exists elsewhere
    with pytest.raises(NoTablesMatched) as info:
        match_tables(conn, "public.events")
    assert "analytics.events" in info.value.near_misses
    # non-strict: only an empty union is an error
    got = match_tables(conn, ["public.users", "public.usres"], strict=False)
    assert [t.qualified_name for t in got] == ["public.users"]


def test_everything_excluded_is_an_error(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(NoTablesMatched, match="excluded"):
        match_tables(conn, ["public.users", "!public.user*"])


@pytest.mark.parametrize(("text", "part"), [
    ("public.user_[0-9", "user_[0-9"),
    ("public.user_(a", "user_(a"),
    ("sales+(.orders", None),
    ("public.+x", "+x"),
])
def test_invalid_regex_names_the_part(text: str, part: str | None) -> None:
    with pytest.raises(InvalidPattern) as info:
        parse_patterns(text)
    assert info.value.pattern == text
    if part is not None:
        assert info.value.part == part
        assert repr(part) in str(info.value)
    assert "regular expression" in str(info.value)


@pytest.mark.parametrize("text", ['"Sales.q1', '"Sales"x.q1', "public.", ".users", "!", "",
                                  'pub"lic.users'])
def test_malformed_patterns(text: str) -> None:
    with pytest.raises(InvalidPattern):
        parse_patterns(text)


def test_only_exclusions_is_an_error() -> None:
    with pytest.raises(InvalidPattern, match="only exclusions"):
        parse_patterns(["!public.audit_*"])


def test_parse_kinds() -> None:
    p = TablePattern.parse('"Sales"."Q1.Totals"')
    assert (p.schema.kind, p.schema.text, p.table.kind, p.table.text) == (
        "exact", "Sales", "exact", "Q1.Totals")
    assert TablePattern.parse("users").schema.text == "public"
    assert TablePattern.parse("public.user_?").table.kind == "glob"
    assert TablePattern.parse("public.user_[0-9]+").table.kind == "regex"
    assert TablePattern.parse('"we""ird".x').schema.text == 'we"ird'
    assert TablePattern.parse("!public.audit_*").exclude
    assert [p.text for p in parse_patterns("a.x{1,2}, b.c")] == ["a.x{1,2}", "b.c"]


def test_table_info_fields(conn: psycopg.Connection[Any]) -> None:
    infos = {t.qualified_name: t for t in discover_tables(conn)}
    comp = infos["keys.composite"]
    assert comp.primary_key == ("y", "x") and comp.has_pk
    assert comp.identity_columns == ("y", "x") and comp.replica_identity == "d"
    assert comp.estimated_rows == 500
    assert comp.relkind == "r" and comp.owner == "postgres" and comp.is_owner and comp.can_select
    no_pk = infos["keys.no_pk"]
    assert not no_pk.has_pk and not no_pk.has_replica_identity
    assert no_pk.estimated_rows is None or no_pk.estimated_rows == 0
    full = infos["keys.full_ri"]
    assert full.replica_identity == "f" and full.identity_columns == ("a", "b")
    idx = infos["keys.idx_ri"]
    assert idx.replica_identity == "i" and idx.identity_columns == ("b", "a")
    nothing = infos["keys.nothing"]
    assert nothing.has_pk and not nothing.has_replica_identity
    assert infos["parts.measurements"].relkind == "p"
    assert infos["parts.measurements_2024"].partition_root == ("parts", "measurements")
    assert infos["parts.scratch"].persistence == "u"
    q1 = infos["Sales.Q1.Totals"]
    assert q1.quoted_name == '"Sales"."Q1.Totals"'
    assert q1.oid == conn.execute("""SELECT '"Sales"."Q1.Totals"'::regclass::oid""").fetchone()[0]
    # the quoted name selects exactly that table again
    assert [t.oid for t in match_tables(conn, q1.quoted_name)] == [q1.oid]


def test_privileges_seen_by_an_ordinary_role(conn: psycopg.Connection[Any],
                                             catalog_db: dict[str, Any],
                                             unique_name: Any) -> None:
    role = unique_name("reader")
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        conn.execute(sql.SQL("GRANT SELECT ON public.users TO {}").format(sql.Identifier(role)))
        with psycopg.connect(**{**catalog_db, "user": role}, autocommit=True) as c2:
            infos = {t.qualified_name: t for t in discover_tables(c2)}
        assert infos["public.users"].can_select and not infos["public.users"].is_owner
        assert not infos["public.orders"].can_select
        # no USAGE on the schema: SELECT on the table is not enough
        assert not infos["analytics.orders"].can_select
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_unlogged_tables_are_skipped(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(NoTablesMatched, match="unlogged"):
        match_tables(conn, "parts.scratch")
    shown = preview(conn, "parts.*")
    assert {t.qualified_name for t, _ in shown.skipped} == {
        "parts.scratch", "parts.measurements_2024", "parts.measurements_2025"}


def test_preview_never_raises_and_caches(conn: psycopg.Connection[Any]) -> None:
    bad = preview(conn, "public.user_[0-9")
    assert not bad.ok and bad.error_part == "user_[0-9" and "regular expression" in bad.error
    half = preview(conn, "public.usr")
    assert not half.ok and "public.users" in half.unmatched["public.usr"]
    good = preview(conn, ["public.user_?", "analytics.*"], max_age=60)
    assert good.ok and good.names == ["analytics.events", "analytics.orders", "public.user_1",
                                      "public.user_x"]
    assert good.counts == {"public.user_?": 2, "analytics.*": 2}
    assert good.catalog_size >= 20
    conn.execute("CREATE TABLE analytics.sessions (id int PRIMARY KEY)")
    try:
        cached = preview(conn, "analytics.*", max_age=60)
        assert "analytics.sessions" not in cached.names  # served from the cached catalog
        # past max_age the fingerprint notices the new table and the catalog is read again
        revalidated = preview(conn, "analytics.*", max_age=1e-9)
        assert "analytics.sessions" in revalidated.names
        fresh = preview(conn, "analytics.*", max_age=0)
        assert "analytics.sessions" in fresh.names
        assert "analytics.sessions" in {t.qualified_name for t in match_tables(conn, "analytics.*")}
    finally:
        conn.execute("DROP TABLE analytics.sessions")
        catalog_cache.invalidate(conn)
    keyless = preview(conn, "keys.*")
    assert {t.qualified_name for t in keyless.without_key} == {"keys.no_pk", "keys.nothing"}


def test_fingerprint_follows_grants_and_identity(conn: psycopg.Connection[Any]) -> None:
    from cdc_notebook.provision.patterns import catalog_fingerprint

    before = catalog_fingerprint(conn)
    assert catalog_fingerprint(conn) == before
    conn.execute("ALTER TABLE keys.no_pk REPLICA IDENTITY FULL")
    after_identity = catalog_fingerprint(conn)
    assert after_identity != before
    conn.execute("ALTER TABLE keys.no_pk REPLICA IDENTITY DEFAULT")
    conn.execute("GRANT SELECT ON keys.no_pk TO PUBLIC")
    assert catalog_fingerprint(conn) not in (before, after_identity)
    conn.execute("REVOKE SELECT ON keys.no_pk FROM PUBLIC")


def test_discovery_inside_a_transaction_leaves_it_clean(catalog_db: dict[str, Any]) -> None:
    with psycopg.connect(**catalog_db) as c:  # not autocommit
        assert discover_tables(c)
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
