"""The DDL torture test, quick form (issue 12): a fixed list of seeds, a few hundred statements
each, both plugins on the same WAL, with readers live, queued and far behind
(``tests/torture/ddl.py``); it runs with the rest of the suite (CI).

Every change each reader delivers must equal what PostgreSQL's ``test_decoding`` decoded from
the same WAL on a second slot (values, column names, operation, before-key, in order per table),
every live mirror must equal ``SELECT`` of its table at the end, and the two plugins must deliver
the same changes (values, columns, Arrow types). A failure prints the seed,
the statements involved (``#index``) and the command that replays it in full
(``python -m tests.torture.ddl --seed ... --dump-sql`` prints the workload).
"""

from __future__ import annotations

import pytest

from tests.torture.ddl import MODES, reproduce_command, run_seed

SEEDS = (11, 12, 13, 14)  # an odd seed captures schema.tt_* (next to a table it must not see), an even one schema.*
STATEMENTS = 400


@pytest.mark.torture
@pytest.mark.parametrize("seed", SEEDS)
def test_ddl_torture(pg, pg_version, unique_name, seed):
    """Both plugins on the same WAL, each against the truth and against each other."""
    plugins = ("wal2arrow", "pgoutput")
    result = run_seed(pg, seed, STATEMENTS, plugins=plugins, modes=MODES,
                      schema=unique_name("tort"), catch_up_timeout=60)
    assert result.harness_error is None, result.report()
    assert result.truth_changes > STATEMENTS // 2, result.report()  # the workload did write
    assert sum(c.cross for c in result.consumers) == len(MODES)  # the plugins were compared
    failing = [c for c in result.consumers if c.result.mismatches and not c.cross]
    repro = reproduce_command(seed, STATEMENTS, pg_version,
                              sorted({c.plugin for c in failing}) or list(plugins),
                              sorted({c.mode for c in failing}) or list(MODES))
    assert result.ok, "\n" + result.report(show=4, reproduce=repro)


def test_the_checker_sees_wrong_values_columns_types_and_lost_changes():
    """The comparison is not vacuous: against a hand-made truth, a changed value, a column
    under another name, a wrong Arrow type, a lost TRUNCATE and a change the table never had
    are each one finding, and nothing else is."""
    from tests.torture.check import Comparison, KitChange, compare_table
    from tests.torture.truth import parse_change

    truth = [parse_change(line) for line in (
        "table s.t: INSERT: id[integer]:1 v[text]:'it''s' n[numeric]:1.50",
        "table s.t: INSERT: id[integer]:2 v[text]:null n[numeric]:-0.010",
        "table s.t: UPDATE: old-key: id[integer]:2 new-tuple: id[integer]:3 v[text]:'b' n[numeric]:2",
        "table s.t: TRUNCATE: (no-flags)",
        "table s.t: INSERT: id[integer]:4 w[text]:'x' n[numeric]:4.0",
        "table s.t: DELETE: id[integer]:4",
    )]
    for i, change in enumerate(truth):
        change.seq = change.stmt = i
    types = (("id", "int32"), ("v", "string"), ("n", "decimal128(8, 2)"))
    kit = [KitChange("c", (("id", "1"), ("v", "it's"), ("n", "1.5")), None, types),
           KitChange("c", (("id", "2"), ("v", None), ("n", "-0.01")), None,
                     (("id", "int64"), *types[1:])),
           KitChange("u", (("id", "3"), ("v", "B"), ("n", "2")), (("id", "2"),), types),
           KitChange("c", (("id", "4"), ("v", "x"), ("n", "4")), None, types),
           KitChange("d", (), (("id", "4"),), types),
           KitChange("d", (), (("id", "9"),), types)]
    result = Comparison()
    compare_table("test", "t", truth, kit, late=False, must_from=0, result=result)
    found = sorted((m.kind, m.stmt) for m in result.mismatches)
    assert found == [("columns", 4), ("extra", 5), ("missing", 3), ("type", 1), ("value", 2)], \
        "\n".join(m.format() for m in result.mismatches)
    assert (result.truth, result.delivered, result.equal) == (6, 6, 3)


def test_the_truth_parser_reads_test_decodings_quoting():
    from tests.torture.truth import parse_change

    c = parse_change("""table s."we ird": UPDATE: old-key: "q""uote"[integer]:1 new-tuple: """
                     """"q""uote"[integer]:2 a[text]:'x''y z' b[text]:'null' c[text]:null """
                     """d[numeric]:0.000 e[character varying]:'old-key: x' f[boolean]:true""")
    assert c.tables == ('s."we ird"',) and c.op == "u"
    assert c.old == (('q"uote', "integer", "1"),)
    assert [(n, v) for n, _t, v in c.cols] == [('q"uote', "2"), ("a", "x'y z"), ("b", "null"),
                                              ("c", None), ("d", "0"), ("e", "old-key: x"),
                                              ("f", "true")]
