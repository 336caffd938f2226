"""The tutorials in a real browser: JupyterLab on 127.0.0.1 (empty token), Debian's chromium
driven headless by Playwright (no browser download: its executable path), each notebook run
cell by cell as a person would. Every tutorial runs to its end without an error and leaves a
screenshot under tests/artifacts/ (``browser_<notebook>.png``; the quickstart also its chart,
paused and disconnected states; ``browser_<notebook>_failed.png`` when a test fails). The
directory is git-ignored: CI keeps it as the run's artifacts (``.ci/run`` lists it).

The quickstart is also used by hand, as issue 15 asks:

* the dashboard's grid holds a mirror of at least 100,000 rows that changes while the workload
  runs (read through the page's own ``<perspective-viewer>``);
* the chart's lag in seconds is a number while streaming;
* Pause, clicked while a cell is busy, takes effect within a second (a cell that sleeps is
  added to the served copy, after the dashboard);
* the widget messages stay within budget while it streams (websocket frames counted);
* after a kernel restart, the stale dashboard says it is disconnected.
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

from cdc_notebook.widgets.summary import HEARTBEAT, STALE_AFTER

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
QUICKSTART = NOTEBOOKS / "01_quickstart.ipynb"
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
BUSY_SECONDS = 8
BUSY_CELL = f"import time\ntime.sleep({BUSY_SECONDS})   # (added by the browser test)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _quickstart_with_a_busy_cell(target: Path) -> int:
    """The quickstart with a sleeping cell after the dashboard; returns its index."""
    book = nbformat.read(QUICKSTART, as_version=4)
    dash = next(i for i, c in enumerate(book.cells) if "explore(" in c.source)
    book.cells.insert(dash + 1, nbformat.v4.new_code_cell(BUSY_CELL))
    nbformat.write(book, target)
    return dash + 1


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """JupyterLab serving copies of the tutorials (autosave must not touch the repository)."""
    tmp_path = tmp_path_factory.mktemp("lab")
    root = tmp_path / "notebooks"
    root.mkdir()
    for notebook in sorted(NOTEBOOKS.glob("*.ipynb")):
        shutil.copy(notebook, root / notebook.name)
    _quickstart_with_a_busy_cell(root / QUICKSTART.name)
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


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


# The status bar's kernel item ("Python 3 (ipykernel) | Idle"): idle once the kernel has
# answered kernel_info on its websocket (before that: "No Kernel | Initializing", then
# "Connecting", "Unknown").
KERNEL_IDLE_JS = """() => [...document.querySelectorAll('.jp-StatusBar-TextItem')].some(e =>
    (e.title || '').startsWith('Change kernel') && !e.innerText.startsWith('No Kernel')
    && /\\|\\s*Idle$/.test(e.innerText.trim()))"""


def _open(browser: object, lab: str, name: str) -> Page:
    page: Page = browser.new_page(viewport={"width": 1400, "height": 1800})  # type: ignore[attr-defined]
    # a workspace of its own, reset: only this notebook in the page
    workspace = re.sub(r"\W", "", name.split(".")[0])
    page.goto(f"{lab}/lab/workspaces/{workspace}/tree/{name}?reset")
    page.wait_for_selector(".jp-Notebook", timeout=90_000)
    # The kernel ready, or a dialog asking which kernel (the tutorials name theirs). Not the
    # toolbar's execution indicator: it says idle before there is a kernel at all, and a cell
    # run then is not sent (its prompt stays empty and the next cells fail).
    page.wait_for_function(f"() => ({KERNEL_IDLE_JS})() || document.querySelector("
                           "'.jp-Dialog .jp-mod-accept')", timeout=90_000)
    if page.locator(".jp-Dialog button:has-text('Select')").count():
        page.click(".jp-Dialog button:has-text('Select')")
    page.wait_for_function(KERNEL_IDLE_JS, timeout=90_000)
    page.click(".jp-Notebook .jp-Cell >> nth=0")
    return page


ACTIVE_CELL_JS = """() => [...document.querySelectorAll('.jp-Notebook .jp-Cell')].findIndex(
    c => c.classList.contains('jp-mod-active'))"""
# the cell ``n`` moved on from (the active one is past it) and, a code cell, sent to the
# kernel: its prompt is [*] or [N], never left empty
RAN_JS = """n => {
    const cells = [...document.querySelectorAll('.jp-Notebook .jp-Cell')];
    if (cells.findIndex(c => c.classList.contains('jp-mod-active')) <= n) return false;
    const prompt = cells[n].classList.contains('jp-CodeCell')
        ? cells[n].querySelector('.jp-InputPrompt').innerText : '[*]';
    return /\\[(\\*|\\d+)\\]/.test(prompt);
}"""


def _run_cells(page: Page, count: int) -> None:
    """Shift+Enter ``count`` times from the active cell, each press seen to land before the
    next: the next cell active and, a code cell, this one queued in the kernel."""
    for _ in range(count):
        before = page.evaluate(ACTIVE_CELL_JS)
        page.keyboard.press("Shift+Enter")
        page.wait_for_function(RAN_JS, arg=before, timeout=15_000)


def _wait_ran(page: Page, cells: int, timeout: float) -> None:
    """Until the first ``cells`` code cells have run (an execution count each) and the kernel
    is idle."""
    page.wait_for_function(
        """n => {
            const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
                .slice(0, n).map(p => p.innerText.trim());
            const idle = document.querySelector(
                ".jp-Notebook-ExecutionIndicator[data-status='idle']");
            return prompts.length >= n && prompts.every(t => /\\[\\d+\\]/.test(t)) && idle;
        }""", arg=cells, timeout=timeout * 1000)


def _errors(page: Page) -> list[str]:
    return page.locator("[data-mime-type='application/vnd.jupyter.error']").all_inner_texts()


SCROLL_JS = """([selector, last]) => {
    const found = document.querySelectorAll(selector);
    const element = found[last ? found.length - 1 : 0];
    if (!element) return false;
    element.scrollIntoView({block: 'start'});
    const box = element.getBoundingClientRect();
    return box.height > 0 && box.top >= 0 && box.top < window.innerHeight;
}"""


def _into_view(page: Page, selector: str, *, last: bool = False) -> None:
    """Scroll the notebook until ``selector`` (a CSS selector; its last match with ``last``)
    is in the viewport: JupyterLab scrolls inside its panel, so a screenshot shows the
    viewport, not the page.

    Found, scrolled to and measured in one step inside the page: the dashboard's outputs are
    HTML written again at every status update (a new ``.cdc-summary``, a new chart), so an
    element handle taken first is detached by the time Playwright scrolls to it."""
    page.wait_for_function(SCROLL_JS, arg=[selector, last], timeout=30_000)


def _text(page: Page) -> str:
    return page.inner_text(".jp-Notebook")


def _click_tab(page: Page, title: str) -> None:
    page.locator(".jupyter-widgets.widget-tab .lm-TabBar-tab", has_text=title).first.click()


# the stale summary's label shown (a CSS animation grows it after STALE_AFTER s unwritten)
DISCONNECTED_JS = """() => [...document.querySelectorAll('.cdc-disconnected')].some(
    e => parseFloat(getComputedStyle(e).fontSize) > 0)"""
GRID_SIZE_JS = """async () => {
    const viewer = document.querySelector('perspective-viewer');
    if (!viewer) return -1;
    try {
        const table = await viewer.getTable();
        return await table.size();
    } catch (e) { return -2; }
}"""
GRID_ROWS_JS = """async () => {
    const viewer = document.querySelector('perspective-viewer');
    const view = await viewer.getView();
    return JSON.stringify(await view.to_columns({start_row: 0, end_row: 5}));
}"""


def test_quickstart_grid_chart_controls_and_a_restart(lab: str, browser: object) -> None:
    book = nbformat.read(QUICKSTART, as_version=4)
    dash = next(i for i, c in enumerate(book.cells) if "explore(" in c.source)
    busy = dash + 1  # the cell the fixture added
    checks = next(i for i, c in enumerate(book.cells)
                  if c.cell_type == "markdown" and c.source.startswith("## Checks")) + 1
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "browser_01_quickstart_failed.png").unlink(missing_ok=True)  # an old run's
    page = _open(browser, lab, QUICKSTART.name)
    frames: list[float] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda _f: frames.append(
        time.monotonic())))
    try:
        _run_cells(page, dash + 1)
        page.wait_for_selector(".cdc-summary", timeout=120_000)
        # The grid: a mirror of at least 100,000 rows that changes while the workload runs.
        page.wait_for_selector("perspective-viewer", timeout=60_000)
        size, deadline = 0, time.monotonic() + 90
        while time.monotonic() < deadline:
            size = page.evaluate(GRID_SIZE_JS)
            if size >= 100_000:
                break
            page.wait_for_timeout(1000)
        assert size >= 100_000, size
        first = later = (size, page.evaluate(GRID_ROWS_JS))
        deadline = time.monotonic() + 15
        while later == first and time.monotonic() < deadline:
            page.wait_for_timeout(500)
            later = (page.evaluate(GRID_SIZE_JS), page.evaluate(GRID_ROWS_JS))
        assert later != first, "the grid did not change while the workload ran"
        _into_view(page, ".cdc-summary")
        page.screenshot(path=str(ARTIFACTS / "browser_01_quickstart.png"), full_page=True)
        # The widget messages stay within budget while it streams.
        window = [t for t in frames if t >= time.monotonic() - 5]
        assert len(window) / 5 < 100, f"{len(window) / 5:.0f} websocket frames/s"
        # The chart's lag in seconds is a number while streaming.
        _click_tab(page, "Status")
        page.wait_for_selector("svg.cdc-chart", timeout=30_000)
        lag = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not lag:
            lag = page.get_attribute("svg.cdc-chart", "data-lag-seconds") or ""
            page.wait_for_timeout(500)
        assert re.fullmatch(r"[0-9.e+-]+", lag), f"lag in seconds: {lag!r}"
        float(lag)
        _into_view(page, "svg.cdc-chart")
        status_text = page.inner_text(".cdc-status")
        assert "lag (time)" in status_text and "n/a" not in status_text.split(
            "lag (time)")[1].split("\n")[0], status_text
        page.screenshot(path=str(ARTIFACTS / "browser_01_quickstart_chart.png"))
        # Pause while a cell is busy: the reader is paused within a second.
        _click_tab(page, "Reader")
        page.click(f".jp-Notebook .jp-Cell >> nth={busy}")
        page.keyboard.press("Shift+Enter")  # the busy cell runs...
        page.wait_for_function(
            "n => document.querySelectorAll('.jp-Notebook .jp-Cell')[n]"
            "?.querySelector('.jp-InputPrompt')?.innerText.includes('[*]')",
            arg=busy, timeout=30_000)
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='busy']",
                               timeout=30_000)
        state = page.locator(".jupyter-widgets .widget-html-content",
                             has_text="reader:").first
        assert "running" in state.inner_text()
        clicked = time.monotonic()
        page.locator("button.cdc-control", has_text="Pause").first.click()
        page.wait_for_function(
            "() => [...document.querySelectorAll('.widget-html-content')].some("
            "e => e.innerText.startsWith('reader: paused'))", timeout=BUSY_SECONDS * 1000)
        took = time.monotonic() - clicked
        busy_still = page.locator(".jp-Notebook-ExecutionIndicator[data-status='busy']").count()
        assert took < 1.0, f"Pause took effect after {took:.2f} s"
        assert busy_still, "the cell was not busy any more: the check proves nothing"
        page.screenshot(path=str(ARTIFACTS / "browser_01_quickstart_paused.png"))
        page.locator("button.cdc-control", has_text="Resume").first.click()
        page.wait_for_function(
            "() => [...document.querySelectorAll('.widget-html-content')].some("
            "e => e.innerText.startsWith('reader: running'))", timeout=BUSY_SECONDS * 2000)
        # The rest up to and through the checks against SQL (and the chart as a figure).
        page.click(f".jp-Notebook .jp-Cell >> nth={busy + 1}")  # (the buttons took the focus)
        _run_cells(page, checks + 2 - busy)
        _wait_ran(page, len([c for c in book.cells[:checks + 2]
                             if c.cell_type == "code"]) + 1, timeout=300)
        assert "the live frames equal the tables" in _text(page)
        assert not _errors(page), _errors(page)
        # A kernel restart: the stale dashboard says so (nothing writes it any more). While
        # the kernel lives it does not: the dashboard has been up far longer than STALE_AFTER
        # (the checks waited for the workload), and the pump writes it every HEARTBEAT s.
        assert not page.evaluate(DISCONNECTED_JS), "disconnected while the kernel runs"
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Kernel$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Restart Kernel")).first.click()
        page.locator(".jp-Dialog-footer button", has_text=re.compile(r"^Restart$")).first.click()
        page.wait_for_function(DISCONNECTED_JS, timeout=1000 * (STALE_AFTER + HEARTBEAT + 10))
        _into_view(page, ".cdc-live")  # the label above the dimmed summary
        page.screenshot(path=str(ARTIFACTS / "browser_01_quickstart_disconnected.png"))
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "browser_01_quickstart_failed.png"))
        raise
    finally:
        page.close()
    assert (ARTIFACTS / "browser_01_quickstart.png").stat().st_size > 10_000


TUTORIALS = ["02_patterns_and_partitioning.ipynb", "03_setup_teardown_and_slot_lag.ipynb",
             "04_snapshot_and_mirror_consistency.ipynb",
             "05_pgoutput_without_the_plugin.ipynb"]


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_runs_in_the_browser(lab: str, browser: object, name: str) -> None:
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [i for i, c in enumerate(book.cells) if c.cell_type == "code"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"browser_{name.split('.')[0]}_failed.png").unlink(missing_ok=True)
    page = _open(browser, lab, name)
    try:
        if name.startswith("02"):
            # the Tables widget follows typing (before the last cells close its connection)
            widget_cell = next(i for i in code if "PatternsWidget(" in book.cells[i].source)
            _run_cells(page, widget_cell + 1)
            _wait_ran(page, code.index(widget_cell) + 1, timeout=120)
            include = page.locator(".jupyter-widgets input[type='text']").first
            include.fill("sales.order*")
            page.wait_for_function(
                "() => document.querySelector('.jp-Notebook').innerText.match("
                "/2 table\\(s\\) match/)", timeout=30_000)
            include.fill("sales.*")
            page.wait_for_function(
                "() => document.querySelector('.jp-Notebook').innerText.match("
                "/3 table\\(s\\) match/)", timeout=30_000)
            # its screenshot now: the cells below close the widget (its view goes away)
            _into_view(page, ".jp-Cell:has(.jupyter-widgets input[type='text'])")
            page.screenshot(path=str(ARTIFACTS / f"browser_{name.split('.')[0]}.png"),
                            full_page=True)
            page.click(f".jp-Notebook .jp-Cell >> nth={widget_cell + 1}")
            _run_cells(page, len(book.cells) - widget_cell - 1)
        else:
            _run_cells(page, len(book.cells))
        _wait_ran(page, len(code), timeout=420)
        if name.startswith("03"):
            page.wait_for_selector("svg.cdc-chart polyline", timeout=30_000)
            assert page.get_attribute("svg.cdc-chart", "data-lag-bytes")
            _into_view(page, "svg.cdc-chart")
        if name.startswith("04"):
            assert "✓ snapshot of" in _text(page)  # the snapshot's progress bars
            assert page.locator(".jupyter-widgets .widget-hprogress, "
                                ".jupyter-widgets progress").count() >= 1
            _into_view(page, ".jupyter-widgets .widget-hprogress", last=True)
        if not name.startswith("02"):
            page.screenshot(path=str(ARTIFACTS / f"browser_{name.split('.')[0]}.png"),
                            full_page=True)
        assert not _errors(page), _errors(page)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / f"browser_{name.split('.')[0]}_failed.png"))
        raise
    finally:
        page.close()
