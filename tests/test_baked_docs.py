"""The template's own documentation and style, checked on the default bake.

The generated project's tests check what its code does; these check how the template writes it: the engines'
section markers and sizes (what COMPARISON.md promises about the shape of the code), the links of its documents,
the recipes' headers, the tour's map of the outline, and that nothing in a bake talks about the machine the
template was written on. They live here, and not in the generated suite, so that a user who lengthens `fit` or
rewords a comment breaks none of their own tests (the last test here proves it).
"""

import ast
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest
from conftest import TEMPLATE

PACKAGE = "pytorch_intro"  # the default bake's import name
SCRIPT = TEMPLATE / "scripts" / "check_doc_links.py"
_spec = importlib.util.spec_from_file_location("check_doc_links", SCRIPT)
check_doc_links = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_doc_links)


def engine_files(project: Path) -> dict[str, Path]:
    return {engine: project / "src" / PACKAGE / "engines" / f"{engine}.py" for engine in ("raw", "lightning")}


# -- the engines, side by side ---------------------------------------------------------------------------------------

MARKER = re.compile(r"^\s*# -- (?P<name>[^-].*?) --\s*$")
# The order the engines follow (DESIGN): the run, then the concerns in the order a step meets them.
SECTIONS = ["fit", "device", "precision", "data", "loop", "step", "accumulation", "clipping", "scheduler",
            "validation", "non-finite loss", "checkpoints", "logging", "signals", "DDP"]
FIT_MAX_LINES = 60  # one screen
# Lines of code (not blank, comment or docstring) in ruff format's layout: the idiomatic core (imports, fit, the
# Trainer's arguments, the LightningModule, the DataModule) with the parity callbacks kept short.
LIGHTNING_MAX_CODE_LINES = 120
BASIC_STEPS = ("1. forward", "2. loss", "3. backward", "4. step", "5. zero the gradients")
OPTIMIZER_STEP_MAX_LINES = 25


def section_markers(text: str) -> list[str]:
    return [m["name"] for line in text.splitlines() if (m := MARKER.match(line))]


def function_lines(path: Path, name: str) -> int:
    [node] = [n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef) and n.name == name]
    return node.end_lineno - node.lineno + 1


def code_lines(path: Path) -> int:
    """Lines that hold code: not blank, not only a comment, not part of a docstring (as the generated
    workflows/comparison.py counts them for compare.py's report)."""
    source = path.read_text()
    docstring_lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                docstring_lines.update(range(first.lineno, first.end_lineno + 1))
    skipped = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skipped:
            lines.update(range(token.start[0], token.end[0] + 1))
    return len(lines - docstring_lines)


def basic_steps_missing(raw: Path) -> list[str]:
    """The five basic steps' comments that optimizer_step does not carry, and whether it is too long."""
    source = raw.read_text()
    [step] = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "optimizer_step"]
    body = ast.get_source_segment(source, step)
    missing = [basic_step for basic_step in BASIC_STEPS if basic_step not in body]
    if step.end_lineno - step.lineno + 1 > OPTIMIZER_STEP_MAX_LINES:
        missing.append(f"optimizer_step within {OPTIMIZER_STEP_MAX_LINES} lines")
    return missing


def test_both_engines_carry_the_same_section_markers_in_the_same_order(default_bake):
    for engine, path in engine_files(default_bake).items():
        assert section_markers(path.read_text()) == SECTIONS, engine


def test_the_marker_check_sees_a_difference_in_names_and_in_order():
    raw = "# -- fit --\ndef fit(): ...\n# -- device --\n    # -- loop --\n"
    assert section_markers(raw) == ["fit", "device", "loop"]
    assert section_markers(raw.replace("device", "devices")) != section_markers(raw)
    assert section_markers("# -- device --\n# -- fit --\n") != ["fit", "device"]
    assert section_markers("# ----------\n# -- not a marker --  # trailing\n") == []


def test_the_raw_fit_fits_on_one_screen(default_bake):
    assert function_lines(engine_files(default_bake)["raw"], "fit") <= FIT_MAX_LINES


def test_the_lightning_engine_stays_short(default_bake):
    assert code_lines(engine_files(default_bake)["lightning"]) <= LIGHTNING_MAX_CODE_LINES


