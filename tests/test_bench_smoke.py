"""The benchmark harness, end to end at tiny sizes (``python -m bench --quick``).

A smoke test so the harness cannot rot, and cannot go blind: every consumer that measures the
kit itself (role ``kit``) and every PostgreSQL reference the kit is compared with (role
``reference``: pgoutput decoded in the server, ``pg_recvlogical`` + pgoutput, binary COPY drained
by psql) must produce a figure in every phase it takes part in. Only third-party baselines
(role ``baseline``: wal2json where it is not packaged, the PyPI decoder that needs a Python 3.12
environment, ...) may be unavailable, each with its reason. No run may fail. Nothing about
timings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

MUST_RUN = ("kit", "reference")  # may never be "unavailable" or "failed"


def test_quick_bench_reports_every_consumer(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (md,) = tmp_path.glob("*-quick.md")
    (raw,) = tmp_path.glob("*-quick.json")
    (png,) = tmp_path.glob("*-quick.png")
    assert png.stat().st_size > 0
    data = json.loads(raw.read_text())
    text = md.read_text()
    records = [r for r in data["records"] if r["consumer"] != "_workload"]
    consumers = data["meta"]["consumers"]
    assert any(c["role"] == "kit" for c in consumers.values()), consumers
    problems = []
    for name, info in consumers.items():
        mine = [r for r in records if r["consumer"] == name]
        assert mine, f"{name}: no row and no reason"
        for r in mine:
            if r["status"] == "ok":
                assert r["events"] > 0, r
            elif r["status"] == "unavailable" and info["role"] not in MUST_RUN:
                assert r["reason"].strip(), r
            else:
                problems.append(f"{name} ({info['role']}, {r['workload']}): {r['status']}: "
                                f"{r.get('reason', '')}")
        assert f"`{name}`" in text or name in text, f"{name} missing from the Markdown table"
    assert not problems, "consumers that must run did not:\n" + "\n".join(problems)


def test_kit_import_errors_propagate(monkeypatch) -> None:
    """A broken kit stops the harness; it is never reported as an "unavailable" consumer."""
    import builtins

    from bench.consumers import Env, load_all, plugin_options

    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name.startswith("cdc_notebook") or name.startswith("bench.clients"):
            raise ImportError(f"simulated: {name} is broken")
        return real_import(name, *args, **kwargs)

    env = Env(15, Path("/nonexistent"), ("pgoutput", "wal2arrow"))
    kit = [c for c in load_all().values() if c.name.startswith("kit_")]  # the kit in-process
    assert kit
    monkeypatch.setattr(builtins, "__import__", broken)
    for consumer in kit:
        try:
            reason = consumer.unavailable(env)
        except ImportError:
            continue
        raise AssertionError(f"{consumer.name}: a kit import error became {reason!r}")
    try:
        plugin_options("wal2arrow", "pub")
    except ImportError:
        pass
    else:
        raise AssertionError("plugin_options swallowed a kit import error")


def test_ddl_overhead_bench_writes_its_tables(tmp_path: Path) -> None:
    """``python -m bench.ddl_overhead`` at a tiny size: both sides of every kind measured, the
    history really installed for the "with" rounds (its rows grew), nothing about timings."""
    proc = subprocess.run([sys.executable, "-m", "bench.ddl_overhead", "--pg", "15",
                           "--statements", "5", "--rounds", "2", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (raw,) = tmp_path.glob("ddl-overhead-*-pg15.json")
    (md,) = tmp_path.glob("ddl-overhead-*-pg15.md")
    result = json.loads(raw.read_text())
    assert set(result["summary"]) == {"temp table create + drop", "add + drop column",
                                      "table create + drop"}
    for kind, sides in result["raw"].items():
        assert len(sides["with"]) == len(sides["without"]) == 2, kind
        assert all(t > 0 for t in sides["with"] + sides["without"]), kind
    # baseline + the target table re-created, its column added and dropped 5 times, ...
    assert len(result["history_rows"]) == 2 and min(result["history_rows"]) > 10
    assert "| add + drop column |" in md.read_text()
