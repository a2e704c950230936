"""Nothing a run wrote is lost or corrupted: checkpoint writes that fail, folders that cannot be written, a resume
that fails, a schedule that cannot run (and test_kill.py: kill -9 at random moments)."""

import contextlib
import errno
import io
import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT, SHORT_RUN, compose_train, run_dirs, run_train

from {{ cookiecutter.package }}.core.errors import UserError
from {{ cookiecutter.package }}.run import checkpoint
from {{ cookiecutter.package }}.run.checkpoint import load_checkpoint
from {{ cookiecutter.package }}.workflows.launch import train

ENGINES = ["raw", "lightning"]


def quiet_train(overrides: list[str], run_dir):
    with contextlib.redirect_stdout(io.StringIO()):
        return train(compose_train(overrides), run_dir)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_checkpoint_write_that_fails_is_one_line_and_keeps_the_previous_files(tmp_path, monkeypatch, engine):
    """Disk full in a resumed run: it stops at its first write with one line naming the file; the checkpoints of
    the first run are intact, and no temporary file is left."""

    def disk_full(state, file):
        file.write(b"the start of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    quiet_train([f"engine={engine}", "scheduler=cosine", *SHORT_RUN, "trainer.max_epochs=1"], tmp_path / "run")
    folder = tmp_path / "run" / "checkpoints"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(UserError) as failed:
        quiet_train(
            [
                f"engine={engine}",
                "scheduler=cosine",
                *SHORT_RUN,
                "trainer.max_epochs=3",
                f"ckpt_path={folder / 'last.ckpt'}",
            ],
            tmp_path / "run",
        )
    name = str(failed.value).split("/")[-1].split()[0]
    assert str(failed.value) == (
        f"cannot write checkpoint {folder / name} (No space left on device): free disk space "
        f"or fix the folder's permissions; the previous {name}, if any, is unchanged"
    )
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no temporary file either
    assert all(load_checkpoint(folder / name) for name in before)


@pytest.mark.parametrize("engine", ENGINES)
def test_outputs_that_cannot_be_written_are_one_line_before_any_work(tmp_path, engine):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("a file where the checkpoints folder goes")
    with pytest.raises(
        UserError,
        match=r"^checkpoints cannot be written to .*/run/checkpoints \(File exists\): "
        "make it a writable folder, or choose another paths.log_dir$",
    ):
        quiet_train([f"engine={engine}", *SHORT_RUN], tmp_path / "run")
    (tmp_path / "run" / "checkpoints").unlink()
    (tmp_path / "run" / "tensorboard").write_text("a file where the TensorBoard folder goes")
    with pytest.raises(UserError, match=r"^TensorBoard logs cannot be written to .*/run/tensorboard \(File exists\)"):
        quiet_train([f"engine={engine}", *SHORT_RUN], tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["tensorboard"]  # nothing else was written


def test_temporary_files_of_a_killed_write_are_removed_when_the_run_resumes(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    orphans = [folder / ".last.ckpt.k2j4x9.tmp", folder / ".best.ckpt.abc.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"half a checkpoint")
    (folder / "notes.tmp").write_text("not ours: kept")
    checkpoint.prepare_checkpoint_dir(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.tmp"]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_one_cycle_plan_with_an_empty_phase_is_one_line_before_any_work(tmp_path, engine):
    """4 steps with pct_start=0.25: torch's OneCycleLR would divide by zero when it is built."""
    with pytest.raises(
        UserError,
        match=r"^scheduler.pct_start=0.25 over 4 optimizer steps gives OneCycleLR a phase "
        r"of no steps \(it would divide by zero\): use another scheduler.pct_start",
    ):
        quiet_train(
            [f"engine={engine}", "scheduler=onecycle", "trainer.max_epochs=1", "trainer.limit_train_batches=4"],
            tmp_path / "run",
        )
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_log_dir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "logs").write_text("a file")
    result = subprocess.run(
        [sys.executable, "train.py", f"paths.log_dir={tmp_path / 'logs'}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: paths.log_dir: run folders go under {tmp_path}/logs/train/lightning, but {tmp_path}/logs is a file, "
        "not a folder: choose another paths.log_dir or fix that path"
    ]


@pytest.mark.slow
def test_a_failed_resume_leaves_the_run_as_it_was(log_dir):
    """Resuming an mlp run with model=cnn is refused; the run's .hydra/ config still describes its checkpoint."""
    first = run_train(log_dir, "engine=raw", "model=mlp", *SHORT_RUN)
    assert first.returncode == 0, first.stderr
    [run_dir] = run_dirs(log_dir, "raw")
    before = {p.name: p.read_bytes() for p in [*(run_dir / ".hydra").iterdir(), *(run_dir / "checkpoints").iterdir()]}
    refused = run_train(log_dir, "engine=raw", "model=cnn", *SHORT_RUN, "ckpt_path=last")
    assert refused.returncode == 1 and refused.stderr.startswith(
        f"error: ckpt_path={run_dir}/checkpoints/last.ckpt holds the weights of another model"
    ), refused.stderr
    after = {p.name: p.read_bytes() for p in [*(run_dir / ".hydra").iterdir(), *(run_dir / "checkpoints").iterdir()]}
    assert after == before