def test_code_lines_skip_blanks_comments_and_docstrings(tmp_path):
    source = tmp_path / "engine.py"
    source.write_text('"""Module\n\ndocstring."""\n\n# a comment\nimport os  # counted\n\n\n'
                      'def f(x):\n    """One line."""\n    text = """not a\n    docstring"""\n    return (x,\n'
                      "            text)\n")
    assert code_lines(source) == 6  # import, def, text = (2 lines), return (2 lines)


def test_the_five_basic_steps_stand_together_in_one_short_function(default_bake):
    assert basic_steps_missing(engine_files(default_bake)["raw"]) == []


def test_the_loss_the_metric_and_the_optimizer_are_written_once(default_bake):
    """Neither engine computes the loss, the accuracy or builds the optimizer itself: both call core/task.py (raw
    counts correct predictions with task.count_correct, Lightning logs task.accuracy's torchmetrics Metric)."""
    own_accuracy = {"raw": "task.count_correct(", "lightning": "task.accuracy("}
    for engine, path in engine_files(default_bake).items():
        source = path.read_text()
        for written_once in ("cross_entropy", "instantiate(", "MulticlassAccuracy(", "argmax("):
            assert written_once not in source, f"engines/{engine}.py: {written_once}"
        for shared in ("task.training_step(", "task.evaluation_step(", "task.configure_optimizers(",
                       own_accuracy[engine]):
            assert shared in source, f"engines/{engine}.py does not call {shared}"


# -- the documents ---------------------------------------------------------------------------------------------------

DOCUMENTS = ("COMPARISON.md", "README.md", "benchmarks/README.md", "tour/README.md")
README_MAX_LINES = 300  # for users: method and figures live beside the code (tour/, benchmarks/)


def test_the_documents_checked_are_every_one_of_the_bake(default_bake):
    assert check_doc_links.documents(default_bake) == DOCUMENTS
    assert {p.relative_to(default_bake).as_posix() for p in default_bake.rglob("*.md")} - set(DOCUMENTS) == {
        "tour/outline.md"}  # the outline is the course's text, without links


@pytest.mark.parametrize("document", DOCUMENTS)
def test_links_point_at_existing_files_and_lines(default_bake, document):
    problems = check_doc_links.check_document(default_bake, document)
    if problems:
        pytest.fail(check_doc_links.report(problems), pytrace=False)


def test_comparison_links_to_lines_of_both_engines(default_bake):
    text = (default_bake / "COMPARISON.md").read_text(encoding="utf-8")
    for engine in ("raw", "lightning"):
        assert re.search(rf"\]\(src/[^)]*/engines/{engine}\.py#L\d+\)", text), f"no link to a line of {engine}.py"


def test_the_generated_readme_stays_short(default_bake):
    assert len((default_bake / "README.md").read_text().splitlines()) <= README_MAX_LINES
    assert len((TEMPLATE / "{{cookiecutter.project}}" / "README.md").read_text().splitlines()) <= README_MAX_LINES


# The keys of benchmarks/engine_overhead.py's --json document (tests/test_benchmark.py holds the document to them)
# and the keys inside it, each named in the script's docstring.
BENCHMARK_JSON_KEYS = ("environment", "arguments", "order", "load_average", "runs", "figures", "targets", "differences",
                       "imports", "time_to_accuracy", "test_accuracy", "per_repeat", "median", "min", "max", "unit",
                       "limit", "met", "ms_per_step", "per_trainer", "per_epoch", "same_training", "wall_s", "cpu_s")


def test_the_benchmark_docstring_names_every_key_of_its_json(default_bake):
    script = default_bake / "benchmarks" / "engine_overhead.py"
    docstring = " ".join(ast.get_docstring(ast.parse(script.read_text())).split())
    assert [key for key in BENCHMARK_JSON_KEYS if key not in docstring] == []


# -- the recipes -----------------------------------------------------------------------------------------------------

RECIPES = ("cifar10", "digits", "fashion_mnist", "mnist")


