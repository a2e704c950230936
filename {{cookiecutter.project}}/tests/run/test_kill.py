"""kill -9 at random moments, some of them inside a checkpoint write, with TMPDIR on the run's filesystem and on
another one: after every kill last.ckpt loads, and resuming to the end gives the weights of an uninterrupted run,
bitwise, in both engines.

KILL_FUZZ_KILLS (default 2: one at a random moment, one inside a write) sets the kills per engine and TMPDIR;
README "What is tested" reports a run with 20. KILL_FUZZ_SEED replays the moments of a failed run.
"""

import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import PROJECT_ROOT, run_dirs

from {{ cookiecutter.package }}.run.checkpoint import load_checkpoint, model_state_dict

KILLS = int(os.environ.get("KILL_FUZZ_KILLS", "2"))
SEED = int(os.environ.get("KILL_FUZZ_SEED", str(random.SystemRandom().randrange(2**16))))
# A model whose checkpoint (weights and Adam's state, about 13 MB) takes long enough to write to be caught in the
# act; few batches per epoch, and epochs enough that every segment trains at least one before its kill.
RUN = [
    "model=mlp",
    "model.hidden=[1024,1024]",
    "model.dropout=0.3",
    "scheduler=cosine",
    f"trainer.max_epochs={3 * KILLS + 3}",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.deterministic=true",
    "trainer.enable_progress_bar=false",
]


def other_filesystem(path: Path) -> Path | None:
    """A new folder in /dev/shm (memory, another filesystem than `path`'s), or None where there is none."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != path.stat().st_dev:
        return Path(tempfile.mkdtemp(dir=shm, prefix="kill-fuzz-"))
    return None


# One thread per process: on a busy machine a multi-threaded CPU run now and then computes an epoch's float sums in
# another order (and a straight run ends with other weights, before any kill), and this test is about what a resume
# restores, not about that.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def train(log_dir: Path, engine: str, tmpdir: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "train.py", f"paths.log_dir={log_dir}", f"engine={engine}", *RUN, *overrides],
        cwd=PROJECT_ROOT,
        env={**os.environ, "TMPDIR": str(tmpdir), **ONE_THREAD},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def lines_of(process: subprocess.Popen) -> "queue.Queue[str | None]":
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def writing(checkpoints: Path) -> bool:
    return any(checkpoints.glob(".*.ckpt.*.tmp"))


def kill_during_training(
    process: subprocess.Popen, checkpoints: Path, inside_write: bool, delay: float, output: list[str]
) -> bool:
    """Wait for this process's first epoch line (it trained) and a last.ckpt, then SIGKILL it: `delay` seconds later,
    or as soon as a checkpoint's temporary file appears. Returns whether the kill caught a write (its temporary file
    stayed)."""
    lines, deadline, trained, seen_epoch = lines_of(process), time.monotonic() + 600, None, False
    while (
        trained is None
        or (inside_write and not writing(checkpoints))
        or (not inside_write and time.monotonic() < trained + delay)
    ):
        assert process.poll() is None, "finished before its kill: raise trainer.max_epochs\n" + "".join(output)
        assert time.monotonic() < deadline, "".join(output)
        try:
            line = lines.get(timeout=0.0005 if trained is not None else 0.05)
            output.append(line or "")
            seen_epoch = seen_epoch or bool(line and line.startswith("epoch "))
        except queue.Empty:
            pass
        if trained is None and seen_epoch and (checkpoints / "last.ckpt").exists():  # Lightning prints, then saves
            trained = time.monotonic()
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    return writing(checkpoints)


@pytest.mark.slow
@pytest.mark.parametrize("tmpdir_on", ["same filesystem", "another filesystem"])
@pytest.mark.parametrize("engine", ["raw", "lightning"])
def test_kill_9_at_random_moments_loses_nothing(tmp_path, engine, tmpdir_on, request):
    tmpdir = tmp_path / "tmp" if tmpdir_on == "same filesystem" else other_filesystem(tmp_path)
    if tmpdir is None:
        pytest.skip("no writable /dev/shm on another filesystem")
    request.addfinalizer(lambda: shutil.rmtree(tmpdir, ignore_errors=True))  # what the runs left there
    tmpdir.mkdir(exist_ok=True)
    rng = random.Random(f"{SEED}-{engine}-{tmpdir_on}")
    straight = train(tmp_path / "straight", engine, tmpdir)
    straight_output = straight.communicate(timeout=600)[0]
    assert straight.returncode == 0, straight_output
    [straight_run] = run_dirs(tmp_path / "straight", engine)

    log_dir, output, caught = tmp_path / "killed", [], 0
    for kill in range(KILLS):
        resume = [f"ckpt_path={run_dirs(log_dir, engine)[0]}/checkpoints/last.ckpt"] if kill else []
        process = train(log_dir, engine, tmpdir, *resume)
        inside_write = kill % 2 == 1
        checkpoints = tmp_path / "wait-for-the-run-folder"
        output.append(
            f"--- kill {kill} ({'inside a write' if inside_write else 'at a random moment'}, "
            f"KILL_FUZZ_SEED={SEED}) ---\n"
        )
        while not run_dirs(log_dir, engine):  # the folder of the first segment
            assert process.poll() is None, process.stdout.read()
            time.sleep(0.01)
        checkpoints = run_dirs(log_dir, engine)[0] / "checkpoints"
        caught += kill_during_training(process, checkpoints, inside_write, rng.uniform(0, 0.5), output)
        last = load_checkpoint(checkpoints / "last.ckpt")  # whatever the moment: a complete checkpoint
        assert model_state_dict(last), "".join(output)

    [run_dir] = run_dirs(log_dir, engine)
    finished = train(log_dir, engine, tmpdir, f"ckpt_path={run_dir}/checkpoints/last.ckpt")
    finished_output = finished.communicate(timeout=600)[0]
    output += [
        "--- the last resume, to the end ---\n",
        finished_output,
        "--- the uninterrupted run ---\n",
        straight_output,
    ]
    assert finished.returncode == 0, "".join(output)
    assert not writing(run_dir / "checkpoints"), "a temporary file of a killed write was left behind"
    expected = model_state_dict(load_checkpoint(straight_run / "checkpoints" / "last.ckpt"))
    resumed = model_state_dict(load_checkpoint(run_dir / "checkpoints" / "last.ckpt"))
    assert [k for k in expected if not torch.equal(expected[k], resumed[k])] == [], "".join(output)
    assert caught >= 1 or KILLS < 2, "no kill landed inside a checkpoint write"
    print(f"{engine}, TMPDIR on {tmpdir_on}: {KILLS} kills, {caught} inside a checkpoint write, resumed exactly")
