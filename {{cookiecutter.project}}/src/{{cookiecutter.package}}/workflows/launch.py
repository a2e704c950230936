"""The top of a run: check the config, launch or join the DDP workers, seed, train with the chosen engine, write
metrics.json. train.py (and worker.py, in each DDP worker) calls `train(cfg, run_dir)`; nothing below imports
this module. The engine is imported only once chosen, so engine=raw never imports lightning.
"""

import hashlib
import json
import random
import resource
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..core import datasets
from ..core.data import check_worker_socket
from ..core.errors import UserError
from ..core.models import build_model, check_model
from ..core.task import check_schedule
from ..run import device
from ..run.checkpoint import load_for_resume, load_weights, prepare_checkpoint_dir
from ..run.config_rules import validate
from ..run.distributed import check_distributed, fail_on_purpose, is_ddp, launch_workers, launched_world, process_group
from ..run.rundir import check_new_run_folder, find_checkpoint, remove_refused_run
from ..watching import loggers, summaries

ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")


def check_accelerator(trainer: DictConfig) -> None:
    """Fail before any work when the requested device is not on this machine."""
    accelerator = trainer.accelerator
    if accelerator not in ACCELERATORS:
        raise UserError(f"trainer.accelerator={accelerator!r} is not known: use one of {', '.join(ACCELERATORS)}")
    missing = missing_device(accelerator)
    if missing is not None:
        raise UserError(missing)
    on_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    check_precision(str(trainer.precision), "cuda" if on_cuda else "not cuda")
    check_distributed(trainer)