def recipe_header(text: str) -> str:
    """The comment lines above a recipe's first key, without `# @package`, joined into one text."""
    lines = []
    for line in text.splitlines()[1:]:
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def expectation_problems(name: str, header: str) -> list[str]:
    """Why a recipe's header does not say once what accuracy to expect and where that figure comes from: one
    sentence "Expect [about] N % test accuracy ..." that says "measured" with the recipe's command, or cites a
    published result with its https:// address."""
    problems = []
    sentences = [m for m in re.finditer(r"Expect (?:about )?\d+(?:\.\d+)? % test accuracy", header)]
    if len(sentences) != 1:
        return [f"{len(sentences)} sentences 'Expect [about] N % test accuracy ...' (one is wanted)"]
    percents = re.findall(r"\d %", header)
    if len(percents) != 1 or header.count("accuracy") != 1:
        problems.append("an accuracy figure stated more than once")
    sentence = header[sentences[0].start():]
    sentence = sentence[: re.search(r"(?<!\b[A-Z])\.(?:\s|$)", sentence + " ").end()]  # not at an initial (D. Page)
    measured = "measured" in sentence and f"python train.py experiment={name}" in sentence
    published = re.search(r"https://\S+", sentence) is not None
    if not (measured or published):
        problems.append(f"no source: 'measured' with `python train.py experiment={name}`, or a https:// citation")
    for stale in ("not yet measured", "Target", "where this was written"):
        if stale in header:
            problems.append(f"stale phrase {stale!r}")
    return problems


