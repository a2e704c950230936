"""Several processes, one run: launching the workers, joining the process group, and who writes what.

`trainer.strategy: ddp` (trainer=ddp, trainer=ddp_cpu) trains with `trainer.devices` processes per node.
Started plainly (`python train.py trainer=ddp_cpu`), train.py launches them itself with torch.distributed's
elastic launcher, the launcher behind `torchrun`, each running worker.py. Started by torchrun, srun (SLURM) or
another launcher that sets RANK/WORLD_SIZE/LOCAL_RANK, each process already is a worker and nothing is launched
again.
Both engines join the process group here, so its timeout and errors are the same in both; Lightning finds
the group initialised and the torchelastic (or SLURM) environment it expects, and starts no processes of
its own (which is what keeps Hydra multiruns from running a sweep twice).
The workers train.py launches itself reach each other over the loopback interface alone: no port of theirs, nor
of the launcher's, is open to other machines.
"""

import datetime
import gc
import ipaddress
import itertools
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ..core.errors import TrainingStopped, UserError


@dataclass(frozen=True)
class World:
    rank: int = 0  # this process among all processes of the run
    local_rank: int = 0  # this process among the processes of its node: picks its GPU
    size: int = 1  # number of processes

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, TensorBoard events and metrics.json."""
        return self.rank == 0


def is_ddp(trainer: DictConfig) -> bool:
    return trainer.get("strategy", "auto") == "ddp"


def started_by_launcher() -> str | None:
    """'torchelastic' (torchrun, or train.py's own launch of workers) or 'slurm' (srun with several tasks)
    when a launcher started this process as one worker of several, from its environment variables; else None."""
    if all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")):
        return "torchelastic"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return "slurm"
    return None


def launched_world() -> World | None:
    """The World a launcher put this process in (torchrun/torch elastic, or SLURM's srun), else None."""
    launcher = started_by_launcher()
    if launcher == "torchelastic":
        return World(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    if launcher == "slurm":
        return World(int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_LOCALID"]), int(os.environ["SLURM_NTASKS"]))
    return None


def current_world() -> World:
    """This process's place in the process group (World() when training in one process)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), (launched_world() or World()).local_rank, dist.get_world_size())
    return World()


def processes_per_node(trainer: DictConfig) -> int:
    devices = trainer.devices
    if devices in ("auto", -1, "-1") and trainer.accelerator in ("gpu", "cuda"):
        return torch.cuda.device_count()
    if isinstance(devices, int) and devices >= 1:
        return devices
    if isinstance(devices, str) and devices.isdigit() and int(devices) >= 1:
        return int(devices)
    raise UserError(
        f"trainer.devices={devices!r} is not valid with trainer.strategy=ddp: give the number of "
        "processes per node (e.g. trainer.devices=2), or 'auto' for every CUDA GPU"
    )


def check_distributed(trainer: DictConfig) -> None:
    """Refuse device counts and launchers that do not fit the strategy, before any process starts."""
    strategy = trainer.get("strategy", "auto")
    if strategy not in ("auto", "ddp"):
        raise UserError(
            f"trainer.strategy={strategy!r} is not supported by this project: use 'auto' (one process) "
            "or 'ddp' (trainer=ddp, trainer=ddp_cpu)"
        )
    world = launched_world()
    if not is_ddp(trainer):
        if world is not None and world.size > 1:
            raise UserError(
                f"this process was started as one of {world.size} workers (RANK/WORLD_SIZE are set) "
                f"but trainer.strategy={strategy}: use trainer=ddp or "
                "trainer=ddp_cpu"
            )
        if trainer.devices not in (1, "1", [0], "auto"):
            raise UserError(
                f"trainer.devices={trainer.devices} asks for several devices on one process: use "
                "trainer=ddp (CUDA GPUs) or trainer=ddp_cpu (CPU processes) to train on several"
            )
        return
    if trainer.accelerator not in ("cpu", "gpu", "cuda"):
        raise UserError(
            f"trainer.strategy=ddp with trainer.accelerator={trainer.accelerator}: DDP runs on "
            "accelerator=gpu (nccl) or accelerator=cpu (gloo)"
        )
    per_node = processes_per_node(trainer)
    num_nodes = trainer.get("num_nodes", 1)
    if world is None and num_nodes > 1:
        raise UserError(
            f"trainer.num_nodes={num_nodes}: start the run on every node with torchrun (or srun), "
            "which sets RANK and WORLD_SIZE; README: Distributed training, several machines"
        )
    if trainer.accelerator in ("gpu", "cuda") and per_node > torch.cuda.device_count():
        raise UserError(
            f"trainer.devices={per_node} asks for {per_node} CUDA GPUs per node, but this machine has "
            f"{torch.cuda.device_count()}: lower trainer.devices, or use trainer=ddp_cpu"
        )
    if world is not None and world.size != per_node * num_nodes:
        raise UserError(
            f"the launcher started {world.size} processes but trainer.devices={per_node} x "
            f"trainer.num_nodes={num_nodes} = {per_node * num_nodes}: make them match (e.g. "
            f"torchrun --nproc-per-node {per_node}, or trainer.devices=...)"
        )


# --- the process that was started plainly: launch the workers and wait for them --------------------------


def launch_workers(cfg: DictConfig, run_dir: Path) -> None:
    """Run `trainer.devices` workers of this run on this machine with torch elastic (as torchrun would).

    The workers (`python -m <package>.worker`, worker.py) load the composed config from a file instead of
    running Hydra again: they write into this run's folder and nothing else. One failing worker stops the
    others; the error names its rank.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import rendezvous_handler_registry
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    nproc = processes_per_node(cfg.trainer)
    rendezvous_handler_registry.register(LOOPBACK_RENDEZVOUS, loopback_rendezvous)  # again: the same function
    with tempfile.TemporaryDirectory(prefix="ddp-launch-") as scratch:
        config_file = Path(scratch) / "config.yaml"
        OmegaConf.save(cfg, config_file, resolve=True)
        launch = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=nproc,
            run_id=run_dir.name,
            rdzv_backend=LOOPBACK_RENDEZVOUS,
            rdzv_endpoint=f"{LOOPBACK}:0",  # port 0: free ports, no race
            rdzv_configs={"join_timeout": cfg.distributed.timeout_s},
            max_restarts=0,
            monitor_interval=0.1,
            shutdown_timeout=60,  # seconds the workers get to exit (and save, on SIGTERM) before SIGKILL
            logs_specs=DefaultLogsSpecs(log_dir=str(Path(scratch) / "logs")),
            local_addr=LOOPBACK,
        )
        print(
            f"launching {nproc} {cfg.engine.name} workers (torch elastic, {backend(cfg.trainer)}); "
            f"ranks > 0 log to {run_dir}/rank<N>.log",
            flush=True,
        )
        # The launcher logs each failure and SIGTERM it sends; the one-line error below says it all.
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("torch.distributed.elastic"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
        try:
            elastic_launch(launch, entrypoint=sys.executable)(
                "-u", "-m", f"{__package__.rsplit('.', 1)[0]}.workflows.worker", str(config_file), str(run_dir)
            )
        except ChildFailedError as failed:
            raise UserError(describe_failure(failed, run_dir)) from None
        except SignalException as stop:  # SIGTERM/Ctrl-C: the launcher passed it on to every worker
            raise stopped_workers(stop.sigval, run_dir) from None


# Every process of a run that launch_workers starts is on this machine: nothing it opens has to be reachable from
# another one, and nothing is (tests/test_ddp.py checks it). The launcher (this process) serves two TCPStores: the
# rendezvous' own, and the one the workers share as MASTER_ADDR:MASTER_PORT. torch's TCPStore(host_name, port,
# is_master=True) binds its server to every interface (in6addr_any/INADDR_ANY, libuv's backend and the older one
# alike): host_name is only where clients connect. Its one way to choose the address is `master_listen_fd`, a
# socket already bound: loopback_store() binds it to 127.0.0.1, and loopback_rendezvous() is torch's c10d
# rendezvous with both of its stores made that way.
LOOPBACK = "127.0.0.1"
LOOPBACK_RENDEZVOUS = "c10d-loopback"  # the rendezvous backend's name, for LaunchConfig(rdzv_backend=...)


def loopback_store(timeout: datetime.timedelta) -> dist.TCPStore:
    """A TCPStore server on a free port (its .port) that listens on 127.0.0.1 alone."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))
    port = listener.getsockname()[1]
    # detach(): the store owns the descriptor from here on, and closes it when it is destroyed.
    return dist.TCPStore(LOOPBACK, port, is_master=True, timeout=timeout, master_listen_fd=listener.detach())


def loopback_rendezvous(params):
    """The handler of rendezvous backend LOOPBACK_RENDEZVOUS: torch's c10d rendezvous (what `torchrun
    --standalone` runs), for the processes of one machine, whose two stores listen on 127.0.0.1 only.

    The endpoint's address and port are not used: both stores take free ports (port 0), which the workers
    learn from the launcher (MASTER_PORT, TORCHELASTIC_USE_AGENT_STORE=True: they connect, none serves).
    """
    from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import DynamicRendezvousHandler, RendezvousTimeout

    timeout = datetime.timedelta(seconds=params.get_as_int("join_timeout", 600))

    class LoopbackRendezvousHandler(DynamicRendezvousHandler):
        def get_backend(self) -> str:  # the registry checks that the handler it made has the name asked for
            return LOOPBACK_RENDEZVOUS

        def _create_tcp_store_server(self, master_addr: str, master_port: int) -> dist.TCPStore:
            # torch's hook for the store it shares with the workers (MASTER_ADDR:MASTER_PORT), which it would
            # bind to every interface; should torch rename it, tests/test_ddp.py fails on the run's sockets.
            return loopback_store(timeout)

    store = loopback_store(timeout)  # the rendezvous' own (torch's c10d backend would bind it to every interface)
    return LoopbackRendezvousHandler.from_backend(
        params.run_id,
        store,
        C10dRendezvousBackend(store, params.run_id),
        params.min_nodes,
        params.max_nodes,
        params.local_addr,
        RendezvousTimeout(join=timeout),
    )


def stopped_workers(signum: int, run_dir: Path) -> TrainingStopped:
    """What the stopped workers left, read back from last.ckpt itself: the message names the state it holds."""
    from .checkpoint import load_checkpoint

    last, name = run_dir / "checkpoints" / "last.ckpt", signal.Signals(signum).name
    if not last.is_file():
        return TrainingStopped(f"stopped by {name} before the first checkpoint: nothing to resume", 128 + signum, last)
    state = load_checkpoint(last)
    step = state.get("progress", state).get("global_step")
    return TrainingStopped(f"stopped by {name}; {last} holds the state after step {step}", 128 + signum, last)


def describe_failure(failed, run_dir: Path) -> str:
    """One line: the first rank that failed, its error, and what is left to resume from."""
    rank, failure = failed.get_first_failure()
    message = failure.message
    if isinstance(message, dict):  # the error file a worker wrote (record_error below)
        message = message.get("message", message)
    if isinstance(message, str) and message.startswith("UserError: "):
        # A problem with the run's settings, the same on every rank: a refusal, whose folder goes (train.py) with
        # the ranks' logs, which the one line makes unneeded. Any other failure keeps them: its line names one.
        for log in run_dir.glob("rank*.log"):
            log.unlink(missing_ok=True)
        return message.removeprefix("UserError: ")
    if not message or message == "<N/A>":
        message = f"exit code {failure.exitcode}"
    log = run_dir / f"rank{rank}.log"  # the worker wrote its traceback there (worker.py)
    message = str(message).strip().splitlines()[-1] + (f" (its traceback: {log})" if log.is_file() else "")
    last = run_dir / "checkpoints" / "last.ckpt"
    left = (
        f"{last} holds the last completed epoch: resume with ckpt_path={last}"
        if last.is_file()
        else "no checkpoint was written before it"
    )
    return f"rank {rank} of the distributed run failed: {message}. The other ranks were stopped; {left}"


# --- a worker: join the group, train, leave ----------------------------------------------------------------


def backend(trainer: DictConfig) -> str:
    return "nccl" if trainer.accelerator in ("gpu", "cuda") else "gloo"


@contextmanager
def process_group(cfg: DictConfig, run_dir: Path) -> Iterator[World]:
    """Join the run's process group (only when trainer.strategy=ddp) and leave it at the end.

    Ranks > 0 write their output to <run folder>/rank<N>.log. The timeout applies to forming the group and
    to every collective after it: a rank that stops answering fails the run instead of hanging it.
    """
    if not is_ddp(cfg.trainer):
        yield World()
        return
    world = launched_world()
    if world is None:
        raise RuntimeError("process_group() runs in workers: launch_workers starts them")
    if world.rank > 0:
        log_to_file(run_dir / f"rank{world.rank}.log")
    if started_by_launcher() == "slurm":
        set_slurm_main_address()
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise UserError(
                f"{name} is not set: rank {world.rank} of {world.size} cannot find rank 0. torchrun sets "
                "it; under srun export MASTER_ADDR and MASTER_PORT (README: Distributed training)"
            )
    if "OMP_NUM_THREADS" not in os.environ:  # processes on one CPU share its cores, as torchrun arranges
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // per_node))
    if backend(cfg.trainer) == "nccl":
        torch.cuda.set_device(world.local_rank)
    else:
        keep_gloo_on_loopback()
    timeout = cfg.distributed.timeout_s
    address = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        dist.init_process_group(
            backend(cfg.trainer), rank=world.rank, world_size=world.size, timeout=datetime.timedelta(seconds=timeout)
        )
        dist.barrier()  # every rank has joined: the rendezvous formed
    except (RuntimeError, ValueError) as err:  # DistStoreError, DistNetworkError are RuntimeErrors
        raise UserError(
            f"the process group did not form within distributed.timeout_s={timeout}: rank "
            f"{world.rank} of {world.size} waited for the others at {address} "
            f"({str(err).strip().splitlines()[0]}). Check that every rank was started, with the same "
            "MASTER_ADDR/MASTER_PORT (torchrun --rdzv-endpoint) and reachable ports"
        ) from None
    try:
        yield world
        dist.barrier()  # every rank is done: none tears the group down while another still uses it
    except BaseException as error:
        if not isinstance(error, TrainingStopped):
            # Before the group goes: the other ranks then fail on its closed connections, and the launcher names
            # the failure it heard of first.
            record_error(error)
        raise
    finally:
        # Free what still holds the group (a DDP wrapper in a reference cycle, as Lightning's) while Python is
        # alive: freed at interpreter exit, gloo's threads abort the process ("terminate called without an
        # active exception", SIGABRT), which the launcher reports as a failed rank.
        gc.collect()
        dist.destroy_process_group()


def keep_gloo_on_loopback() -> None:
    """When rank 0 is at a loopback address (the workers train.py launches itself; torchrun or srun given
    MASTER_ADDR=127.0.0.1), every rank is on this machine: gloo's sockets listen on the loopback interface.
    Left to itself gloo listens on the address this machine's host name resolves to, often one that other
    machines reach. A GLOO_SOCKET_IFNAME of the user's own is left as it is."""
    if "GLOO_SOCKET_IFNAME" in os.environ:
        return
    try:
        local = os.environ["MASTER_ADDR"] == "localhost" or ipaddress.ip_address(os.environ["MASTER_ADDR"]).is_loopback
    except ValueError:  # a host name
        return
    interface = next((name for _, name in socket.if_nameindex() if name.startswith("lo")), None)  # lo, lo0
    if local and interface:
        os.environ["GLOO_SOCKET_IFNAME"] = interface


def set_slurm_main_address() -> None:
    """Under srun, rank 0 runs on the first node of the job: its host name, and a port from the job id
    (the choice Lightning's SLURMEnvironment makes too), unless MASTER_ADDR/MASTER_PORT are exported."""
    import subprocess

    if "MASTER_ADDR" not in os.environ and "SLURM_JOB_NODELIST" in os.environ:
        hosts = subprocess.run(
            ["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if hosts:
            os.environ["MASTER_ADDR"] = hosts[0]
    if "MASTER_PORT" not in os.environ and "SLURM_JOB_ID" in os.environ:
        os.environ["MASTER_PORT"] = str(10000 + int(os.environ["SLURM_JOB_ID"]) % 20000)


def log_to_file(path: Path) -> None:
    """Send this process's stdout and stderr (Python and C++ alike) to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def reduce_sum(*values: torch.Tensor) -> None:
    """Add each tensor up over all ranks, in place (nothing to do in one process)."""
    if dist.is_available() and dist.is_initialized():
        for value in values:
            dist.all_reduce(value)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on one: ranks must stop at the same step, or they deadlock."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextmanager
def fail_on_purpose(debug: Mapping[str, Any]) -> Iterator[None]:
    """`+debug.fail_rank=R +debug.fail_step=S`: rank R raises before its optimizer step S (0-based, counted from
    the start of this process), to rehearse a crashed rank. A global optimizer-step pre-hook: both engines call
    `optimizer.step()`, so neither training loop has to know about it."""
    fail_rank, fail_step = debug.get("fail_rank"), debug.get("fail_step", 0)
    if fail_rank is None or current_world().rank != fail_rank:
        yield
        return
    steps = itertools.count()

    def fail(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if next(steps) == fail_step:
            raise RuntimeError(f"debug.fail_rank={fail_rank}: rank {fail_rank} fails on purpose at step {fail_step}")

    handle = register_optimizer_step_pre_hook(fail)
    try:
        yield
    finally:
        handle.remove()


def record_error(error: BaseException) -> None:
    """Write the error where the elastic launcher reads it (TORCHELASTIC_ERROR_FILE), so the launching process can
    name it (once), in torch's ErrorHandler format. Written whole, then renamed: the launcher parses the file of every
    rank that ended, and a rank stopped in the middle of torch's own write (open, then dump) left an empty file, which
    ended the launcher in a JSONDecodeError traceback instead of the run's one line."""
    import json
    import time
    import traceback

    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if getattr(error, "recorded", False) or not path:
        return
    stack = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    data = {
        "message": {
            "message": f"{type(error).__name__}: {error}",
            "extraInfo": {"py_callstack": stack, "timestamp": str(int(time.time()))},
        }
    }
    partial = f"{path}.{os.getpid()}.partial"
    with open(partial, "w") as file:
        json.dump(data, file)
    os.replace(partial, path)
    error.recorded = True