def missing_device(accelerator: str) -> str | None:
    """Why trainer.accelerator=<accelerator> cannot run on this machine, or None."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return (
            f"trainer.accelerator={accelerator} needs a CUDA GPU, but torch.cuda.is_available() is "
            f"False on this machine (torch {torch.__version__}, {built}). Train on the CPU with "
            "trainer=cpu, or install a CUDA build of torch (README: Install)"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        return (
            "trainer.accelerator=mps needs an Apple-silicon GPU, but torch.backends.mps.is_available() "
            "is False on this machine. Train on the CPU with trainer=cpu"
        )
    return None


def in_a_sweep() -> bool:
    """Whether this process runs a job of `python train.py -m ...` (Hydra's multirun)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_name() -> str:
    """A job of a sweep by the values the sweep gives it (experiment=cifar10): the keys swept on the command line."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = list(HydraConfig.get().overrides.task)
    try:
        arguments = [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]
        swept = {o.key_or_group for o in OverridesParser.create().parse_overrides(arguments) if o.is_sweep_override()}
    except Exception:  # a command line the parser reads differently: the job's every override, below
        swept = set()
    return " ".join([o for o in task if o.lstrip("+~").split("=")[0] in swept] or task)


def unavailable_here(cfg: DictConfig) -> str | None:
    """Why a job of a sweep cannot run on this machine (its device, its dataset's files), or None. A sweep over
    recipes (-m 'experiment=glob(*)') then runs the others: Hydra's multirun would stop at the first failing job."""
    missing = missing_device(cfg.trainer.accelerator)
    if missing is not None:
        return missing
    dataset = datasets.get(cfg.data.name)
    if dataset.missing_files(cfg.data.root):
        try:  # what the run would do first (its data.download): fetch them, or say where they belong
            dataset.prepare(cfg.data.root, cfg.data.download)
        except UserError as no_data:
            return str(no_data)
    return None


def check_precision(precision: str, device_type: str) -> None:
    """16-mixed (float16 with loss scaling) is a CUDA feature. Lightning would quietly switch to bf16-mixed on
    CPU; both engines refuse instead, so the run is the one that was asked for."""
    if precision == "16-mixed" and device_type != "cuda":
        raise UserError(
            "trainer.precision=16-mixed needs a CUDA GPU (float16 loss scaling); on this device use "
            "trainer.precision=bf16-mixed or 32-true"
        )


def check_config(cfg: DictConfig) -> None:
    """Every value, before any data or model is built: its own rule (config_rules.py), the model's config and
    arguments (core/models/), then this machine."""
    validate(cfg)
    check_model(cfg.model)
    check_schedule(cfg.scheduler)
    check_accelerator(cfg.trainer)
    device.resolve(cfg, device.on_cuda(cfg.trainer.accelerator))  # trainer.benchmark with deterministic
    check_worker_socket(cfg.data)  # TMPDIR short enough for the DataLoader workers
    summaries.Summaries(cfg)  # the TensorBoard switches (the engines read them again)
    loggers.check_installed(cfg)  # a known logger, its library installed


def engine_module(name: str) -> ModuleType:
    """engines/<name>.py, imported once chosen: engine=minimal and engine=raw never import lightning."""
    if name == "minimal":
        from ..engines import minimal as engine
    elif name == "fabric":
        from ..engines import fabric as engine
    elif name == "raw":
        from ..engines import raw as engine
    else:
        from ..engines import lightning as engine
    return engine


def check_engine(cfg: DictConfig) -> None:
    """engine=minimal and engine=fabric refuse, by name and before any work (before DDP workers start), what they
    do not implement (their IMPLEMENTED_KEYS); engine=raw and engine=lightning implement every key."""
    if cfg.engine.name in ("minimal", "fabric"):
        engine_module(cfg.engine.name).check_config(cfg)


def drawn_seed(run_dir: Path) -> int:
    """seed=null: a seed of this run's own, from its folder's name (unique, and the same in every process of a
    DDP run); metrics.json records it."""
    return int.from_bytes(hashlib.sha256(run_dir.name.encode()).digest()[:4], "big") >> 1


def seed_everything(seed: int) -> None:
    """Seed every generator the run draws from: Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def train(cfg: DictConfig, run_dir: Path, started: float | None = None) -> dict[str, Any]:
    """Train, validate and test with the configured engine; write and return the run's metrics.

    `run_dir` is the run's folder (logs/train/<engine>/<run>); with `ckpt_path` set it is the folder of the
    run being resumed (configs/hydra/default.yaml), and `ckpt_path=last` looks for the newest run beside it.
    With trainer.strategy=ddp and no launcher around this process, it starts the workers and waits for them
    (distributed.py); each worker comes back here and trains.
    """
    started = time.perf_counter() if started is None else started
    if in_a_sweep() and (reason := unavailable_here(cfg)) is not None:
        remove_refused_run(run_dir, Path(cfg.paths.log_dir))  # nothing of it ran: no folder left
        print(f"skipped {job_name()}: {reason}", flush=True)
        return {"best_score": None, "skipped": reason}
    check_config(cfg)
    check_engine(cfg)
    checkpoint = find_checkpoint(cfg.ckpt_path, run_dir.parent)
    # Before the DDP workers start (and, under torchrun or srun, in each process before they meet): a new run
    # never writes over one that holds checkpoints or results; ckpt_path continues it.
    check_new_run_folder(run_dir, "train.py", checkpoint)
    if cfg.seed is None:
        cfg.seed = drawn_seed(run_dir)
        print(f"seed=null: this run's seed is {cfg.seed}", flush=True)
    if checkpoint is not None:  # before any work, for both engines: a file that cannot resume this run is one line
        resumed_step = loggers.global_step_of(load_for_resume(checkpoint, cfg.engine.name, build_model(cfg.model)))
    if cfg.get("weights_from") is not None:  # a new run from a checkpoint's weights, which build_model loads
        if checkpoint is not None:
            raise UserError(
                "ckpt_path and weights_from are both set: ckpt_path continues its run exactly, "
                "weights_from starts a new run from a checkpoint's weights; give one of them"
            )
        cfg.weights_from = str(find_checkpoint(cfg.weights_from, run_dir.parent, key="weights_from"))
        load_weights(Path(cfg.weights_from), build_model(cfg.model))
    if launched_world() is None or launched_world().is_main:  # writable, and a killed run's temporary files gone
        prepare_checkpoint_dir(run_dir / "checkpoints")
        if checkpoint is not None:
            loggers.prepare_resume(cfg, run_dir, resumed_step)
    if is_ddp(cfg.trainer) and launched_world() is None:
        if checkpoint is not None:  # the workers resume the very file found here
            cfg = OmegaConf.merge(cfg, {"ckpt_path": str(checkpoint)})
        launch_workers(cfg, run_dir)
        return json.loads((run_dir / "metrics.json").read_text())

    if checkpoint is not None:  # the same first line in both engines
        newest = f" (ckpt_path=last: the newest {cfg.engine.name} run)" if cfg.ckpt_path == "last" else ""
        print(f"resuming {checkpoint}{newest}", flush=True)
    with process_group(cfg, run_dir) as world, fail_on_purpose(cfg.debug):
        tensorboard_dir = loggers.tensorboard_dir(cfg, run_dir)
        if world.is_main and tensorboard_dir and not cfg.trainer.get("fast_dev_run"):  # fast_dev_run logs nothing
            summaries.write_hparams(cfg, tensorboard_dir)  # beside the events
        seed_everything(cfg.seed)
        results = engine_module(cfg.engine.name).fit(cfg, run_dir, checkpoint)
    if not world.is_main:
        return results
    train_started_at = results.pop("train_started_at")
    metrics = {
        "engine": cfg.engine.name,
        "seed": cfg.seed,
        "processes": world.size,
        "tags": list(cfg.get("tags") or []),
        "weights_from": cfg.get("weights_from"),
        **results,
        # From the process start (imports, config, data, model) to the first training step.
        "startup_s": round(train_started_at - started, 3) if train_started_at is not None else None,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),  # of this process (rank 0)
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None,
        "run_dir": str(run_dir),
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(
        f"engine={metrics['engine']} test/acc={metrics['test/acc']:.4f} wall={metrics['wall_time_s']:.1f}s "
        f"run={run_dir}"
    )
    return metrics