def test_each_recipe_says_once_what_accuracy_to_expect_and_where_that_figure_comes_from(default_bake):
    folder = default_bake / "configs" / "experiment"
    assert sorted(p.stem for p in folder.glob("*.yaml")) == sorted(RECIPES)
    for name in RECIPES:
        text = (folder / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_\n"), name
        assert expectation_problems(name, recipe_header(text)) == [], name


@pytest.mark.parametrize(("header", "problem"), [
    ("a recipe. Expect 97 % test accuracy, measured with python train.py experiment=x (seed 1).", None),
    ("a recipe. Expect about 94 % test accuracy, the published result (D. Page, https://example.org/a.b).", None),
    ("a recipe. Expect about 94 % test accuracy, the published result. See https://example.org.", "no source"),
    ("a recipe. Expect 97 % test accuracy.", "no source"),
    ("a recipe. Expect 97 % test accuracy, measured with python train.py experiment=y.", "no source"),
    ("a recipe. Target: 97 % test accuracy; not yet measured.", "0 sentences"),
    ("Expect 97 % test accuracy (https://e.org). Expect 97 % test accuracy (https://e.org).", "2 sentences"),
    ("Expect 97 % test accuracy (https://e.org); test accuracy 97 % again.", "more than once"),
])
def test_the_recipe_header_rule(header, problem):
    problems = expectation_problems("x", header)
    assert problems == [] if problem is None else any(problem in p for p in problems), problems


# -- the tour's map of the outline -------------------------------------------------------------------------------------

SECTION_TITLE = "The outline in practice"


def outline_headings(tour: Path) -> list[str]:
    headings, in_fence = [], False
    for line in (tour / "outline.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        match = re.match(r"^#{1,6}\s+(.*)$", line)
        if match and not in_fence:
            headings.append(re.sub(r"(\s+#\S+)+\s*$", "", match.group(1)).strip())
    return headings


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


def test_the_tour_has_every_chapter_as_a_cell_notebook(default_bake):
    scripts = sorted((default_bake / "tour").glob("[0-9][0-9]_*.py"))
    assert len(scripts) >= 12, scripts
    for script in scripts:
        source = script.read_text(encoding="utf-8")
        assert ast.get_docstring(ast.parse(source)), f"{script.name} needs a module docstring"
        assert source.count("# %%") >= 3, f"{script.name} should be split into # %% cells"


def test_the_outline_map_covers_every_heading_once_in_outline_order(default_bake):
    tour = default_bake / "tour"
    headings, rows = outline_headings(tour), table_rows(tour / "README.md")
    assert len(headings) >= 80, f"outline.md looks truncated: {len(headings)} headings"
    assert rows, f"no table found under '{SECTION_TITLE}' in tour/README.md"
    mapped = [heading for heading, _, _ in rows]
    assert [h for h in headings if h not in mapped] == [], "headings without a row in tour/README.md"
    assert [h for h in mapped if h not in headings] == [], "rows in tour/README.md for headings not in the outline"
    assert sorted({h for h in mapped if mapped.count(h) > 1}) == [], "headings with more than one row"
    assert mapped == [h for h in headings if h in set(mapped)], "rows are not in the order of tour/outline.md"
    problems = []
    for heading, target, name in rows:
        path = (tour / target).resolve()  # a link in tour/README.md is relative to tour/
        if not target or not path.is_file():
            problems.append(f"{heading!r}: file {target!r} does not exist")
        elif not name:
            problems.append(f"{heading!r}: no name in backticks")
        elif path.suffix == ".py" and name not in names_in(path):
            problems.append(f"{heading!r}: {name!r} is not a cell title or function in {target}")
        elif path.suffix != ".py" and name not in path.read_text(encoding="utf-8"):
            problems.append(f"{heading!r}: {name!r} does not appear in {target}")
    assert problems == []


def test_the_project_readme_points_at_the_tour(default_bake):
    readme = (default_bake / "README.md").read_text(encoding="utf-8")
    assert "](tour/README.md)" in readme, "README.md should link to tour/README.md"
    assert SECTION_TITLE not in readme, f"the outline map belongs in tour/README.md, not under '{SECTION_TITLE}'"


# -- words for users -------------------------------------------------------------------------------------------------

# What a remark about the machine the template was written on looks like. "This machine" alone is not one: the
# project says it of the user's machine (serve.py listens on this machine only, the doctor checks this machine).
MACHINE_REMARKS = [
    r"where (?:this|it|the template) (?:was|is) (?:written|developed)",
    r"\bnot yet measured\b",
    r"\bno (?:GPU|CUDA|network|dataset downloads?)\b[^.\n]{0,30}\b(?:on this machine|on the machine where)\b",
    r"\bthis machine (?:cannot|can't|could not) (?:download|reach|measure)\b",
    r"\b(?:our|my) (?:machine|box|laptop|workstation|CI machine)\b",
    r"\bthe machine (?:this|it) was (?:written|developed|measured) on\b",
]
# A measurement's context: at home beside the figures in benchmarks/README.md, a remark about us anywhere else.
MEASUREMENT_CONTEXT = [
    r"\b\d+-core (?:CPU|machine)\b",
    r"\b\d+ (?:shared|busy)\b[^.\n]{0,10}\bcores\b",
    r"\bIntel Xeon\b",
    r"\b(?:measured|profiled)\b[^.\n]{0,40}\b20\d\d-\d\d-\d\d\b",
    r"\bon 20\d\d-\d\d-\d\d\b",
]
FIGURES_DOCUMENT = "benchmarks/README.md"


def machine_remarks(project: Path) -> list[str]:
    found = []
    for path in sorted(project.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        relative = path.relative_to(project).as_posix()
        patterns = MACHINE_REMARKS + ([] if relative == FIGURES_DOCUMENT else MEASUREMENT_CONTEXT)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for pattern in patterns:
                if match := re.search(pattern, line, re.IGNORECASE):
                    found.append(f"{relative}:{number}: {match.group(0)!r}")
    return found


def test_nothing_in_a_bake_talks_about_the_machine_the_template_was_written_on(default_bake):
    assert machine_remarks(default_bake) == []


def test_the_remark_check_finds_the_remarks_and_spares_the_users_machine(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "a.yaml").write_text("# Target 93 %, not yet measured: no GPU on the machine where this was written\n"
                                     "host: 127.0.0.1  # this machine only\n")
    (tmp_path / "b.py").write_text('"""Refuse a device this machine lacks."""\n# (1.5 s on a 2-core machine)\n')
    (tmp_path / "c.py").write_text('"""Why this machine cannot run the benchmark."""\n')  # the user's machine
    (tmp_path / FIGURES_DOCUMENT).write_text("Measured on 2026-12-01 on a 2-core CPU.\nThis machine cannot download.\n")
    assert machine_remarks(tmp_path) == [
        "a.yaml:1: 'where this was written'", "a.yaml:1: 'not yet measured'",
        "a.yaml:1: 'no GPU on the machine where'", "b.py:2: '2-core machine'",
        "benchmarks/README.md:2: 'This machine cannot download'",
    ]


# -- a user's ordinary edits break none of the generated tests ------------------------------------------------

def test_a_longer_fit_and_reworded_comments_pass_the_generated_tests(default_bake, tmp_path):
    """Five more lines in the raw `fit` and reworded comments in both engines: the generated tests that were left
    beside the engines' shape checks (tests/test_layers.py, tests/engines/test_raw_startup.py, both once in
    tests/test_side_by_side.py) still pass, while the template's checks above see both edits."""
    project = tmp_path / "edited"
    shutil.copytree(default_bake, project, ignore=shutil.ignore_patterns("__pycache__", "logs", ".pytest_cache"))
    engines = engine_files(project)
    raw_lines = engines["raw"].read_text().splitlines(keepends=True)
    [fit] = [n for n in ast.parse("".join(raw_lines)).body if isinstance(n, ast.FunctionDef) and n.name == "fit"]
    first = fit.body[1] if isinstance(fit.body[0], ast.Expr) else fit.body[0]  # after the docstring
    indent = " " * first.col_offset
    added = max(5, FIT_MAX_LINES + 1 - function_lines(engines["raw"], "fit"))  # five, or enough to pass one screen
    raw_lines[first.lineno - 1:first.lineno - 1] = [f"{indent}note_{i} = None  # a user's line\n" for i in range(added)]
    raw = "".join(raw_lines)
    assert "# 1. forward, 2. loss" in raw
    engines["raw"].write_text(raw.replace("# 1. forward, 2. loss", "# the forward pass and its loss"))
    lightning = engines["lightning"].read_text()
    comment = re.search(r"^\s*# (?!-- )(?P<text>\S.*)$", lightning, re.MULTILINE)
    engines["lightning"].write_text(
        lightning[:comment.start("text")] + "reworded by its user" + lightning[comment.end("text"):])

    assert function_lines(engines["raw"], "fit") > FIT_MAX_LINES  # what the template's checks see
    assert "1. forward" in basic_steps_missing(engines["raw"])
    assert engines["lightning"].read_text() != lightning

    env = {**os.environ, "PYTHONPATH": str(project / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_layers.py",
         "tests/engines/test_raw_startup.py"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"\b[4-9] passed\b", result.stdout), result.stdout[-1000:]


# -- the README's examples, and the tests that run them ----------------------------------------------------------------

def example_of(test_file: Path) -> dict[str, str]:
    """The EXAMPLE files (a dict literal: {path: text}) that a generated test writes into a copy of the project."""
    [node] = [n for n in ast.parse(test_file.read_text()).body if isinstance(n, ast.Assign)
              and any(getattr(target, "id", None) == "EXAMPLE" for target in n.targets)]
    return ast.literal_eval(node.value)


def readme_section(readme: str, heading: str) -> str:
    assert heading + "\n" in readme, heading
    return heading + "\n" + readme.split(heading + "\n", 1)[1].split("\n## ", 1)[0]


def readme_files(section: str) -> dict[str, str]:
    """{path: text} of a section's code blocks, each naming its file in its first line."""
    return {m["path"]: f"# {m['path']}\n{m['body']}"
            for m in re.finditer(r"```(?:python|yaml)\n# (?P<path>.+?)\n(?P<body>.*?)```", section, re.S)}


@pytest.mark.parametrize(("heading", "test_file", "max_lines"), [
    ("## Add your own dataset", "tests/core/test_add_a_dataset.py", 30),
    ("## Add your own model", "tests/core/test_add_a_model.py", None),
])
def test_the_readme_shows_the_files_its_test_adds(default_bake, heading, test_file, max_lines):
    """The generated tests add their own copy of the example (a user's README edit breaks none of them); the README
    must show exactly those files."""
    section = readme_section((default_bake / "README.md").read_text(), heading)
    assert readme_files(section) == example_of(default_bake / test_file)
    assert len(readme_files(section)) == 2
    if max_lines is not None:
        assert len(section.rstrip().splitlines()) <= max_lines


def test_the_readmes_search_line_is_the_one_its_test_runs(default_bake):
    [line] = [line for line in (default_bake / "README.md").read_text().splitlines() if line.startswith("python search.py")]
    [node] = [n for n in ast.parse((default_bake / "tests/workflows/test_search.py").read_text()).body
              if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "README_SEARCH_LINE"]
    assert line.split("#", 1)[0].rstrip() == ast.literal_eval(node.value)


def test_the_example_checks_see_a_difference(default_bake, tmp_path):
    section = readme_section((default_bake / "README.md").read_text(), "## Add your own dataset")
    changed = section.replace("name: colours", "name: colors")
    assert readme_files(changed) != example_of(default_bake / "tests/core/test_add_a_dataset.py")
