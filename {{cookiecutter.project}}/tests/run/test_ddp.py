"""Distributed training, trainer=ddp_cpu (two gloo processes), with both engines.

Every run here is `python train.py ...` in a subprocess, as users start it: Lightning's DDP inside pytest
would re-run pytest in its child processes. The runs are few and tiny (3 batches per epoch, per rank).

On a loaded machine a run takes longer, never differently: no test waits a fixed time, each polls for what it
waits for, and every time limit (DEADLINE_S) is an upper bound that only a run that hangs reaches. A failed
check shows the run's whole output and its ranks' logs.
"""

import contextlib
import ipaddress
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import PROJECT_ROOT, assert_same_curves, run_dirs, run_train, scalars

from {{ cookiecutter.package }}.run.checkpoint import load_checkpoint, model_state_dict

pytestmark = pytest.mark.slow  # each test runs 2-process gloo trainings: 4-13 s (the full tier, make test-full)
ENGINES = ("raw", "lightning")
DDP_RUN = [
    "trainer=ddp_cpu",
    "scheduler=step",
    "scheduler.step_size=1",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.log_every_n_steps=1",
    "trainer.deterministic=true",
    "trainer.enable_progress_bar=false",
]
STEPS_PER_EPOCH = 3
DEADLINE_S = 600  # the most one command here may take: a tiny run takes seconds, tens of them on a busy machine
COLLECTIVE_TIMEOUT_S = 300  # distributed.timeout_s: how long a rank waits for another before it fails


def ranks_logs(log_dir: Path) -> str:
    return "".join(f"\n--- {log} ---\n{log.read_text(errors='replace')}" for log in sorted(log_dir.rglob("rank*.log")))


def explain(result: subprocess.CompletedProcess, log_dir: Path) -> str:
    """Everything a finished run left to diagnose it: exit code, full stdout and stderr, every rank's log."""
    return (
        f"{subprocess.list2cmdline(map(str, result.args))}\nexit code {result.returncode}\n--- stdout ---\n"
        f"{result.stdout}\n--- stderr ---\n{result.stderr}{ranks_logs(log_dir)}"
    )


@pytest.fixture
def start(log_dir: Path):
    """start(command, env=None): `command` in the project folder, its stdout and stderr in files next to
    `log_dir` (no pipe to fill up while a test polls; what it printed so far is there to read), collected by
    finish(). Whatever still runs when the test ends, failed or not, is stopped."""
    started = []

    def start(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log_dir.parent.mkdir(parents=True, exist_ok=True)
        out, err = (log_dir.parent / f"{log_dir.name}-{len(started)}.{kind}" for kind in ("out", "err"))
        with out.open("w") as stdout, err.open("w") as stderr:
            run = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=stdout, stderr=stderr, text=True, env=env)
        run.outputs = (out, err)
        started.append(run)
        return run

    yield start
    for run in started:
        if run.poll() is None:
            stop(run)


