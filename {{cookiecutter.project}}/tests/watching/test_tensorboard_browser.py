"""TensorBoard shows both engines' runs, checked in a real browser.

Each engine trains for a few batches; TensorBoard serves the logs on 127.0.0.1; headless Chromium loads its
Time Series dashboard filtered to train/loss and prints the rendered page (--dump-dom). The train/loss card
must list the raw and the lightning run, each at its last step with the loss its metrics.json reports.
Skipped where no Chromium is installed (Debian/Ubuntu: `apt-get install chromium`).

Time Series, not the older #scalars page: #scalars is a Polymer app that keeps its content in shadow roots,
which --dump-dom leaves out (the dump holds an empty <tf-scalar-dashboard>). Time Series, TensorBoard's
default page, renders into the ordinary DOM, so the dump holds what a user sees.
"""

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import run_dirs

ENGINES = ("raw", "lightning")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM = next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)
TAG = "train/loss"
SERVER_TIMEOUT_S = 60  # TensorBoard's start and first read of the event files
RENDER_ATTEMPTS = 4  # a page dumped before the data arrived is loaded again, with a longer budget each time
# Chromium's virtual clock for the page's timers (network waits pause it): 5 s, then 3 times more per attempt, as
# a busy machine once left the first three 5 s loads with an empty table.
VIRTUAL_TIME_BUDGET_MS = 5_000

requires_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason=f"needs Chromium: none of {', '.join(CHROMIUM_NAMES)} is on PATH"
)
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="stops its servers by POSIX process group")


def stop_process_group(process: subprocess.Popen) -> None:
    """Stop a process started with start_new_session=True and everything it started (TensorBoard's data
    server, Chromium's renderers), so that no test leaves a process behind."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return  # the whole group is gone
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def trained(short_runs) -> tuple[Path, dict[str, dict]]:
    """A short run of each engine (conftest.short_runs); returns the log folder and each run's metrics.json."""
    log_dir, results = short_runs
    for engine, result in results.items():
        assert result.returncode == 0, f"engine={engine}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return log_dir, {
        engine: json.loads((run_dirs(log_dir, engine)[-1] / "metrics.json").read_text()) for engine in ENGINES
    }


def run_name(log_dir: Path, metrics: dict) -> str:
    """TensorBoard's name for a run: the folder of its event files, relative to --logdir."""
    return (Path(metrics["run_dir"]) / "tensorboard").relative_to(log_dir).as_posix()


