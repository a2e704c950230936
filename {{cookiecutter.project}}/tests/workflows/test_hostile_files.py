"""Nothing in a file runs code (issue: untrusted files): checkpoints whose training config names a `_target_` to
run, in every tool that loads a checkpoint; and the smaller cases: one plain line, true wording, for files that
cannot be loaded."""

import os
from pathlib import Path

import pytest
from conftest import run_script
from hostile_files import VICTIM_BYTES, checkpoint_with_model, open_for_writing_target, torch_load_target, victim_file

from {{ cookiecutter.package }}.core.errors import UserError, foreign_reason
from {{ cookiecutter.package }}.run.checkpoint import load_checkpoint
from {{ cookiecutter.package }}.run.rundir import find_checkpoint

TOOLS = {  # the command line that makes each tool load the checkpoint at {path} ({folder}: the test's own)
    "evaluate.py": ["ckpt_path={path}"],
    # bake: if cookiecutter.include_deployment
    "export.py": ["ckpt_path={path}"],
    "predict.py": ["model_path={path}", "inputs={folder}"],
    # bake: endif
}


def hostile_checkpoint(kind: str, folder: Path) -> tuple[Path, Path, Path, str]:
    """(checkpoint, marker, victim, the refused value) for a model `_target_` that runs code."""
    marker, victim = folder / "marker", victim_file(folder)
    node = torch_load_target(folder, marker) if kind == "torch.load" else open_for_writing_target(victim)
    return checkpoint_with_model(folder, node), marker, victim, f"model._target_={node['_target_']}"


def assert_one_line(stderr: str, *parts: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "\x1b" not in lines[0], lines[0]
    for part in parts:
        assert part in lines[0], lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["torch.load", "builtins.open"])
@pytest.mark.parametrize("tool", list(TOOLS))
def test_a_checkpoints_model_target_runs_nothing_in_any_tool(tool, kind, tmp_path):
    path, marker, victim, refused = hostile_checkpoint(kind, tmp_path)
    arguments = [argument.format(path=path, folder=tmp_path) for argument in TOOLS[tool]]
    result = run_script(tool, tmp_path / "logs", *arguments)
    assert result.returncode == 1
    assert_one_line(result.stderr, refused)
    assert not marker.exists() and victim.read_bytes() == VICTIM_BYTES


@pytest.mark.slow
def test_evaluate_py_refuses_a_model_node_that_is_not_a_mapping(tmp_path):
    result = run_script("evaluate.py", tmp_path / "logs", f"ckpt_path={checkpoint_with_model(tmp_path, 5)}")
    assert result.returncode == 1
    assert_one_line(result.stderr, "has model=5")


@pytest.mark.slow
@pytest.mark.parametrize("tool", [tool for tool, arguments in TOOLS.items() if arguments[0].startswith("ckpt_path=")])
def test_an_environment_interpolation_is_one_line(tool, tmp_path):
    result = run_script(tool, tmp_path / "logs", "ckpt_path=${oc.env:HOME}")
    assert result.returncode == 1
    assert_one_line(result.stderr, f"ckpt_path={Path.home()}")


def test_error_lines_carry_no_terminal_escapes():
    assert str(UserError("bad \x1b[31mred\x1b[0m value\x07")) == "bad red value"
    coloured = RuntimeError("\x1b[1mUnpickling failed\x1b[0m: details\nsecond line")
    assert foreign_reason(coloured) == "RuntimeError: Unpickling failed: details"


def test_a_folder_or_fifo_given_as_a_checkpoint_is_named_for_what_it_is(tmp_path):
    fifo = tmp_path / "pipe.ckpt"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="is a directory, not a checkpoint file"):
        find_checkpoint(str(tmp_path), tmp_path)
    with pytest.raises(UserError, match="pipe.ckpt: is not a regular file"):
        find_checkpoint(str(fifo), tmp_path)
    with pytest.raises(UserError, match="is a directory"):
        load_checkpoint(tmp_path)
    with pytest.raises(UserError, match="is not a regular file"):
        load_checkpoint(fifo)
    with pytest.raises(UserError, match="no such checkpoint file"):
        find_checkpoint(str(tmp_path / "missing.ckpt"), tmp_path)
