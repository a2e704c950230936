"""The tour scripts run, and the outline map in tour/README.md is complete.

Tour scripts run as subprocesses in temporary working directories, with
TOUR_OUTPUT_DIR pointing there, so nothing is written into the project. They are started
together on a small thread pool (each one is mostly Python import time) and every test
waits for its own run. Nothing here touches the network.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOUR = ROOT / "tour"
SCRIPTS = sorted(p.name for p in TOUR.glob("[0-9][0-9]_*.py"))
TOUR_README = TOUR / "README.md"
SECTION_TITLE = "The outline in practice"
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


def test_tour_has_all_chapters():
    assert len(SCRIPTS) >= 12, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_tour_script_runs(script, background_runs):
    result, workdir = background_runs[script].result()
    output = f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-5000:]}"
    assert result.returncode == 0, f"{script} exited with {result.returncode}\n{output}"
    assert result.stdout.strip(), f"{script} printed nothing"
    # Files may only go to TOUR_OUTPUT_DIR (or a temporary folder), never into the cwd.
    stray = sorted(p.name for p in workdir.iterdir() if p.name != "output")
    assert not stray, f"{script} wrote into its working directory: {stray}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_tour_script_is_a_cell_notebook(script):
    source = (TOUR / script).read_text(encoding="utf-8")
    tree = ast.parse(source)
    assert ast.get_docstring(tree), f"{script} needs a module docstring"
    assert source.count("# %%") >= 3, f"{script} should be split into # %% cells"


# ---------------------------------------------------------------------------------------
# The outline map: every outline heading has a row in the table of tour/README.md, and every
# row points to an existing file (relative to tour/) and to a cell title or function name inside it.


def outline_headings() -> list[str]:
    headings, in_fence = [], False
    for line in (TOUR / "outline.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        match = re.match(r"^#{1,6}\s+(.*)$", line)
        if match and not in_fence:
            headings.append(re.sub(r"(\s+#\S+)+\s*$", "", match.group(1)).strip())
    return headings


def table_source() -> Path:
    return TOUR_README


def table_rows(path: Path) -> list[tuple[str, str, str]]:
    """(heading, link target, name) for each row of the section's table."""
    rows, level = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^(#+)\s+(.*?)\s*$", line)
        if heading:
            if heading.group(2) == SECTION_TITLE:
                level = len(heading.group(1))
            elif level is not None and len(heading.group(1)) <= level:
                break
            continue
        if level is None or not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or set(cells[0]) <= set("-: ") or cells[0] == "Outline heading":
            continue
        link = re.search(r"\]\(([^)]+)\)", cells[1])
        name = re.search(r"`([^`]+)`", cells[2])
        rows.append((cells[0], link.group(1) if link else "", name.group(1) if name else ""))
    return rows


def names_in(path: Path) -> set[str]:
    """Cell titles, Markdown headings inside cells, and function/class names of a .py file."""
    text = path.read_text(encoding="utf-8")
    names = set()
    for line in text.splitlines():
        cell = re.match(r"^# %%(?:\s*\[markdown\])?\s*(.*?)\s*$", line)
        if cell and cell.group(1):
            names.add(cell.group(1))
        markdown_heading = re.match(r"^#\s+#{1,6}\s+(.*?)\s*$", line)
        if markdown_heading:
            names.add(markdown_heading.group(1))
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


def test_outline_map_covers_every_heading():
    headings = outline_headings()
    source = table_source()
    rows = table_rows(source)
    assert len(headings) >= 80, f"outline.md looks truncated: {len(headings)} headings"
    assert rows, f"no table found under '{SECTION_TITLE}' in {source}"

    mapped = {heading for heading, _, _ in rows}
    missing = [h for h in headings if h not in mapped]
    assert not missing, f"headings without a row in {source.relative_to(ROOT)}: {missing}"
    unknown = [h for h, _, _ in rows if h not in set(headings)]
    assert not unknown, f"rows in {source.relative_to(ROOT)} for headings not in the outline: {unknown}"

    problems = []
    for heading, target, name in rows:
        path = (source.parent / target).resolve()  # a link in tour/README.md is relative to tour/
        if not target or not path.is_file():
            problems.append(f"{heading!r}: file {target!r} does not exist")
        elif not name:
            problems.append(f"{heading!r}: no name in backticks")
        elif path.suffix == ".py":
            if name not in names_in(path):
                problems.append(f"{heading!r}: {name!r} is not a cell title or function in {target}")
        elif name not in path.read_text(encoding="utf-8"):
            problems.append(f"{heading!r}: {name!r} does not appear in {target}")
    assert not problems, "\n".join(problems)


def test_outline_map_rows_are_unique_and_in_outline_order():
    headings = outline_headings()
    mapped = [heading for heading, _, _ in table_rows(table_source()) if heading in set(headings)]
    duplicated = sorted({h for h in mapped if mapped.count(h) > 1})
    assert not duplicated, f"headings with more than one row in tour/README.md: {duplicated}"
    assert mapped == [h for h in headings if h in set(mapped)], "rows are not in the order of tour/outline.md"


def test_the_project_readme_points_at_the_tour():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](tour/README.md)" in readme, "README.md should link to tour/README.md"
    assert SECTION_TITLE not in readme, f"the outline map belongs in tour/README.md, not under '{SECTION_TITLE}'"