@pytest.fixture(scope="module")
def tensorboard_url(trained, tmp_path_factory):
    """`tensorboard --logdir <logs> --host 127.0.0.1 --port <free>`, once it serves train/loss of every run."""
    log_dir, metrics = trained
    runs = {run_name(log_dir, m) for m in metrics.values()}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    output = tmp_path_factory.mktemp("tensorboard") / "output.log"
    with output.open("w") as sink:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tensorboard.main",
                "--logdir",
                str(log_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT_S
        served: dict = {}
        while not all(TAG in served.get(run, {}) for run in runs):
            assert server.poll() is None, f"TensorBoard exited with {server.returncode}:\n{output.read_text()}"
            assert time.monotonic() < deadline, (
                f"TensorBoard did not serve {TAG} of {sorted(runs)} within "
                f"{SERVER_TIMEOUT_S} s; it serves {served}\n{output.read_text()}"
            )
            time.sleep(0.5)
            try:
                with urllib.request.urlopen(f"{url}/data/plugin/scalars/tags", timeout=5) as response:
                    served = json.load(response)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                served = {}  # not listening yet
        yield url
    finally:
        stop_process_group(server)


class ScalarCards(HTMLParser):
    """The scalar cards of a dumped Time Series page: {tag: (column names, rows of cell texts)}."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: dict[str, tuple[list[str], list[list[str]]]] = {}
        self._card: tuple[list[str], list[list[str]]] | None = None
        self._title: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "scalar-card-component":
            self._card, self._title = ([], []), None
        elif self._card is None:
            return
        elif tag == "tb-truncated-path" and self._title is None:  # the card's heading: the tag's name
            self._title = dict(attrs).get("title")
        elif tag == "tb-data-table-header-cell":
            self._cell = []
            self._card[0].append(self._cell)
        elif tag == "tb-data-table-content-row":
            self._card[1].append([])
        elif tag == "tb-data-table-content-cell" and self._card[1]:
            self._cell = []
            self._card[1][-1].append(self._cell)

    def handle_endtag(self, tag: str) -> None:
        if tag == "scalar-card-component" and self._card is not None:
            header, rows = self._card
            self.cards[self._title or "?"] = (
                [text(cell) for cell in header],
                [[text(cell) for cell in row] for row in rows],
            )
            self._card = None
        elif tag in ("tb-data-table-header-cell", "tb-data-table-content-cell"):
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def text(parts: list[str]) -> str:
    return " ".join("".join(parts).split())


def render(url: str, profile: Path, budget_ms: int) -> tuple[str, str]:
    """The page's DOM after Chromium ran its scripts for `budget_ms` of virtual time, and Chromium's log."""
    browser = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            f"--user-data-dir={profile}",
            "--window-size=1280,1000",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        return browser.communicate(timeout=90 + 2 * budget_ms / 1000)
    finally:
        stop_process_group(browser)


def loss_rows(dom: str) -> dict[str, dict[str, str]]:
    """The train/loss card's data table: {run name: {column name: cell text}}; empty when not rendered."""
    cards = ScalarCards()
    cards.feed(dom)
    header, rows = cards.cards.get(TAG, ([], []))
    if "Run" not in header:
        return {}
    return {row[header.index("Run")]: dict(zip(header, row, strict=True)) for row in rows if len(row) == len(header)}


@pytest.mark.slow
@requires_chromium
@posix_only
def test_tensorboard_shows_both_engines_in_a_browser(trained, tensorboard_url, tmp_path):
    log_dir, metrics = trained
    runs = {engine: run_name(log_dir, m) for engine, m in metrics.items()}
    # tagFilter is a regular expression: only the train/loss card, so it renders in the first screen.
    page = f"{tensorboard_url}/?tagFilter=%5Etrain%2Floss%24#timeseries"
    for attempt in range(RENDER_ATTEMPTS):
        dom, log = render(page, tmp_path / f"chromium-profile-{attempt}", VIRTUAL_TIME_BUDGET_MS * 3**attempt)
        rows = loss_rows(dom)
        if all(run in rows for run in runs.values()):
            break
    cards = ScalarCards()
    cards.feed(dom)
    (tmp_path / "page.html").write_text(dom)
    assert all(run in rows for run in runs.values()), (
        f"after {RENDER_ATTEMPTS} loads, the {TAG} card lists runs {sorted(rows)}, not {sorted(runs.values())}; "
        f"cards on the page: {sorted(cards.cards)}; the page is in {tmp_path / 'page.html'}\n"
        f"Chromium:\n{log[-2000:]}"
    )

    for engine, run in runs.items():
        shown = rows[run]
        expected_loss, last_step = metrics[engine]["train/loss"], metrics[engine]["global_step"] - 1
        assert int(shown["Step"].replace(",", "")) == last_step, (engine, shown)
        assert math.isclose(float(shown["Value"]), expected_loss, rel_tol=1e-3, abs_tol=1e-4), (engine, shown)
    # The same training: the browser shows the same final loss for both engines (to its displayed digits).
    shown_losses = [float(rows[run]["Value"]) for run in runs.values()]
    assert math.isclose(*shown_losses, abs_tol=1.5e-4), shown_losses


def test_the_parser_reads_a_scalar_card():
    """The page structure the test above relies on, on a trimmed copy of a real TensorBoard 2.21 card."""
    dom = (
        '<scalar-card-component><tb-truncated-path class="tag" title="train/loss"><span>train</span>'
        "<span>/loss</span></tb-truncated-path><scalar-card-data-table><tb-data-table>"
        "<tb-data-table-header-cell><div>  </div></tb-data-table-header-cell>"
        "<tb-data-table-header-cell><span>Run</span><mat-icon></mat-icon></tb-data-table-header-cell>"
        "<tb-data-table-header-cell>Value</tb-data-table-header-cell>"
        "<tb-data-table-header-cell>Step</tb-data-table-header-cell>"
        "<tb-data-table-content-row><tb-data-table-content-cell><div> </div></tb-data-table-content-cell>"
        "<tb-data-table-content-cell><div> train/raw/x/tensorboard </div></tb-data-table-content-cell>"
        "<tb-data-table-content-cell>2.0105</tb-data-table-content-cell>"
        "<tb-data-table-content-cell>1,205</tb-data-table-content-cell></tb-data-table-content-row>"
        "</tb-data-table></scalar-card-data-table></scalar-card-component>"
    )
    assert loss_rows(dom) == {
        "train/raw/x/tensorboard": {"": "", "Run": "train/raw/x/tensorboard", "Value": "2.0105", "Step": "1,205"}
    }
    assert loss_rows(dom.replace('title="train/loss"', 'title="val/loss"')) == {}
