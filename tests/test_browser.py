"""The quickstart in a real browser: JupyterLab on 127.0.0.1 (empty token), Debian's chromium
driven headless by Playwright (no browser download: its executable path), the notebook run
cell by cell as a person would. The page's text must show a non-zero throughput and a live
table with rows; a screenshot is kept under tests/artifacts/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import Page, sync_playwright

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "notebooks" / "01_quickstart.ipynb"
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[str]:
    """JupyterLab serving a copy of the quickstart (autosave must not touch the repository)."""
    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(QUICKSTART, root / QUICKSTART.name)
    port = _free_port()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_DATA_DIR": str(tmp_path / "data"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    env.pop("JUPYTER_PATH", None)
    # Every cell stays in the page (JupyterLab 4 otherwise renders only the visible ones, and
    # the checks read the page's text), and no news pop-up.
    settings = tmp_path / "settings"
    env["JUPYTERLAB_SETTINGS_DIR"] = str(settings)
    for name, values in {
            "@jupyterlab/notebook-extension/tracker.jupyterlab-settings":
                {"windowingMode": "none"},
            "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
                {"fetchNews": "false", "checkForUpdates": False}}.items():
        target = settings / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values))
    with open(tmp_path / "lab.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1",
             f"--port={port}", "--IdentityProvider.token=", "--ServerApp.password=",
             f"--ServerApp.root_dir={root}", "--LabApp.news_url=",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             "--LabApp.extension_manager=readonly",
             *(["--allow-root"] if os.geteuid() == 0 else [])],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(root))
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None, (tmp_path / "lab.log").read_text()
                assert time.monotonic() < deadline, "JupyterLab did not start"
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run_cells(page: Page, count: int) -> None:
    for _ in range(count):
        page.keyboard.press("Shift+Enter")
        page.wait_for_timeout(150)


def _text(page: Page) -> str:
    return page.inner_text(".jp-Notebook")


def test_quickstart_in_chromium_shows_throughput_and_a_live_table(lab: str) -> None:
    book = nbformat.read(QUICKSTART, as_version=4)
    titles = [i for i, c in enumerate(book.cells)
              if c.cell_type == "markdown" and c.source.startswith("## Checks")]
    assert titles, "the quickstart has a checks section"
    before_checks = titles[0]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "browser_quickstart.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(f"{lab}/lab/tree/{QUICKSTART.name}")
            page.wait_for_selector(".jp-Notebook", timeout=90_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                                   timeout=90_000)
            page.click(".jp-Notebook .jp-Cell >> nth=0")
            _run_cells(page, before_checks)
            # The dashboard renders, then the pump fills in the summary and the live table.
            page.wait_for_selector(".cdc-summary", timeout=120_000)
            throughput = rows = 0
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                text = _text(page)
                rates = [int(m.replace(",", "")) for m in
                         re.findall(r"(\d[\d,]*) events/s", text)]
                tables = [int(m.replace(",", "")) for m in
                          re.findall(r"shop\.orders: (\d[\d,]*) rows \(mirror\)", text)]
                throughput = max(rates, default=0)
                rows = max(tables, default=0)
                if throughput > 0 and rows > 0 and page.locator(".cdc-summary").count():
                    break
                page.wait_for_timeout(500)
            # The summary is re-rendered at every refresh: scroll to whichever is there now.
            page.evaluate("() => document.querySelector('.cdc-summary')"
                          "?.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(500)
            page.screenshot(path=str(shot), full_page=True)
            assert throughput > 0, text[-3000:]
            assert rows > 0, text[-3000:]
            # The live table itself: an HTML table with rows of the orders.
            assert page.locator(".jp-Notebook table tbody tr").count() > 0
            # The rest of the notebook: the checks against SQL, then the clean-up.
            _run_cells(page, len(book.cells) - before_checks)
            try:
                page.wait_for_function(
                    "() => document.querySelector('.jp-Notebook').innerText.includes("
                    "'the live frames equal the tables') && document.querySelector("
                    "'.jp-Notebook').innerText.match(/^stopped$/m)", timeout=240_000)
            finally:
                page.screenshot(path=str(ARTIFACTS / "browser_quickstart_end.png"))
            outputs = "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts())
            assert "Traceback" not in outputs, outputs[-3000:]
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
