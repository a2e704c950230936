"""Distributed training, trainer=ddp_cpu (two gloo processes), with both engines.

Every run here is `python train.py ...` in a subprocess, as users start it: Lightning's DDP inside pytest
would re-run pytest in its child processes. The runs are few and tiny (3 batches per epoch, per rank).
"""

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import PROJECT_ROOT, assert_same_curves, run_dirs, run_train, scalars

from {{ cookiecutter.package }}.checkpoint import load_checkpoint, model_state_dict

ENGINES = ("raw", "lightning")
DDP_RUN = [
    "trainer=ddp_cpu", "scheduler=step", "scheduler.step_size=1", "trainer.max_epochs=2",
    "trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
    "trainer.log_every_n_steps=1", "trainer.deterministic=true", "trainer.enable_progress_bar=false",
]
STEPS_PER_EPOCH = 3


def processes_under(path: Path) -> list[str]:
    """Command lines of live processes that mention `path` (workers get their run folder as an argument)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline and int(proc.name) != os.getpid():
            found.append(cmdline)
    return found


@pytest.fixture(scope="module")
def multirun(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`python train.py -m engine=raw,lightning trainer=ddp_cpu`: a sweep of two DDP jobs."""
    log_dir = tmp_path_factory.mktemp("ddp") / "logs"
    result = run_train(log_dir, "-m", "engine=raw,lightning", *DDP_RUN)
    assert result.returncode == 0, result.stdout + result.stderr
    return log_dir, result


def job_dirs(log_dir: Path) -> dict[str, Path]:
    (sweep,) = (log_dir / "train" / "multiruns").iterdir()
    return {engine: sweep / f"{number}_{engine}" for number, engine in enumerate(ENGINES)}


def test_a_multirun_of_two_ddp_jobs_writes_one_folder_per_job_and_runs_each_once(multirun):
    log_dir, result = multirun
    (sweep,) = (log_dir / "train" / "multiruns").iterdir()  # no second sweep folder
    assert sorted(p.name for p in sweep.iterdir()) == ["0_raw", "1_lightning", "multirun.yaml"]
    assert sorted(p.name for p in (log_dir / "train").iterdir()) == ["multiruns"]  # no stray run folders
    assert len(re.findall(r"launching 2 \w+ workers", result.stdout)) == 2
    assert len(re.findall(r"^engine=\w+ test/acc=", result.stdout, flags=re.M)) == 2  # each job trained once
    for engine, job in job_dirs(log_dir).items():
        metrics = (job / "metrics.json").read_text()
        assert f'"engine": "{engine}"' in metrics and '"processes": 2' in metrics
        assert (job / "checkpoints" / "last.ckpt").is_file() and (job / "checkpoints" / "best.ckpt").is_file()
        assert (job / "rank1.log").is_file() and not (job / "rank0.log").exists()
        # Rank 0 alone wrote events: the writer's process id is part of each event file's name.
        writers = {p.name.split(".")[-2] for p in (job / "tensorboard").glob("events.out.tfevents.*")}
        assert len(writers) == 1, writers


def test_raw_and_lightning_ddp_agree_step_by_step(multirun):
    log_dir, _ = multirun
    jobs = job_dirs(log_dir)
    raw, lit = scalars(jobs["raw"]), scalars(jobs["lightning"])
    assert_same_curves(raw, lit, ("train/loss", "lr", "train/grad_norm", "val/loss", "val/acc", "test/acc"))
    assert len(raw["train/loss"]) == 2 * STEPS_PER_EPOCH
    raw_weights = model_state_dict(load_checkpoint(jobs["raw"] / "checkpoints" / "last.ckpt"))
    lit_weights = model_state_dict(load_checkpoint(jobs["lightning"] / "checkpoints" / "last.ckpt"))
    assert all(torch.allclose(raw_weights[k], lit_weights[k], atol=1e-6) for k in raw_weights)


@pytest.fixture(scope="module")
def resumed(multirun) -> dict[str, subprocess.CompletedProcess]:
    """Each job of the sweep resumed from its last.ckpt for a third epoch, as a plain DDP run."""
    log_dir, _ = multirun
    return {engine: run_train(log_dir, f"engine={engine}", *DDP_RUN, "trainer.max_epochs=3",
                              f"ckpt_path={job / 'checkpoints' / 'last.ckpt'}")
            for engine, job in job_dirs(log_dir).items()}


@pytest.mark.parametrize("engine", ENGINES)
def test_a_ddp_run_resumes_from_its_last_checkpoint_in_its_own_folder(multirun, resumed, engine):
    log_dir, _ = multirun
    result = resumed[engine]
    assert result.returncode == 0, result.stdout + result.stderr
    job = job_dirs(log_dir)[engine]
    metrics = load_checkpoint(job / "checkpoints" / "last.ckpt")
    assert "rng" in metrics  # a full training state, written by rank 0 after the third epoch
    summary = (job / "metrics.json").read_text()
    assert '"epochs": 3' in summary and f'"global_step": {3 * STEPS_PER_EPOCH}' in summary
    assert run_dirs(log_dir, engine) == []  # continued in the job's folder, no new run folder


