"""The tour scripts run.

Tour scripts run as subprocesses in temporary working directories, with
TOUR_OUTPUT_DIR pointing there, so nothing is written into the project. They are started
together on a small thread pool (each one is mostly Python import time) and every test
waits for its own run. Nothing here touches the network.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOUR = ROOT / "tour"
SCRIPTS = sorted(p.name for p in TOUR.glob("[0-9][0-9]_*.py"))
SCRIPT_TIMEOUT_S = 180


def subprocess_env(output_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["TOUR_OUTPUT_DIR"] = str(output_dir)
    env["MPLBACKEND"] = "Agg"
    # Several scripts share the cores: one math thread each avoids oversubscription,
    # which makes small-tensor code dramatically slower.
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_python(args: list[str], workdir: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run ``python *args`` with ``workdir`` as cwd and ``workdir/output`` as TOUR_OUTPUT_DIR."""
    workdir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, *args],
        cwd=workdir,
        env=subprocess_env(workdir / "output"),
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
    )
    return result, workdir


@pytest.fixture(scope="module")
def background_runs(request, tmp_path_factory):
    """Start every selected tour script at once, on a small thread pool.

    Returns a mapping from a script name to the Future of (result, workdir); only what the selected
    tests need is started.
    """
    wanted = []
    for item in request.session.items:
        name = getattr(item, "originalname", None)
        if name == "test_tour_script_runs" and hasattr(item, "callspec"):
            script = item.callspec.params["script"]
            wanted.append((script, [str(TOUR / script)]))
    workers = int(os.environ.get("TOUR_TEST_WORKERS", min(4, os.cpu_count() or 1)))
    base = tmp_path_factory.mktemp("runs")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures: dict[str, Future] = {key: pool.submit(run_python, args, base / Path(key).stem) for key, args in wanted}
        yield futures
        for future in futures.values():
            future.cancel()


@pytest.mark.parametrize("script", SCRIPTS)
def test_tour_script_runs(script, background_runs):
    result, workdir = background_runs[script].result()
    output = f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-5000:]}"
    assert result.returncode == 0, f"{script} exited with {result.returncode}\n{output}"
    assert result.stdout.strip(), f"{script} printed nothing"
    # Files may only go to TOUR_OUTPUT_DIR (or a temporary folder), never into the cwd.
    stray = sorted(p.name for p in workdir.iterdir() if p.name != "output")
    assert not stray, f"{script} wrote into its working directory: {stray}"
