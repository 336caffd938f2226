"""Results as a table (console and ``docs/reliability.md``)."""

from __future__ import annotations

import datetime
import os
import platform
import re
from collections.abc import Sequence
from pathlib import Path

from tests.faults.harness import FAULTS, Result

HEADER = ("| fault | plugin | PG | written | delivered | lost | duplicated | out of order "
          "| reconnects | recovery s | run s | outcome |")
RULE = "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"


def _outcome(r: Result) -> str:
    if r.ok:
        if FAULTS[r.fault].expect == "invalidated":
            return "ok: clear error (wal_status = lost, max_slot_wal_keep_size, fix)"
        return "ok"
    first = r.problems[0] if r.problems else "failed"
    first = first.replace("|", "\\|").replace("\n", " ")
    if len(first) > 160:
        first = first[:157] + "..."
    return f"**FAILED**: {first}"


def row(r: Result) -> str:
    c = r.comparison
    cells = [r.fault, r.plugin, r.pg]
    if c is None:
        cells += ["–"] * 5
    else:
        lost = f"{c.lost:,}"
        if FAULTS[r.fault].expect == "invalidated":
            lost += f" (after the error; {c.lost_before_end} before)"
        cells += [f"{c.written:,}", f"{c.delivered:,}", lost, f"{c.duplicated:,}",
                  f"{c.out_of_order:,}"]
    cells += [str(r.reconnects), "–" if r.recovery_s is None else f"{r.recovery_s:.2f}",
              f"{r.elapsed_s:.0f}", _outcome(r)]
    return "| " + " | ".join(cells) + " |"


def table(results: Sequence[Result]) -> str:
    return "\n".join([HEADER, RULE, *(row(r) for r in results)])


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            kb = int(fh.readline().split()[1])
            mem = f", {kb / 2**20:.1f} GB"
    except (OSError, ValueError, IndexError):
        pass
    return (f"{os.cpu_count()} × {cpu}{mem}, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def section(results: Sequence[Result], command: str, pg: str, changes: int,
            elapsed_s: float) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    versions = sorted({r.pg for r in results})
    failed = [r for r in results if not r.ok]
    form = "full form" if changes >= 1_000_000 else "quick form"
    lines = [
        f"### PostgreSQL {pg}, {changes:,} changes per fault ({form})",
        "",
        f"`{command}` — {now}, {machine()}; PostgreSQL {', '.join(versions)}; "
        f"{elapsed_s / 60:.1f} minutes.",
        "",
        table(results),
        "",
    ]
    if failed:
        lines.append("Failures in detail:")
        lines.append("")
        lines.append("```")
        for r in failed:
            lines.append(r.explain())
        lines.append("```")
        lines.append("")
    return "\n".join(lines)


def update_doc(path: str | Path, key: str, body: str) -> None:
    """Replace the results section ``key`` (e.g. ``pg18-1000000``) in ``path`` (between its
    markers), or add it after the ``<!-- faults:results -->`` anchor."""
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    begin, end = f"<!-- faults:{key}:begin -->", f"<!-- faults:{key}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        anchor = "<!-- faults:results -->"
        if anchor in text:
            text = text.replace(anchor, f"{anchor}\n\n{block}", 1)
        else:
            text = text.rstrip() + f"\n\n{block}\n"
    path.write_text(text)