def test_resumed_ddp_runs_still_agree(multirun, resumed):
    log_dir, _ = multirun
    jobs = job_dirs(log_dir)
    raw, lit = scalars(jobs["raw"]), scalars(jobs["lightning"])
    resumed_steps = [(s, v) for s, v in raw["train/loss"] if s >= 2 * STEPS_PER_EPOCH]
    assert len(resumed_steps) == STEPS_PER_EPOCH
    lit_steps = [(s, v) for s, v in lit["train/loss"] if s >= 2 * STEPS_PER_EPOCH]
    assert [s for s, _ in resumed_steps] == [s for s, _ in lit_steps]
    assert max(abs(a - b) for (_, a), (_, b) in zip(resumed_steps, lit_steps, strict=True)) <= 1e-6


@pytest.mark.parametrize("engine", ENGINES)
def test_a_crashed_rank_stops_the_whole_run_with_its_error(log_dir, engine):
    started = time.monotonic()
    fail_step = STEPS_PER_EPOCH + 1  # in the second epoch, after the first epoch's last.ckpt
    result = run_train(log_dir, f"engine={engine}", *DDP_RUN, "+debug.fail_rank=1", f"+debug.fail_step={fail_step}",
                       timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    assert elapsed < 60, elapsed
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert "rank 1 of the distributed run failed" in error and f"fails on purpose at step {fail_step}" in error
    assert "Traceback" not in result.stdout + result.stderr  # the tracebacks are in the ranks' log files
    assert "Traceback" in (run_dirs(log_dir, engine)[0] / "rank1.log").read_text()
    assert processes_under(log_dir) == []  # no orphaned worker
    (run_dir,) = run_dirs(log_dir, engine)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert f"ckpt_path={last}" in error
    state = load_checkpoint(last)  # intact: the state after the first epoch
    assert (state["progress"]["epoch"] if engine == "raw" else state["epoch"] + 1) == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_under_torchrun_train_py_is_the_worker_and_launches_nothing(log_dir):
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "train.py",
         f"paths.log_dir={log_dir}", "engine=raw", *DDP_RUN],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "launching" not in result.stdout
    (run_dir,) = run_dirs(log_dir, "raw")  # both workers chose the same folder
    assert (run_dir / "rank1.log").is_file() and '"processes": 2' in (run_dir / "metrics.json").read_text()


def test_a_process_group_that_cannot_form_fails_with_a_clear_error(log_dir):
    """Rank 0 of 2 started alone: it waits distributed.timeout_s for rank 1, then stops with one line."""
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "train.py", f"paths.log_dir={log_dir}", "engine=raw", *DDP_RUN,
                             "distributed.timeout_s=3"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert time.monotonic() - started < 45
    assert "error: the process group did not form within distributed.timeout_s=3: rank 0 of 2" in result.stderr
    assert "Traceback" not in result.stderr


def test_under_srun_each_slurm_task_is_a_worker(log_dir):
    """srun starts every task itself and sets SLURM_* (no RANK/WORLD_SIZE): train.py launches nothing more.
    Two local processes with the variables srun would set stand in for a two-task SLURM step."""
    port = str(free_port())
    workers = [
        subprocess.Popen(
            [sys.executable, "train.py", f"paths.log_dir={log_dir}", "engine=raw", *DDP_RUN],
            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE"))},
                 "SLURM_NTASKS": "2", "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_JOB_ID": "4242",
                 "SLURM_JOB_NAME": "train", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
        )
        for rank in (0, 1)
    ]
    outputs = [worker.communicate(timeout=180)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    assert "launching" not in outputs[0] and "test/acc=" in outputs[0]
    (run_dir,) = run_dirs(log_dir, "raw")  # both tasks chose the same folder
    assert (run_dir / "rank1.log").is_file() and '"processes": 2' in (run_dir / "metrics.json").read_text()


def test_sigterm_to_a_ddp_run_names_the_state_it_saved_and_how_to_resume_it(log_dir):
    """The launcher passes SIGTERM to the workers; the message is read back from last.ckpt (the state it holds),
    and the hint repeats the run's overrides, trainer=ddp_cpu included."""
    import shlex
    import signal

    overrides = [f"paths.log_dir={log_dir}", "engine=lightning", *[o for o in DDP_RUN if "max_epochs" not in o],
                 "trainer.max_epochs=1000"]
    run = subprocess.Popen([sys.executable, "train.py", *overrides], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not list(log_dir.glob("train/lightning/*/checkpoints/last.ckpt")):  # training is under way
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.2)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 128 + signal.SIGTERM, stderr
    [run_dir] = run_dirs(log_dir, "lightning")
    last = run_dir / "checkpoints" / "last.ckpt"
    *_, stopped, hint = stderr.strip().splitlines()
    assert stopped == f"stopped by SIGTERM; {last} holds the state after step {load_checkpoint(last)['global_step']}"
    assert shlex.split(hint) == ["Resume", "with:", "python", "train.py", *overrides, f"ckpt_path={last}"]
    assert processes_under(log_dir) == []