def output(run: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = (path.read_text(errors="replace") for path in run.outputs)
    return subprocess.CompletedProcess(run.args, run.returncode, out, err)


def stop(run: subprocess.Popen) -> None:
    """SIGTERM (the launcher passes it on to its workers and waits for them), then SIGKILL."""
    run.terminate()
    try:
        run.wait(timeout=90)
    except subprocess.TimeoutExpired:
        run.kill()
        run.wait()


def finish(run: subprocess.Popen, log_dir: Path, timeout: float = DEADLINE_S) -> subprocess.CompletedProcess:
    """The run's outcome once it exits; a run still going after `timeout` seconds is stopped, and fails the test."""
    try:
        run.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(run)
        pytest.fail(f"still running after {timeout} s, stopped\n{explain(output(run), log_dir)}", pytrace=False)
    return output(run)


def wait_for(condition, run: subprocess.Popen, log_dir: Path, what: str, timeout: float = DEADLINE_S):
    """Poll `condition()` until it is true, while `run` is alive; fail with the run's output if it exits first or
    the deadline passes."""
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if run.poll() is not None or time.monotonic() > deadline:
            if run.poll() is None:
                stop(run)
            pytest.fail(f"no {what} (within {timeout} s)\n{explain(output(run), log_dir)}", pytrace=False)
        time.sleep(0.2)
    return found


def processes_under(path: Path) -> dict[int, str]:
    """Live processes whose command line mentions `path` (train.py gets paths.log_dir, workers their run folder),
    by process id."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in cmdline and int(proc.name) != os.getpid():
            found[int(proc.name)] = cmdline
    return found


def no_processes_left(path: Path) -> dict[int, str]:
    """processes_under(path), polled until it is empty: a process that is exiting leaves in moments, a stray
    worker stays (it would wait COLLECTIVE_TIMEOUT_S for its peers)."""
    deadline = time.monotonic() + 60
    while (left := processes_under(path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def listening_sockets(pids) -> dict[int, list[tuple[str, int]]]:
    """The (address, port) pairs each process listens on (TCP, IPv4 and IPv6), from /proc/net/tcp{,6} and the
    socket inodes among the processes' open files."""
    owner = {}
    for pid in pids:
        with contextlib.suppress(OSError):  # a process that just exited
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        owner[target[len("socket:[") : -1]] = pid
    found = {pid: [] for pid in pids}
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / table
        for line in path.read_text().splitlines()[1:] if path.exists() else []:
            local, state, inode = line.split()[1], line.split()[3], line.split()[9]
            if state == "0A" and inode in owner:  # 0A: TCP_LISTEN
                address, port = local.split(":")
                raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found[owner[inode]].append((socket.inet_ntop(family, raw), int(port, 16)))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def other_local_addresses() -> set[str]:
    """This machine's IPv4 addresses besides the loopback ones (none on a machine without a network)."""
    found = set()
    with contextlib.suppress(OSError):
        found |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe, contextlib.suppress(OSError):
        probe.connect(("10.255.255.255", 9))  # sends nothing: the kernel picks the address its route leaves from
        found.add(probe.getsockname()[0])
    return {address for address in found if not is_loopback(address) and address != "0.0.0.0"}


def free_port() -> int:
    """A port nothing listens on, below the kernel's ephemeral range where it can be: ports bound to port 0 and
    outgoing connections take theirs from that range, so this one stays free until a test's rank 0 binds it."""
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        for port in random.sample(range(max(1024, low - 10000), low), 100):
            with socket.socket() as sock, contextlib.suppress(OSError):
                sock.bind(("127.0.0.1", port))
                return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def multirun(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`python train.py -m engine=raw,lightning trainer=ddp_cpu`: a sweep of two DDP jobs."""
    log_dir = tmp_path_factory.mktemp("ddp") / "logs"
    result = run_train(log_dir, "-m", "engine=raw,lightning", *DDP_RUN, timeout=DEADLINE_S)
    assert result.returncode == 0, explain(result, log_dir)
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


def test_the_tensor_data_path_gives_each_rank_the_same_share_as_the_dataloader(multirun, tmp_path):
    """data.loader=tensor under DDP: each rank's batches come from the same sampler share, so both engines log
    exactly the DataLoader path's losses at every step (digits: no augmentation, the same batches)."""
    log_dir, _ = multirun
    tensor_dir = tmp_path / "logs"
    result = run_train(tensor_dir, "-m", "engine=raw,lightning", *DDP_RUN, "data.loader=tensor", timeout=DEADLINE_S)
    assert result.returncode == 0, explain(result, tensor_dir)
    for engine, job in job_dirs(log_dir).items():
        dataloader, tensor = scalars(job), scalars(job_dirs(tensor_dir)[engine])
        for tag in ("train/loss", "train/grad_norm", "val/loss", "val/acc"):  # the first two epochs: the sweep's own
            expected = [(step, value) for step, value in dataloader[tag] if step < 2 * STEPS_PER_EPOCH]
            assert tensor[tag] == expected, (engine, tag)


@pytest.fixture(scope="module")
def resumed(multirun) -> dict[str, subprocess.CompletedProcess]:
    """Each job of the sweep resumed from its last.ckpt for a third epoch, as a plain DDP run."""
    log_dir, _ = multirun
    return {
        engine: run_train(
            log_dir,
            f"engine={engine}",
            *DDP_RUN,
            "trainer.max_epochs=3",
            f"ckpt_path={job / 'checkpoints' / 'last.ckpt'}",
            timeout=DEADLINE_S,
        )
        for engine, job in job_dirs(log_dir).items()
    }


@pytest.mark.parametrize("engine", ENGINES)
def test_a_ddp_run_resumes_from_its_last_checkpoint_in_its_own_folder(multirun, resumed, engine):
    log_dir, _ = multirun
    result = resumed[engine]
    assert result.returncode == 0, explain(result, log_dir)
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
    fail_step = STEPS_PER_EPOCH + 1  # in the second epoch, after the first epoch's last.ckpt
    result = run_train(
        log_dir,
        f"engine={engine}",
        *DDP_RUN,
        "+debug.fail_rank=1",
        f"+debug.fail_step={fail_step}",
        f"distributed.timeout_s={COLLECTIVE_TIMEOUT_S}",
        timeout=DEADLINE_S,
    )
    finished = time.time()
    assert result.returncode == 1, explain(result, log_dir)
    (run_dir,) = run_dirs(log_dir, engine)
    # Rank 1 wrote its traceback last, as it failed: from then on the launcher stopped rank 0, rather than rank 0
    # waiting out distributed.timeout_s for it. Counted from the failure, not the start: a busy machine slows
    # the start, not the stop.
    stopped_after = finished - (run_dir / "rank1.log").stat().st_mtime
    assert stopped_after < COLLECTIVE_TIMEOUT_S / 2, f"stopped {stopped_after:.0f} s after the failure\n" + explain(
        result, log_dir
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, explain(result, log_dir)
    (error,) = errors
    assert "rank 1 of the distributed run failed" in error and f"fails on purpose at step {fail_step}" in error
    assert "Traceback" not in result.stdout + result.stderr  # the tracebacks are in the ranks' log files
    assert "Traceback" in (run_dir / "rank1.log").read_text()
    assert no_processes_left(log_dir) == {}  # no orphaned worker
    last = run_dir / "checkpoints" / "last.ckpt"
    assert f"ckpt_path={last}" in error
    state = load_checkpoint(last)  # intact: the state after the first epoch
    assert (state["progress"]["epoch"] if engine == "raw" else state["epoch"] + 1) == 1


@pytest.mark.parametrize("engine", ENGINES)
def test_a_rank_that_fails_before_any_checkpoint_keeps_the_log_its_error_names(log_dir, engine):
    """The error line names the failed rank's log: the failed (not refused) run's folder keeps it, with the
    traceback (it went with the folder, removed as if the run had been refused)."""
    result = run_train(
        log_dir, f"engine={engine}", *DDP_RUN, "+debug.fail_rank=1", "+debug.fail_step=1", timeout=DEADLINE_S
    )
    assert result.returncode == 1, explain(result, log_dir)
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    named = re.search(r"\(its traceback: (\S+)\)", error)
    assert named and "no checkpoint was written before it" in error, error
    assert "Traceback" in Path(named.group(1)).read_text() and "fails on purpose at step 1" in error


# bake: if cookiecutter.include_extra_loggers
def test_wandb_under_ddp_logs_from_rank_0_and_the_other_ranks_do_nothing(log_dir):
    """logger=wandb trainer=ddp_cpu engine=lightning: rank 1 crashed saving W&B's run id, which its dummy
    experiment (Lightning's, on ranks > 0) does not have. One W&B run, by rank 0."""
    pytest.importorskip("wandb", reason="the wandb extra: pip install -e '.[wandb]'")
    result = run_train(log_dir, "engine=lightning", *DDP_RUN, "logger=wandb", timeout=DEADLINE_S)
    assert result.returncode == 0, explain(result, log_dir)
    (run_dir,) = run_dirs(log_dir, "lightning")
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    assert re.fullmatch(r"[a-z0-9]+", run_id), run_id
    assert [p.name.rsplit("-", 1)[-1] for p in (run_dir / "wandb").glob("offline-run-*")] == [run_id]


# bake: endif
def test_under_torchrun_train_py_is_the_worker_and_launches_nothing(log_dir):
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")  # --standalone: a free port
    result = run_train(log_dir, "engine=raw", *DDP_RUN, python_flags=torchrun, timeout=DEADLINE_S)
    assert result.returncode == 0, explain(result, log_dir)
    assert "launching" not in result.stdout
    (run_dir,) = run_dirs(log_dir, "raw")  # both workers chose the same folder
    assert (run_dir / "rank1.log").is_file() and '"processes": 2' in (run_dir / "metrics.json").read_text()


def test_a_process_group_that_cannot_form_fails_with_a_clear_error(log_dir, start):
    """Rank 0 of 2 started alone: it waits distributed.timeout_s for rank 1, then stops with one line (had it
    ignored distributed.timeout_s=3, it would wait torch's default, 30 minutes, past DEADLINE_S)."""
    env = {
        **os.environ,
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    run = start(
        [sys.executable, "train.py", f"paths.log_dir={log_dir}", "engine=raw", *DDP_RUN, "distributed.timeout_s=3"], env
    )
    result = finish(run, log_dir)
    assert result.returncode == 1, explain(result, log_dir)
    assert "error: the process group did not form within distributed.timeout_s=3: rank 0 of 2" in result.stderr, (
        explain(result, log_dir)
    )
    assert "Traceback" not in result.stderr, explain(result, log_dir)


def test_under_srun_each_slurm_task_is_a_worker(log_dir, start):
    """srun starts every task itself and sets SLURM_* (no RANK/WORLD_SIZE): train.py launches nothing more.
    Two local processes with the variables srun would set stand in for a two-task SLURM step."""
    port = str(free_port())
    workers = [
        start(
            [sys.executable, "train.py", f"paths.log_dir={log_dir}", "engine=raw", *DDP_RUN],
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE"))},
                "SLURM_NTASKS": "2",
                "SLURM_PROCID": str(rank),
                "SLURM_LOCALID": str(rank),
                "SLURM_JOB_ID": "4242",
                "SLURM_JOB_NAME": "train",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            },
        )
        for rank in (0, 1)
    ]
    results = [finish(worker, log_dir) for worker in workers]
    assert [result.returncode for result in results] == [0, 0], "\n".join(explain(r, log_dir) for r in results)
    assert "launching" not in results[0].stdout and "test/acc=" in results[0].stdout, explain(results[0], log_dir)
    (run_dir,) = run_dirs(log_dir, "raw")  # both tasks chose the same folder
    assert (run_dir / "rank1.log").is_file() and '"processes": 2' in (run_dir / "metrics.json").read_text()


def test_sigterm_to_a_ddp_run_names_the_state_it_saved_and_how_to_resume_it(log_dir, start):
    """The launcher passes SIGTERM to the workers; the message is read back from last.ckpt (the state it holds),
    and the hint repeats the run's overrides, trainer=ddp_cpu included.

    While it trains, the run listens on the loopback interface alone: the launcher's two stores (rendezvous,
    and MASTER_PORT, which the workers share) and the workers' gloo sockets, checked in /proc/net/tcp and by
    connecting through this machine's other addresses."""
    import shlex

    overrides = [
        f"paths.log_dir={log_dir}",
        "engine=lightning",
        *[o for o in DDP_RUN if "max_epochs" not in o],
        "trainer.max_epochs=1000",
    ]
    env = {k: v for k, v in os.environ.items() if k != "GLOO_SOCKET_IFNAME"}  # gloo's choice, not the caller's
    run = start([sys.executable, "train.py", *overrides], env)
    wait_for(
        lambda: list(log_dir.glob("train/lightning/*/checkpoints/last.ckpt")),
        run,
        log_dir,
        "last.ckpt: training is under way",
    )

    listening = listening_sockets(processes_under(log_dir))
    report = f"listening sockets by process: {listening}\n"
    assert len(listening.get(run.pid, [])) >= 2, report  # the rendezvous store, the workers' store
    assert all(is_loopback(address) for sockets in listening.values() for address, _ in sockets), report
    accepted = []
    for address in other_local_addresses():
        for _, port in (pair for sockets in listening.values() for pair in sockets):
            with contextlib.suppress(OSError):  # refused: nothing listens there
                socket.create_connection((address, port), timeout=30).close()
                accepted.append(f"{address}:{port}")
    assert accepted == [], report

    run.send_signal(signal.SIGTERM)
    result = finish(run, log_dir)
    assert run.returncode == 128 + signal.SIGTERM, explain(result, log_dir)
    [run_dir] = run_dirs(log_dir, "lightning")
    last = run_dir / "checkpoints" / "last.ckpt"
    *_, stopped, hint = result.stderr.strip().splitlines()
    step = load_checkpoint(last)["global_step"]
    assert stopped == f"stopped by SIGTERM; {last} holds the state after step {step}", explain(result, log_dir)
    assert shlex.split(hint) == ["Resume", "with:", "python", "train.py", *overrides, f"ckpt_path={last}"], explain(
        result, log_dir
    )
    assert no_processes_left(log_dir) == {}
