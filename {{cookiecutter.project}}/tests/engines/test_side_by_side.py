"""The two engine files can be read side by side, and the package's modules form no import circle.

What COMPARISON.md promises about the shape of the code: the same `# -- section --` markers in the same order in
both engines, a raw `fit` that fits on one screen, a Lightning engine as short as Lightning allows, the task
written once, and imports that go one way (launch.py at the top, nothing below it importing it).
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

from conftest import PROJECT_ROOT

from {{ cookiecutter.package }}.workflows.comparison import code_lines

PACKAGE_DIR = PROJECT_ROOT / "src" / "{{ cookiecutter.package }}"
ENGINES = {engine: PACKAGE_DIR / "engines" / f"{engine}.py" for engine in ("raw", "lightning")}
MARKER = re.compile(r"^\s*# -- (?P<name>[^-].*?) --\s*$")
# The order the engines follow (DESIGN): the run, then the concerns in the order a step meets them.
SECTIONS = [
    "fit",
    "device",
    "precision",
    "data",
    "loop",
    "step",
    "accumulation",
    "clipping",
    "scheduler",
    "validation",
    "non-finite loss",
    "checkpoints",
    "logging",
    "signals",
    "DDP",
]
FIT_MAX_LINES = 60  # one screen
# Not blank, comment or docstring, in ruff format's layout (a call that does not fit takes one argument per line):
# 230 in all, about half the idiomatic core (imports, fit, the Trainer's arguments, the LightningModule, the
# DataModule's resume state), half the parity callbacks and the atomic checkpoint writer; a limit that keeps the
# file from growing.
LIGHTNING_MAX_CODE_LINES = 235


def section_markers(text: str) -> list[str]:
    return [m["name"] for line in text.splitlines() if (m := MARKER.match(line))]


def test_both_engines_carry_the_same_section_markers_in_the_same_order():
    markers = {engine: section_markers(path.read_text()) for engine, path in ENGINES.items()}
    assert markers["raw"] == SECTIONS
    assert markers["lightning"] == SECTIONS


def test_the_marker_check_sees_a_difference_in_names_and_in_order():
    raw = "# -- fit --\ndef fit(): ...\n# -- device --\n    # -- loop --\n"
    assert section_markers(raw) == ["fit", "device", "loop"]
    assert section_markers(raw.replace("device", "devices")) != section_markers(raw)
    assert section_markers("# -- device --\n# -- fit --\n") != ["fit", "device"]
    assert section_markers("# ----------\n# -- not a marker --  # trailing\n") == []


def function_lines(path: Path, name: str) -> int:
    [node] = [n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef) and n.name == name]
    return node.end_lineno - node.lineno + 1


def test_the_raw_fit_fits_on_one_screen_and_lightning_stays_short():
    assert function_lines(ENGINES["raw"], "fit") <= FIT_MAX_LINES
    assert code_lines(ENGINES["lightning"]) <= LIGHTNING_MAX_CODE_LINES


def test_the_five_basic_steps_stand_together_in_one_short_function():
    source = ENGINES["raw"].read_text()
    [step] = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "optimizer_step"]
    body = ast.get_source_segment(source, step)
    for basic_step in ("1. forward", "2. loss", "3. backward", "4. step", "5. zero the gradients"):
        assert basic_step in body, basic_step
    assert step.end_lineno - step.lineno + 1 <= 25


def test_the_loss_the_metric_and_the_optimizer_are_written_once():
    """Neither engine computes the loss, the accuracy or builds the optimizer itself: both call task.py (raw counts
    correct predictions with task.count_correct, Lightning logs task.accuracy's torchmetrics Metric)."""
    own_accuracy = {"raw": "task.count_correct(", "lightning": "task.accuracy("}
    for engine, path in ENGINES.items():
        source = path.read_text()
        for written_once in ("cross_entropy", "instantiate(", "MulticlassAccuracy(", "argmax("):
            assert written_once not in source, f"engines/{engine}.py: {written_once}"
        for shared in (
            "task.training_step(",
            "task.evaluation_step(",
            "task.configure_optimizers(",
            own_accuracy[engine],
        ):
            assert shared in source, f"engines/{engine}.py does not call {shared}"


def test_the_raw_engine_starts_without_torchmetrics_or_scikit_learn():
    """Its start-up is torch's and the first optimizer's (benchmarks/engine_overhead.py): torchmetrics (with
    torchvision's models) and scikit-learn (with scipy) took 3 s more. Lightning imports torchmetrics itself."""
    code = (
        "import sys\n"
        "import {{ cookiecutter.package }}.workflows.launch\n"
        "import {{ cookiecutter.package }}.engines.raw\n"
        "print(sorted({'torchmetrics', 'sklearn', 'scipy', 'torchvision', 'lightning'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
