"""The benchmark harness, end to end at tiny sizes (``python -m bench --quick``).

A smoke test so the harness cannot rot: it asserts that every registered consumer produced a
figure or a stated reason, and that the result files were written. Nothing about timings.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_quick_bench_reports_every_consumer(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (md,) = tmp_path.glob("*-quick.md")
    (raw,) = tmp_path.glob("*-quick.json")
    (png,) = tmp_path.glob("*-quick.png")
    assert png.stat().st_size > 0
    data = json.loads(raw.read_text())
    text = md.read_text()
    records = [r for r in data["records"] if r["consumer"] != "_workload"]
    for name in data["meta"]["consumers"]:
        mine = [r for r in records if r["consumer"] == name]
        assert mine, f"{name}: no row and no reason"
        for r in mine:
            if r["status"] == "ok":
                assert r["events"] > 0, r
            else:
                assert r["reason"].strip(), r
        assert f"`{name}`" in text or name in text, f"{name} missing from the Markdown table"
