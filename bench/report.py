"""Summaries of a run: ``<date>[-tag].md``, ``.json`` (raw records) and ``.png`` (the chart).

Medians over rounds; events/s also as the minimum. Ratios compare medians measured in the same
run on the same server version: to pgoutput's in-server decode rate (pgoutput decoded by the SQL
function, decode only), to the ``pg_recvlogical`` + pgoutput streaming rate on the same
transport (a thin C client) and, for snapshots, to binary COPY drained by psql on the same
transport. These are PostgreSQL's own figures (role ``reference``), not ceilings: the kit beats
them.

Labels (titles, roles) are taken from the current consumer registry where it knows the
consumer, so an old run's raw JSON re-renders with today's names; the figures are untouched.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

PGOUTPUT_DECODE = "sql_decode_pgoutput"  # pgoutput's in-server decode rate
TRANSPORT_NAMES = {"tcp": "TCP", "unix": "Unix socket", "server": "in server (SQL)"}


def json_dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)


def json_loads(text: str) -> Any:
    return json.loads(text)


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else None


# --------------------------------------------------------------------------- aggregation


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (version, workload, consumer): medians, minimum events/s, failures, reasons."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    unavailable: dict[tuple, str] = {}
    workloads: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r.get("consumer") == "_workload":
            workloads[(r["version"], r["workload"])].append(r)
        elif r["status"] == "unavailable":
            unavailable[(r["version"], r["consumer"])] = r["reason"]
        else:
            groups[(r["version"], r["workload"], r["consumer"])].append(r)
    rows: dict[str, dict[str, Any]] = {}
    for (version, workload, consumer), recs in groups.items():
        ok = [r for r in recs if r["status"] == "ok"]
        failed = [r for r in recs if r["status"] != "ok"]
        first = recs[0]
        row: dict[str, Any] = {
            "version": version, "workload": workload, "consumer": consumer,
            "title": first["title"], "label": first.get("label", ""), "role": first["role"],
            "group": first["group"],
            "transport": first["transport"], "rounds_ok": len(ok), "rounds_failed": len(failed),
            "failures": sorted({r["reason"] for r in failed}),
        }
        if ok:
            eps = [r["events_per_s"] for r in ok if "events_per_s" in r]
            row.update(
                events=_median([r["events"] for r in ok]),
                capped=any(r.get("capped") for r in ok),
                events_per_s_median=_median(eps), events_per_s_min=min(eps) if eps else None,
                seconds_median=_median([r.get("seconds") for r in ok]),
                rss_peak_mb=_median([r.get("rss_peak_mb") for r in ok]),
                cpu_s_per_m=_median([r.get("cpu_s_per_m") for r in ok]),
                server_cpu_s_per_m=_median([r.get("server_cpu_s_per_m") for r in ok]),
                server_anon_peak_mb=_median([r.get("server_anon_peak_mb") for r in ok]),
                mb_per_s=_median([r.get("mb_per_s") for r in ok]),
                latency_p50_ms=_median([r.get("latency_p50_ms") for r in ok]),
                latency_p99_ms=_median([r.get("latency_p99_ms") for r in ok]),
                latency_max_ms=max((r.get("latency_max_ms") or 0 for r in ok), default=None),
                writer_rate=_median([r.get("writer_rate") for r in ok]),
            )
            mirrors = [r for r in ok if (r.get("extra") or {}).get("mirror_arrow_bytes")]
            if mirrors:  # the live frames' consumer: its mirror, and the peak RSS beside it
                row.update(
                    mirror_rows=_median([r["extra"]["mirror_rows"] for r in mirrors]),
                    mirror_arrow_mib=_median([r["extra"]["mirror_arrow_bytes"] / 2**20
                                              for r in mirrors]),
                    rss_x_mirror=_median([r["rss_peak_mb"] / (r["extra"]["mirror_arrow_bytes"]
                                                              / 2**20)
                                          for r in mirrors if r.get("rss_peak_mb")]),
                    floor_rss_mb=_median([r["extra"]["floor_rss_kb"] / 1024 for r in mirrors
                                          if r["extra"].get("floor_rss_kb")]),
                    floor_x_mirror=_median([r["extra"]["floor_rss_kb"] / 1024
                                            / (r["extra"]["mirror_arrow_bytes"] / 2**20)
                                            for r in mirrors
                                            if r["extra"].get("floor_rss_kb")]))
        rows[f"{version}/{workload}/{consumer}"] = row
    _add_ratios(rows)
    wl = {f"{v}/{w}": {"rounds": len(rs), "events": rs[0]["events"],
                       "wal_mb": _median([r["wal_bytes"] / 1e6 for r in rs]),
                       "seconds_median": _median([r["seconds"] for r in rs])}
          for (v, w), rs in workloads.items()}
    return {"rows": rows, "unavailable": {f"{v}/{c}": why for (v, c), why in unavailable.items()},
            "workloads": wl}


def _eps(rows: dict[str, Any], version: int, workload: str, consumer: str) -> float | None:
    row = rows.get(f"{version}/{workload}/{consumer}")
    return row.get("events_per_s_median") if row else None


def _add_ratios(rows: dict[str, dict[str, Any]]) -> None:
    for row in rows.values():
        v, w, eps = row["version"], row["workload"], row.get("events_per_s_median")
        if eps is None:
            continue
        if w in ("standard", "wide"):
            decode = _eps(rows, v, w, PGOUTPUT_DECODE)
            row["x_pgoutput_decode"] = eps / decode if decode else None
            if row["transport"] in ("tcp", "unix"):
                stream = _eps(rows, v, w, f"recvlogical_pgoutput_{row['transport']}")
                row["x_pgoutput_stream"] = eps / stream if stream else None
        elif w == "snapshot" and row["transport"] in ("tcp", "unix"):
            copy = _eps(rows, v, w, f"copy_binary_psql_{row['transport']}")
            row["x_copy_psql"] = eps / copy if copy else None


# --------------------------------------------------------------------------- goals of issues 4-6

# (issue, goal text, numerator consumer, denominator consumer or None, metric, target, kind)
# kind: "ratio>=" (numerator/denominator >= target), "<=" (a value at most target),
#       "cpu<=" (numerator's walsender CPU per row <= denominator's)
GOALS = [
    ("4", "walsender CPU per row, wal2arrow streamed (Unix) ≤ pgoutput's in-server decode",
     "recvlogical_wal2arrow_unix", PGOUTPUT_DECODE, "server_cpu_s_per_m", 1.0, "cpu<="),
    ("4", "rows/s to a thin client, wal2arrow ≥ 2.5× pgoutput, both over TCP",
     "recvlogical_wal2arrow_tcp", "recvlogical_pgoutput_tcp", "events_per_s_median", 2.5,
     "ratio>="),
    ("4", "rows/s to a thin client, wal2arrow ≥ 1.3× pgoutput, both over the Unix socket",
     "recvlogical_wal2arrow_unix", "recvlogical_pgoutput_unix", "events_per_s_median", 1.3,
     "ratio>="),
    ("5", "kit via wal2arrow (Unix, its default) ≥ 0.9× pgoutput's decode rate",
     "kit_wal2arrow_unix", PGOUTPUT_DECODE, "events_per_s_median", 0.9, "ratio>="),
    ("5", "kit via wal2arrow over TCP ≥ 2.5× the pg_recvlogical + pgoutput streaming rate over "
     "TCP",
     "kit_wal2arrow_tcp", "recvlogical_pgoutput_tcp", "events_per_s_median", 2.5, "ratio>="),
    ("5", "kit via wal2arrow (Unix) ≥ 4.5× psycopg2 + wal2json (Unix)",
     "kit_wal2arrow_unix", "psycopg2_wal2json_unix", "events_per_s_median", 4.5, "ratio>="),
    ("5", "kit via wal2arrow (TCP) ≥ 4.5× psycopg2 + wal2json (TCP)",
     "kit_wal2arrow_tcp", "psycopg2_wal2json_tcp", "events_per_s_median", 4.5, "ratio>="),
    ("5", "p50 commit-to-arrival ≤ 1 ms at 1,000 commits/s (kit via wal2arrow, Unix)",
     "kit_wal2arrow_unix", None, "latency_p50_ms", 1.0, "<="),
    ("5", "p99 commit-to-arrival ≤ 10 ms at 1,000 commits/s (kit via wal2arrow, Unix)",
     "kit_wal2arrow_unix", None, "latency_p99_ms", 10.0, "<="),
    ("5", "a minimal wal2arrow client (bench/clients.py, Unix) ≥ 0.9× pgoutput's decode rate "
     "(for reference)",
     "kit_wal2arrow_client_unix", PGOUTPUT_DECODE, "events_per_s_median", 0.9, "ratio>="),
    ("5", "a minimal wal2arrow client (bench/clients.py, TCP) ≥ 2.5× the pg_recvlogical + "
     "pgoutput streaming rate over TCP (for reference)",
     "kit_wal2arrow_client_tcp", "recvlogical_pgoutput_tcp", "events_per_s_median", 2.5,
     "ratio>="),
    ("5", "a minimal wal2arrow client (bench/clients.py, Unix) ≥ 4.5× psycopg2 + wal2json "
     "(Unix) (for reference)",
     "kit_wal2arrow_client_unix", "psycopg2_wal2json_unix", "events_per_s_median", 4.5,
     "ratio>="),
    ("6", "kit snapshot ≥ 0.8× binary COPY drained by psql (Unix)",
     "kit_snapshot_unix", "copy_binary_psql_unix", "events_per_s_median", 0.8, "ratio>="),
    ("6", "kit via pgoutput ≥ 0.9× the pg_recvlogical + pgoutput streaming rate, over TCP",
     "kit_pgoutput_tcp", "recvlogical_pgoutput_tcp", "events_per_s_median", 0.9, "ratio>="),
    ("6", "kit via pgoutput ≥ 0.9× the pg_recvlogical + pgoutput streaming rate, over the "
     "Unix socket",
     "kit_pgoutput_unix", "recvlogical_pgoutput_unix", "events_per_s_median", 0.9, "ratio>="),
    ("6", "kit via pgoutput (TCP) ≥ 1.5× psycopg2 + wal2json (TCP)",
     "kit_pgoutput_tcp", "psycopg2_wal2json_tcp", "events_per_s_median", 1.5, "ratio>="),
    ("6", "kit via pgoutput (TCP) ≥ 10× PyPI pgoutput-decoder (TCP)",
     "kit_pgoutput_tcp", "pgoutput_decoder_pypi_tcp", "events_per_s_median", 10.0, "ratio>="),
    ("15", "LiveReader into the live mirror ≥ 0.8× the CDCStream drain (wal2arrow, Unix)",
     "kit_live_wal2arrow_unix", "kit_wal2arrow_unix", "events_per_s_median", 0.8, "ratio>="),
    ("15", "LiveReader's peak RSS ≤ 2.5× its mirror's own Arrow size (×)",
     "kit_live_wal2arrow_unix", None, "rss_x_mirror", 2.5, "<="),
    ("15", "the seed API's async for ... read_batches() ≥ 0.9× the sync drain (wal2arrow, "
     "Unix)",
     "kit_async_wal2arrow_unix", "kit_wal2arrow_unix", "events_per_s_median", 0.9, "ratio>="),
]


def goals(summary: dict[str, Any], versions: list[int]) -> list[dict[str, Any]]:
    rows = summary["rows"]
    out = []
    for version in versions:
        for issue, text, num, den, metric, target, kind in GOALS:
            workload = "latency" if metric.startswith("latency") else (
                "snapshot" if "snapshot" in num or (den and "copy" in den) else "standard")
            a = rows.get(f"{version}/{workload}/{num}", {}).get(metric)
            b = rows.get(f"{version}/{workload}/{den}", {}).get(metric) if den else None
            g = {"version": version, "issue": issue, "goal": text, "target": target}
            missing = [n for n, val in ((num, a), (den, b)) if n and val is None]
            if missing:
                g["status"] = "no figure yet: " + ", ".join(
                    f"{n} ({_why_missing(summary, version, workload, n)})" for n in missing)
            elif kind == "ratio>=":
                g.update(measured=a / b, met=a / b >= target)
            elif kind == "cpu<=":
                g.update(measured=a / b, met=a <= b * target)
            else:
                g.update(measured=a, met=a <= target)
            out.append(g)
    return out


def _why_missing(summary: dict[str, Any], version: int, workload: str, consumer: str) -> str:
    why = summary["unavailable"].get(f"{version}/{consumer}")
    if why:
        return why
    row = summary["rows"].get(f"{version}/{workload}/{consumer}")
    if row and row["failures"]:
        return "failed: " + row["failures"][0]
    return "not run"


# --------------------------------------------------------------------------- formatting


def _f(value: Any, fmt: str = ",.0f", none: str = "–") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, fmt)


def _cell(text: str, limit: int = 200) -> str:
    """One table cell: no line breaks, no column separators."""
    flat = " ".join(str(text).split()).replace("|", "/")
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def _x(value: Any) -> str:
    return "–" if value is None else f"{value:.2f}×"


def markdown(meta: dict[str, Any], summary: dict[str, Any], goal_rows: list[dict]) -> str:
    cfg = meta["config"]
    m = meta["machine"]
    lines = [f"# Benchmark run {meta['started']}", ""]
    lines.append(f"Machine: {m.get('cpu', '?')}, {m.get('cores')} cores, "
                 f"{m.get('memory_gb', '?')} GB, Linux {m.get('kernel')}, "
                 f"Python {m.get('python')}. Servers: " + ", ".join(
                     f"PostgreSQL {s['server']} ({s['source']})"
                     for s in meta["servers"].values()) + ".")
    lines.append(f"Workload: standard N = {cfg['events']:,} "
                 f"({_wl_text(summary, 'standard')}); wide rows {cfg['wide_rows']:,} "
                 f"({_wl_text(summary, 'wide')}); latency {cfg['latency_rate']:,.0f} commits/s "
                 f"for {cfg['latency_seconds']:g} s; {cfg['rounds']} round(s); run took "
                 f"{meta['duration_s'] / 60:.1f} min. Command: `python -m bench"
                 f"{' --quick' if cfg['quick'] else ''}`"
                 + ("" if cfg["quick"] else f" (events {cfg['events']:,}, rounds {cfg['rounds']},"
                                            f" versions {','.join(map(str, cfg['versions']))})")
                 + ".")
    lines += ["", "Figures are medians over rounds (events/s also the minimum). *Transport* is "
              "how the consumer reached the server. Consumer CPU is the consumer process's "
              "CPU while streaming, per million events; walsender CPU is the server process "
              "serving the slot (the backend running the SQL function, for pgoutput's "
              "in-server decode rate), per million rows. "
              "Ratios are to medians of the same run and server version.", ""]
    rows = summary["rows"]
    for version in cfg["versions"]:
        for workload, head in (("standard", "Standard workload"),
                               ("wide", "Wide rows (TOASTed text)")):
            sel = _sorted([r for r in rows.values()
                           if r["version"] == version and r["workload"] == workload])
            if not sel:
                continue
            lines += [f"## PostgreSQL {version}: {head}", ""]
            lat = {r["consumer"]: r for r in rows.values()
                   if r["version"] == version and r["workload"] == "latency"}
            with_latency = workload == "standard"
            hdr = ["consumer", "transport", "events/s (median)", "min",
                   "× pgoutput's in-server decode rate",
                   "× pg_recvlogical + pgoutput streaming rate (same transport)",
                   "consumer RSS MB",
                   "consumer CPU s / M events", "walsender CPU s / M rows",
                   "walsender peak anon MB"]
            if with_latency:
                hdr += ["p50 ms", "p99 ms"]
            lines += ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
            for r in sel:
                cells = [_name(r), TRANSPORT_NAMES.get(r["transport"], r["transport"])]
                if r.get("events_per_s_median") is None:
                    cells += [_cell("failed: " + "; ".join(r["failures"]))] + [""] * (
                        len(hdr) - 3)
                else:
                    cells += [_f(r["events_per_s_median"]) + ("*" if r.get("capped") else ""),
                              _f(r["events_per_s_min"]), _x(r.get("x_pgoutput_decode")),
                              _x(r.get("x_pgoutput_stream")), _f(r.get("rss_peak_mb"), ".0f"),
                              _f(r.get("cpu_s_per_m"), ".2f"),
                              _f(r.get("server_cpu_s_per_m"), ".2f"),
                              _f(r.get("server_anon_peak_mb"), ".1f")]
                    if with_latency:
                        lr = lat.get(r["consumer"], {})
                        if lr.get("latency_p50_ms") is not None:
                            cells += [_f(lr["latency_p50_ms"], ".2f"),
                                      _f(lr["latency_p99_ms"], ".2f")]
                        elif lr.get("failures"):
                            cells += [_cell("failed: " + lr["failures"][0], 80), ""]
                        else:
                            cells += ["–", "–"]
                lines.append("| " + " | ".join(cells) + " |")
            for r in sel:
                if r.get("mirror_arrow_mib"):
                    lines += ["", f"`{r['consumer']}`: its mirror holds "
                              f"{_f(r['mirror_rows'])} rows, {r['mirror_arrow_mib']:,.1f} MiB as "
                              f"Arrow (LiveTable.to_arrow(), the batch types); peak RSS "
                              f"{_f(r.get('rss_peak_mb'), '.0f')} MB = "
                              f"{_f(r.get('rss_x_mirror'), '.2f')}× that."]
                    if r.get("floor_rss_mb"):
                        lines[-1] += (
                            f" The floor under it: a fresh process holding only the same "
                            f"mirror as Polars frames (with the libraries imported) peaks at "
                            f"{_f(r['floor_rss_mb'], '.0f')} MB = "
                            f"{_f(r.get('floor_x_mirror'), '.2f')}×; the live path adds "
                            f"{_f(r['rss_peak_mb'] - r['floor_rss_mb'], '.0f')} MB "
                            f"(stream, fold working set, allocator slack).")
            if any(r.get("capped") for r in sel):
                lines.append("")
                lines.append("\\* capped run: the rate is over the events it read.")
            failed = [r for r in sel if r["rounds_failed"] and r.get("events_per_s_median")]
            for r in failed:
                lines.append(f"- {r['consumer']}: {r['rounds_failed']} round(s) failed: "
                             + _cell("; ".join(r["failures"]), 400))
            lines.append("")
        sel = _sorted([r for r in rows.values()
                       if r["version"] == version and r["workload"] == "snapshot"])
        if sel:
            lines += [f"## PostgreSQL {version}: snapshot of bench.orders", "",
                      "| consumer | transport | rows/s (median) | min | MB/s (binary COPY "
                      "size) | × binary COPY drained by psql (same transport) | consumer RSS MB | "
                      "consumer CPU s / M rows | backend CPU s / M rows |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for r in sel:
                if r.get("events_per_s_median") is None:
                    lines.append(f"| {_name(r)} | {TRANSPORT_NAMES[r['transport']]} | "
                                 + _cell("failed: " + "; ".join(r["failures"])) + " |||||||")
                    continue
                lines.append(
                    f"| {_name(r)} | {TRANSPORT_NAMES[r['transport']]} | "
                    f"{_f(r['events_per_s_median'])} | {_f(r['events_per_s_min'])} | "
                    f"{_f(r.get('mb_per_s'), '.1f')} | {_x(r.get('x_copy_psql'))} | "
                    f"{_f(r.get('rss_peak_mb'), '.0f')} | {_f(r.get('cpu_s_per_m'), '.2f')} | "
                    f"{_f(r.get('server_cpu_s_per_m'), '.2f')} |")
            lines.append("")
        lat_rows = [r for r in rows.values()
                    if r["version"] == version and r["workload"] == "latency"]
        if lat_rows:
            lines += [f"## PostgreSQL {version}: latency at {cfg['latency_rate']:,.0f} "
                      "single-row commits/s", "",
                      "| consumer | transport | p50 ms | p99 ms | max ms | writer commits/s |",
                      "|---|---|---|---|---|---|"]
            for r in _sorted(lat_rows):
                if r.get("latency_p50_ms") is None:
                    lines.append(f"| {_name(r)} | {TRANSPORT_NAMES[r['transport']]} | "
                                 + _cell("failed: " + "; ".join(r["failures"])) + " ||||")
                    continue
                lines.append(f"| {_name(r)} | {TRANSPORT_NAMES[r['transport']]} | "
                             f"{_f(r['latency_p50_ms'], '.2f')} | "
                             f"{_f(r['latency_p99_ms'], '.2f')} | "
                             f"{_f(r['latency_max_ms'], '.1f')} | {_f(r['writer_rate'])} |")
            lines.append("")
    if summary["unavailable"]:
        lines += ["## Consumers that could not run", "", "| version | consumer | reason |",
                  "|---|---|---|"]
        for key, why in sorted(summary["unavailable"].items()):
            version, consumer = key.split("/", 1)
            lines.append(f"| {version} | {consumer} | {_cell(why, 400)} |")
        lines.append("")
    if goal_rows:
        lines += ["## Goals of issues 4, 5, 6 and 15", "",
                  "| PG | issue | goal | measured | met |", "|---|---|---|---|---|"]
        for g in goal_rows:
            if "measured" in g:
                unit = "×" if "≥" in g["goal"] or "CPU" in g["goal"] or "(×)" in g["goal"] \
                    else " ms"
                lines.append(f"| {g['version']} | {g['issue']} | {g['goal']} | "
                             f"{g['measured']:.2f}{unit} | {'yes' if g['met'] else 'no'} |")
            else:
                lines.append(f"| {g['version']} | {g['issue']} | {g['goal']} | "
                             f"{_cell(g['status'])} | – |")
        lines.append("")
    lines += ["Names: " + "; ".join(f"`{n}`: {c['title']}"
                                    for n, c in sorted(meta["consumers"].items())) + ".", ""]
    return "\n".join(lines)


def _wl_text(summary: dict[str, Any], workload: str) -> str:
    items = [(k, v) for k, v in summary["workloads"].items() if k.endswith("/" + workload)]
    if not items:
        return "not run"
    _, v = items[0]
    return f"{v['events']:,} row changes, {v['wal_mb']:,.0f} MB of WAL"


def _name(row: dict[str, Any]) -> str:
    return f"`{row['consumer']}` ({row.get('label') or row['role']})"


_ROLE_ORDER = {"reference": 0, "kit": 1, "baseline": 2}
_OLD_ROLES = {"ceiling": "reference"}  # runs recorded before the references were named so


def relabel(meta: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """Titles, labels and roles from the current consumer registry (in place); the figures are
    not touched. Consumers the registry no longer has keep their recorded labels."""
    from .consumers import load_all

    registry = load_all()
    for name, info in meta["consumers"].items():
        c = registry.get(name)
        if c is not None:
            info.update(title=c.title, label=c.label, role=c.role)
        info["role"] = _OLD_ROLES.get(info["role"], info["role"])
    for r in records:
        info = meta["consumers"].get(r.get("consumer"))
        if info is not None:
            r.update(title=info["title"], label=info.get("label", ""), role=info["role"])
        elif "role" in r:
            r["role"] = _OLD_ROLES.get(r["role"], r["role"])


def _sorted(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (_ROLE_ORDER[r["role"]], r["group"], r["consumer"]))


# --------------------------------------------------------------------------- chart


def chart(meta: dict[str, Any], summary: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    rows = summary["rows"]
    versions = meta["config"]["versions"]
    names = [r["consumer"] for r in _sorted([r for r in rows.values()
                                             if r["workload"] == "standard"])]
    names = list(dict.fromkeys(names))
    lat_names = list(dict.fromkeys(
        r["consumer"] for r in _sorted([r for r in rows.values() if r["workload"] == "latency"])))
    fig = Figure(figsize=(12, 1.2 + 0.45 * max(len(names), len(lat_names), 4)), dpi=100)
    FigureCanvasAgg(fig)
    ax1 = fig.add_subplot(1, 2, 1)
    ax2 = fig.add_subplot(1, 2, 2)
    colors = {15: "#4c72b0", 18: "#dd8452"}
    height = 0.8 / max(len(versions), 1)
    for i, version in enumerate(versions):
        med, lo, ys = [], [], []
        for j, name in enumerate(names):
            row = rows.get(f"{version}/standard/{name}", {})
            if row.get("events_per_s_median"):
                med.append(row["events_per_s_median"] / 1000)
                lo.append((row["events_per_s_median"] - row["events_per_s_min"]) / 1000)
                ys.append(j + i * height)
        ax1.barh(ys, med, height=height, xerr=[lo, [0] * len(lo)], label=f"PG {version}",
                 color=colors.get(version))
    ax1.set_yticks([j + height * (len(versions) - 1) / 2 for j in range(len(names))])
    ax1.set_yticklabels(names, fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel("thousand events/s (median; whisker to the minimum)")
    ax1.set_title("Standard workload: throughput")
    if names:
        ax1.legend(fontsize=8)
    for i, version in enumerate(versions):
        ys, p50, p99 = [], [], []
        for j, name in enumerate(lat_names):
            row = rows.get(f"{version}/latency/{name}", {})
            if row.get("latency_p50_ms") is not None:
                ys.append(j + i * height)
                p50.append(row["latency_p50_ms"])
                p99.append(row["latency_p99_ms"])
        ax2.barh(ys, p99, height=height, color=colors.get(version), alpha=0.35,
                 label=f"PG {version} p99")
        ax2.barh(ys, p50, height=height, color=colors.get(version), label=f"PG {version} p50")
    ax2.set_yticks([j + height * (len(versions) - 1) / 2 for j in range(len(lat_names))])
    ax2.set_yticklabels(lat_names, fontsize=8)
    ax2.invert_yaxis()
    if any(rows.get(f"{v}/latency/{n}", {}).get("latency_p50_ms") for v in versions
           for n in lat_names):
        ax2.set_xscale("log")
        ax2.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax2.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax2.text(0.5, 0.5, "no latency figures in this run", ha="center", va="center",
                 transform=ax2.transAxes)
    ax2.set_xlabel("commit-to-arrival latency, ms (log)")
    ax2.set_title(f"Latency at {meta['config']['latency_rate']:,.0f} commits/s")
    if lat_names:
        ax2.legend(fontsize=8)
    m = meta["machine"]
    fig.suptitle(f"cdc_notebook bench {meta['started'][:10]} — {m.get('cpu', '?')}, "
                 f"{m.get('cores')} cores", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


# --------------------------------------------------------------------------- files


def write_reports(meta: dict[str, Any], records: list[dict[str, Any]], out: Path, tag: str,
                  latest: bool, date: str | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    relabel(meta, records)
    summary = summarize(records)
    goal_rows = goals(summary, meta["config"]["versions"])
    stem = (date or meta["started"][:10] or dt.date.today().isoformat()) + (
        f"-{tag}" if tag else "")
    md, js, png = (out / f"{stem}.md", out / f"{stem}.json", out / f"{stem}.png")
    md.write_text(markdown(meta, summary, goal_rows))
    js.write_text(json_dumps({"meta": meta, "summary": summary, "goals": goal_rows,
                              "records": records}))
    chart(meta, summary, png)
    paths = [md, js, png]
    if latest:
        for src, name in ((md, "latest.md"), (js, "latest.json"), (png, "latest.png")):
            shutil.copyfile(src, out / name)
            paths.append(out / name)
    return paths


def main(argv: list[str] | None = None) -> int:
    """Re-render the Markdown and the chart of a run from its raw JSON:
    ``python -m bench.report bench/results/<date>.json [--out DIR] [--tag TAG]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.report")
    p.add_argument("raw", type=Path)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--tag", default=None)
    p.add_argument("--latest", action="store_true", help="also refresh latest.{md,json,png}")
    a = p.parse_args(argv)
    data = json.loads(a.raw.read_text())
    stem = a.raw.stem
    tag = a.tag if a.tag is not None else (stem.split("-", 3)[3] if stem.count("-") >= 3 else "")
    out = a.out or a.raw.parent
    for path in write_reports(data["meta"], data["records"], out, tag,
                              latest=a.latest,
                              date=stem[:10] if stem[:4].isdigit() else None):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
