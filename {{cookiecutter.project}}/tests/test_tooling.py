"""The developer tooling: the Makefile's targets run the commands README.md documents (ARGS: their overrides), and
the pre-commit hooks pass on the project as generated."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, SHORT_RUN

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
TARGETS = re.findall(r"^([a-z-]+):", (PROJECT_ROOT / "Makefile").read_text(), re.MULTILINE)


def make(*args: str, folder=PROJECT_ROOT) -> subprocess.CompletedProcess:
    """`make args` in `folder`, as a user types it: not as a sub-make of a `make test` that runs this suite (whose
    MAKEFLAGS and MAKELEVEL would make it print the directories it enters)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(
        ["make", f"PYTHON={sys.executable}", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=600
    )


@needs_make
def test_help_lists_every_target():
    listed = make("help").stdout
    assert len(TARGETS) >= 9 and [line.split()[1] for line in listed.splitlines()] == TARGETS


@needs_make
@pytest.mark.parametrize(
    ("target", "command"),
    [
        ("train", "train.py engine=raw seed=3"),
        ("eval", "evaluate.py ckpt_path=last engine=raw seed=3"),
        # bake: if cookiecutter.include_deployment
        ("export", "export.py ckpt_path=last engine=raw seed=3"),
        ("predict", "predict.py engine=raw seed=3"),
        ("serve", "serve.py engine=raw seed=3"),
        # bake: endif
        ("compare", "compare.py engine=raw seed=3"),
        ("test", "-m pytest engine=raw seed=3"),
        ("test-full", '-m pytest -m "" engine=raw seed=3'),
        # bake: if cookiecutter.include_benchmarks
        ("gpu-check", "benchmarks/gpu_check.py engine=raw seed=3"),
        # bake: endif
        ("lint", "-m ruff check . && {python} -m ruff format --check ."),
        ("format", "-m ruff format . && {python} -m ruff check --fix ."),
        ("tensorboard", "-m tensorboard.main --logdir logs --host 127.0.0.1 --port 6006"),
    ],
)
def test_each_target_runs_its_command(target, command):
    dry_run = make("-n", target, "ARGS=engine=raw seed=3")
    expected = f"{sys.executable} {command.format(python=sys.executable)}"
    assert dry_run.returncode == 0 and dry_run.stdout.strip() == expected, dry_run.stdout


@needs_make
def test_clean_keeps_the_runs_and_clean_logs_removes_them(tmp_path):
    shutil.copy(PROJECT_ROOT / "Makefile", tmp_path)
    for folder in ("logs/train/raw/run", "src/pkg/__pycache__", ".pytest_cache", ".ruff_cache"):
        (tmp_path / folder).mkdir(parents=True)
    assert make("clean", folder=tmp_path).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Makefile", "logs", "src"]
    assert not (tmp_path / "src" / "pkg" / "__pycache__").exists()
    assert make("clean-logs", folder=tmp_path).returncode == 0 and not (tmp_path / "logs").exists()


@needs_make
@pytest.mark.slow
def test_train_then_eval(tmp_path):
    overrides = f"paths.log_dir={tmp_path} engine=raw"
    trained = make("train", f"ARGS={overrides} {' '.join(SHORT_RUN)}")
    assert trained.returncode == 0, trained.stderr
    evaluated = make("eval", f"ARGS={overrides}")
    assert evaluated.returncode == 0, evaluated.stderr
    assert list((tmp_path / "eval").glob("*/metrics.json"))


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_pre_commit_finds_nothing_to_fix_in_the_project(tmp_path):
    """The hooks of .pre-commit-config.yaml (local: the dev extra's ruff and pre-commit-hooks) pass on the project as
    generated, so that a first commit changes nothing."""
    copy = tmp_path / "project"
    shutil.copytree(
        PROJECT_ROOT,
        copy,
        ignore=shutil.ignore_patterns("logs", "data", ".venv", "__pycache__", ".*_cache", "*.egg-info", ".git"),
    )
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    subprocess.run(["git", "add", "-A"], cwd=copy, check=True)
    tools = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])  # ruff, the hooks
    result = subprocess.run(
        [sys.executable, "-m", "pre_commit", "run", "--all-files"],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PATH": tools, "PRE_COMMIT_HOME": str(tmp_path / "pre-commit")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
