"""engine=raw: what `lightning.Trainer` does for engines/lightning.py, written out in plain PyTorch.

`fit` reads as `Trainer.fit` then `Trainer.test(ckpt_path="best")`: set up the device, precision, data, model and
optimizer, restore a checkpoint, run the fit loop, test with the best weights. It calls functions named after the
Lightning loop phases and hooks they replace, and `Trainer` keeps the state under Lightning's names
(`trainer.global_step`, `trainer.current_epoch`, ...). This file and engines/lightning.py carry the same
`# -- section --` markers in the same order: open them side by side and scroll them in step.

The ladder (tests/engines/test_ladder.py): engines/minimal.py (the loop a learner writes) -> engines/fabric.py (that
loop under Lightning Fabric) -> this file (everything the Trainer does) -> engines/lightning.py (the Trainer doing
it). This file must not import lightning.
"""

import contextlib
import itertools
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ..core import task
from ..core.data import DataPipeline, limit_batches, memory_format
from ..core.errors import TrainingStopped, UserError
from ..run import console, device
from ..run.checkpoint import (
    get_rng_state,
    initial_model,
    load_checkpoint,
    load_for_resume,
    model_state_dict,
    save_checkpoint,
    set_rng_state,
)
from ..run.distributed import World, any_rank, barrier, current_world, is_ddp, reduce_sum
from ..run.guards import NonFiniteLossGuard, stop_on_signals
from ..watching import loggers, summaries

# The keys of configs/trainer/*.yaml that this engine implements. Any other key stops the run before it
# starts: a Lightning setting the raw engine would silently ignore is a bug, not a feature.
SUPPORTED_TRAINER_KEYS = {
    "accelerator",
    "devices",
    "precision",
    "max_epochs",
    "max_steps",
    "gradient_clip_val",
    "gradient_clip_algorithm",
    "accumulate_grad_batches",
    "check_val_every_n_epoch",
    "limit_train_batches",
    "limit_val_batches",
    "limit_test_batches",
    "log_every_n_steps",
    "enable_progress_bar",
    "deterministic",
    "benchmark",
    "strategy",
    "num_nodes",
    "fast_dev_run",
    "overfit_batches",
    "val_check_interval",
    "profiler",
}
Batch = task.Batch


# -- fit --


def fit(cfg: DictConfig, run_dir: Path, ckpt_path: Path | None = None) -> dict[str, Any]:
    """Train with validation every epoch, then test with the best checkpoint. Returns the final metrics."""
    check_trainer_keys(cfg.trainer)
    trainer = Trainer(cfg, run_dir)
    trainer.summaries = summaries.Summaries(cfg)  # TensorBoard beyond the scalars; its switches checked up front
    trainer.world = current_world()  # rank 0 of 1 unless trainer.strategy=ddp
    trainer.device = pick_device(cfg.trainer.accelerator, trainer.world.local_rank)
    trainer.precision = parse_precision(str(cfg.trainer.precision), trainer.device)
    trainer.device_settings = device.apply(cfg, trainer.device.type == "cuda")  # CUDA speed settings, run/device.py
    set_deterministic(cfg.trainer.deterministic, trainer.device_settings.benchmark)
    torch.autograd.set_detect_anomaly(bool(cfg.debug.detect_anomaly))  # debug=anomaly: slow, names the bad op

    # The data pipeline the Lightning engine wraps in a LightningDataModule, its hooks called by hand.
    trainer.data = DataPipeline(cfg.data, seed=cfg.seed, batch_limits=cfg.trainer, device=trainer.device)
    if trainer.world.local_rank == 0:  # downloads: once per machine, as Lightning calls prepare_data
        trainer.data.prepare_data()
    barrier()  # under DDP the other ranks wait for it
    trainer.data.setup("fit")
    trainer.train_loader = resolve_overfit_batches(trainer, trainer.data.train_dataloader())
    trainer.val_loader = trainer.data.val_dataloader()
    trainer.num_training_batches = limit_batches(len(trainer.train_loader), trainer.limit_train_batches)
    trainer.num_val_batches = limit_batches(len(trainer.val_loader), trainer.limit_val_batches)
    trainer.val_check_batch = val_check_batch(trainer)  # validate after every val_check_batch-th batch

    # The model on the device in the parameter dtype, under DDP also wrapped; configure_optimizers (task.py) for it.
    trainer.model = initial_model(cfg, trainer.device_settings.channels_last)
    trainer.model = trainer.model.to(trainer.device, trainer.precision.param_dtype)
    trainer.ddp_model = wrap_ddp(trainer.model, trainer.device) if is_ddp(cfg.trainer) else trainer.model
    trainer.optimizer, trainer.schedule = task.configure_optimizers(
        cfg, trainer.model, estimated_stepping_batches(trainer)
    )
    # Loss scaling keeps float16 gradients from underflowing; with any other precision it does nothing.
    trainer.scaler = torch.amp.GradScaler(
        trainer.device.type, enabled=trainer.precision.autocast_dtype == torch.float16
    )
    trainer.early_stopping = EarlyStopping.from_config(cfg.callbacks.get("early_stopping"))
    trainer.non_finite = NonFiniteLossGuard()

    if ckpt_path is not None:  # Trainer.fit(ckpt_path=...): continue exactly where the checkpoint left off
        restore_checkpoint(trainer, ckpt_path)
    trainer.loggers = setup_loggers(trainer)

    trainer.train_started_at = time.perf_counter()  # start-up ends here (metrics.json: startup_s)
    with finalize_loggers_on_failure(trainer):
        with stop_on_signals() as trainer.stop_requested, setup_profiler(trainer) as trainer.profiler:
            fit_loop(trainer)
        test_metrics = test_loop(trainer)
    return {
        "device": str(trainer.device),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "train/loss": trainer.last_loss.item(),
        **{f"val/{k}": v for k, v in trainer.val_metrics.items()},
        "best_score": trainer.best_score,
        "monitor": trainer.monitor,
        **{f"test/{k}": v for k, v in test_metrics.items()},
        "epoch_times_s": [round(t, 4) for t in trainer.epoch_times],
        "train_started_at": trainer.train_started_at,
        **device.recorded(trainer.device_settings, trainer.train_loader),
    }


class Trainer:
    """What lightning.Trainer keeps between its loop phases, under Lightning's names. `fit` fills in the objects;
    the settings the loop reads at every step are plain values here (an OmegaConf lookup costs a thousand times a
    plain attribute's, and a few per step add up on a small model{% if cookiecutter.include_benchmarks %}: benchmarks/README.md{% endif %})."""

    world: World
    device: torch.device
    device_settings: device.DeviceSettings
    precision: "Precision"
    data: DataPipeline
    train_loader: DataLoader
    val_loader: DataLoader
    num_training_batches: int
    num_val_batches: int
    model: nn.Module  # the plain model (models.py): what the checkpoints hold
    ddp_model: nn.Module  # the same model wrapped by DistributedDataParallel under DDP, else the model itself
    optimizer: torch.optim.Optimizer
    schedule: task.Schedule | None
    scaler: torch.amp.GradScaler
    early_stopping: "EarlyStopping"
    non_finite: NonFiniteLossGuard
    summaries: summaries.Summaries
    loggers: list[Any]  # configs/logger/'s (loggers.py): Lightning's trainer.loggers
    tensorboard: Any  # the TensorBoard logger's SummaryWriter (else a summaries.NullWriter), for summaries.py
    progress: tqdm  # this epoch's progress bar (disabled off a terminal)
    profiler: "torch.profiler.profile | PassThroughProfiler"
    stop_requested: Callable[[], int | None]
    train_started_at: float

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.config_yaml = OmegaConf.to_yaml(cfg)  # in every checkpoint: rendered once, not at every save
        settings = cfg.trainer
        self.max_epochs, self.max_steps = settings.max_epochs, settings.max_steps
        self.accumulate_grad_batches = settings.accumulate_grad_batches
        self.gradient_clip_val = settings.gradient_clip_val
        self.gradient_clip_algorithm = settings.gradient_clip_algorithm
        self.check_val_every_n_epoch = settings.check_val_every_n_epoch
        self.log_every_n_steps = settings.log_every_n_steps
        self.label_smoothing = cfg.loss.label_smoothing
        init_debugging_flags(self, settings)  # limits, fast_dev_run, overfit_batches, val_check_interval
        self.monitor, self.mode = cfg.callbacks.model_checkpoint.monitor, cfg.callbacks.model_checkpoint.mode
        self.checkpoint_dir = run_dir / "checkpoints"
        # Progress: where the run is (restored from last.ckpt on resume).
        self.current_epoch = 0  # the epoch being trained; after the loop, the number of epochs done
        self.batches_done = 0  # batches of current_epoch already trained (a mid-epoch resume skips them)
        self.global_step = 0  # optimizer steps done
        self.best_score: float | None = None  # of `monitor`, in the epoch whose weights best.ckpt holds
        self.should_stop = False  # set by early stopping
        self.stopping = False  # a stop signal came: stop once the step's validation is done
        self.improved = False  # whether this epoch's validation improved `monitor` (best.ckpt is then rewritten)
        self.last_loss = torch.tensor(float("nan"))
        self.learning_rate = 0.0  # of the latest optimizer step
        self.grad_norm = math.nan  # of the latest logged step (logged with its loss)
        self.val_metrics: dict[str, float] = {}
        self.epoch_times: list[float] = []


def init_debugging_flags(trainer: Trainer, settings: DictConfig) -> None:
    """Lightning's _init_debugging_flags: fast_dev_run=N (debug=fdr) runs N batches of each split in one epoch and
    writes nothing (no TensorBoard, no checkpoints, no early stopping); overfit_batches (debug=overfit) trains and
    validates on the first batches of their splits, every epoch. Both override limit_*_batches."""
    trainer.limit_train_batches, trainer.limit_val_batches = settings.limit_train_batches, settings.limit_val_batches
    trainer.limit_test_batches = settings.limit_test_batches
    trainer.fast_dev_run, trainer.overfit_batches = int(settings.fast_dev_run), settings.overfit_batches
    trainer.val_check_interval = 1.0 if settings.val_check_interval is None else settings.val_check_interval
    if trainer.fast_dev_run:
        batches = trainer.fast_dev_run
        trainer.limit_train_batches = trainer.limit_val_batches = trainer.limit_test_batches = batches
        trainer.max_steps, trainer.max_epochs, trainer.check_val_every_n_epoch = batches, 1, 1
        trainer.val_check_interval = 1.0
    if trainer.overfit_batches > 0:
        trainer.limit_train_batches = trainer.limit_val_batches = trainer.overfit_batches
    # ModelCheckpoint and EarlyStopping act at the end of the epoch, unless validation may run inside it or skip
    # epochs: then after each validation (Lightning's _should_save_on_train_epoch_end, int 1 == 1.0 included).
    trainer.save_on_train_epoch_end = trainer.val_check_interval == 1.0 and trainer.check_val_every_n_epoch == 1


def check_trainer_keys(settings: DictConfig) -> None:
    unknown = sorted(set(settings) - SUPPORTED_TRAINER_KEYS)
    if unknown:
        raise UserError(
            f"trainer.{unknown[0]} is not implemented by engine=raw (it implements: "
            f"{', '.join(sorted(SUPPORTED_TRAINER_KEYS))}); remove it or use engine=lightning"
        )


# -- device --


def pick_device(accelerator: str, local_rank: int = 0) -> torch.device:
    """Lightning's accelerator names mapped to a torch.device ('auto' prefers CUDA, then MPS).
    Under DDP each process on a machine takes the GPU of its local rank."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    if accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        return torch.device("mps")
    return torch.device("cpu")


def batch_to_device(batch: Batch, device: torch.device, precision: "Precision", channels_last: bool = False) -> Batch:
    """LightningModule.transfer_batch_to_device, then the precision plugin's convert_input: floating-point inputs in
    the parameter dtype (float64 under 64-true); other inputs (token ids, masks) keep their dtype, as in Lightning.
    The copies do not wait: from the pinned memory of a loader with data.pin_memory they overlap the GPU's work
    (from other memory they are ordinary copies). channels_last: 4-d inputs in NHWC (run/device.py)."""
    inputs, targets = batch
    dtype = precision.param_dtype if inputs.is_floating_point() else None
    inputs = inputs.to(device, dtype=dtype, non_blocking=True, memory_format=memory_format(inputs, channels_last))
    return inputs, targets.to(device, non_blocking=True)


# -- precision --


class Precision(NamedTuple):
    param_dtype: torch.dtype  # of the parameters and the floating-point inputs
    autocast_dtype: torch.dtype | None  # what autocast computes in; None: no autocast


PRECISIONS = {
    "32-true": Precision(torch.float32, None),
    "64-true": Precision(torch.float64, None),
    "bf16-mixed": Precision(torch.float32, torch.bfloat16),
    "16-mixed": Precision(torch.float32, torch.float16),  # launch.check_precision: CUDA only
}


def parse_precision(precision: str, device: torch.device) -> Precision:
    """Lightning's precision names. (16-mixed off CUDA is refused for both engines in launch.check_precision.)"""
    if precision not in PRECISIONS:
        raise UserError(
            f"trainer.precision={precision!r} is not implemented by engine=raw: use one of {', '.join(PRECISIONS)}"
        )
    if precision == "64-true" and device.type == "mps":
        raise UserError("trainer.precision=64-true is not supported on mps: use 32-true")
    return PRECISIONS[precision]


def autocast(device: torch.device, precision: Precision):
    """Mixed precision: ops that are safe in lower precision run in its dtype; off for the *-true precisions."""
    if precision.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=precision.autocast_dtype)


def set_deterministic(deterministic: bool | str, benchmark: bool | None = None) -> None:
    """Trainer(deterministic=True | "warn" | False, benchmark=...), set as Lightning's _set_torch_flags sets them:
    cudnn.benchmark as given (None: off under deterministic, else left as it is); deterministic kernels, with an
    error (a warning) where an op has none; False switches them off again. Off, torch's default, needs no call: the
    call imports torch's compiler (torch._dynamo, a second of start-up{% if cookiecutter.include_benchmarks %}: benchmarks/README.md{% endif %}) to set its flag too."""
    if deterministic and benchmark is None:
        benchmark = False
    if benchmark is not None:
        torch.backends.cudnn.benchmark = benchmark
    if deterministic or torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(bool(deterministic), warn_only=deterministic == "warn")
    if deterministic:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"  # cuBLAS needs it to be deterministic


# -- data --
# data.py: the pipeline (its hooks called in fit) and limit_batches, Lightning's limit_*_batches.


def resolve_overfit_batches(trainer: Trainer, loader: DataLoader) -> DataLoader:
    """Trainer(overfit_batches): the training loader without shuffling, as Lightning swaps in a SequentialSampler
    over the whole training set (on every rank), so that each epoch trains on the same first batches."""
    if not trainer.overfit_batches:
        return loader
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        persistent_workers=loader.persistent_workers,
        generator=loader.generator,
    )


# -- loop --


def fit_loop(trainer: Trainer) -> None:
    """Lightning's fit loop: epochs until max_epochs, max_steps or early stopping."""
    for epoch in range(trainer.current_epoch, trainer.max_epochs):
        if trainer.should_stop or max_steps_reached(trainer):
            break
        trainer.current_epoch = epoch
        epoch_started = time.perf_counter()
        trainer.improved = False
        train_epoch(trainer)  # with its validations
        on_train_epoch_end(trainer, epoch_started)
        if stop_agreed(trainer):  # a signal in the epoch's last step or after it: stop after its checkpoints
            stop_training(trainer)


def train_epoch(trainer: Trainer) -> None:
    """Lightning's training epoch loop: optimizer steps over the epoch's batches, `accumulate_grad_batches` batches
    each, validation after every val_check_batch-th batch (by default the last: none when max_steps or early
    stopping ends the epoch before it)."""
    if isinstance(trainer.train_loader.sampler, DistributedSampler):  # not under overfit_batches
        trainer.train_loader.sampler.set_epoch(trainer.current_epoch)  # the order: a function of (seed, epoch)
    trainer.model.train()
    # After a mid-epoch resume the loader starts after the batches already trained (restore_checkpoint).
    batches = itertools.islice(
        enumerate(trainer.train_loader, trainer.batches_done), trainer.num_training_batches - trainer.batches_done
    )
    with progress_bar(trainer, batches) as batches:
        for window in accumulation_windows(batches, trainer.accumulate_grad_batches):
            if max_steps_reached(trainer) or trainer.should_stop:
                return
            optimizer_step(trainer, [batch for _, batch in window])
            trainer.global_step += 1
            trainer.batches_done = window[-1][0] + 1
            on_train_batch_end(trainer)
            if should_check_val(trainer):
                validation_loop(trainer)
                trainer.model.train()  # back from eval mode, for the epoch's remaining batches
            if trainer.stopping and not epoch_training_done(trainer):  # at the epoch's end fit_loop stops it
                stop_training(trainer)  # after the step's validation
    trainer.batches_done = 0


def val_check_batch(trainer: Trainer) -> int:
    """Trainer(val_check_interval): an int validates every that many training batches, a float after that
    fraction of the epoch's batches (1.0, the default: at its end), as Lightning's fit loop computes it."""
    interval, batches = trainer.val_check_interval, trainer.num_training_batches
    window = trainer.accumulate_grad_batches
    if isinstance(interval, int) and interval > batches:
        raise UserError(
            f"trainer.val_check_interval={interval} is not valid here: it must be at most the number of "
            f"training batches ({batches}), or a fraction"
        )
    check_batch = interval if isinstance(interval, int) else max(1, int(batches * interval))
    if check_batch % window and check_batch != batches:
        raise UserError(
            f"trainer.val_check_interval={interval} (every {check_batch} batches) with trainer."
            f"accumulate_grad_batches={window} is not implemented by engine=raw: validation inside an "
            "accumulation window; use a multiple of it, or engine=lightning"
        )
    return check_batch


def should_check_val(trainer: Trainer) -> bool:
    """Lightning's _should_check_val_fx: on every check_val_every_n_epoch-th epoch, after each val_check_batch-th
    batch of it (always the end of an accumulation window: val_check_batch)."""
    return (
        trainer.current_epoch + 1
    ) % trainer.check_val_every_n_epoch == 0 and trainer.batches_done % trainer.val_check_batch == 0


def on_train_epoch_end(trainer: Trainer, epoch_started: float) -> None:
    """After validation: the epoch-interval scheduler, the epoch's time, ModelCheckpoint's saves, the console line."""
    schedule = trainer.schedule
    if schedule and schedule.interval == "epoch" and (trainer.current_epoch + 1) % schedule.frequency == 0:
        lr_scheduler_step(schedule, trainer.val_metrics)
    # Training and validation; the checkpoint writes below are outside it, as in Lightning's EpochTimer.
    trainer.epoch_times.append(time.perf_counter() - epoch_started)
    if trainer.improved and trainer.save_on_train_epoch_end:
        trainer_save_checkpoint(trainer, "best.ckpt", weights_only=True)
    trainer.current_epoch += 1  # epochs done: where a resume from this last.ckpt starts
    if trainer.save_on_train_epoch_end:
        trainer_save_checkpoint(trainer, "last.ckpt")
    trained = {} if trainer.last_loss.isnan() else {"train/loss": trainer.last_loss.item()}  # nan: no step yet
    console.print_epoch(trainer.current_epoch - 1, trained | {f"val/{k}": v for k, v in trainer.val_metrics.items()})


def max_steps_reached(trainer: Trainer) -> bool:
    return 0 <= trainer.max_steps <= trainer.global_step


def epoch_training_done(trainer: Trainer) -> bool:
    """Lightning's _is_training_done: the epoch has no batch left to train, or the run no step."""
    return trainer.batches_done >= trainer.num_training_batches or max_steps_reached(trainer)


def estimated_stepping_batches(trainer: Trainer) -> int:
    """Optimizer steps in the whole run, as Lightning's `trainer.estimated_stepping_batches` (OneCycleLR's plan)."""
    per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
    total = per_epoch * max(trainer.max_epochs, 1)
    return min(total, trainer.max_steps) if trainer.max_steps not in (None, -1) else total


# -- step --


def training_step(trainer: Trainer, batch: Batch) -> torch.Tensor:
    """LightningModule.training_step (task.py), with what the Trainer wraps around it: the batch moved to the
    device, autocast, and the non-finite guard's record (on the device: no host sync)."""
    inputs, targets = batch_to_device(batch, trainer.device, trainer.precision, trainer.device_settings.channels_last)
    with autocast(trainer.device, trainer.precision):
        loss = task.training_step(trainer.ddp_model, (inputs, targets), trainer.label_smoothing)
    trainer.non_finite.record(loss, inputs, trainer.current_epoch, trainer.global_step)
    trainer.profiler.step()  # where Lightning's PyTorchProfiler steps: at the end of training_step
    return loss


def optimizer_step(trainer: Trainer, micro_batches: list[Batch]) -> None:
    """One optimizer step on the gradients of `micro_batches`: Lightning's automatic optimization."""
    for index, batch in enumerate(micro_batches):
        with no_backward_sync(trainer.ddp_model, index < len(micro_batches) - 1):
            loss = training_step(trainer, batch)  # 1. forward, 2. loss
            trainer.scaler.scale(loss / trainer.accumulate_grad_batches).backward()  # 3. backward
    trainer.scaler.unscale_(trainer.optimizer)  # the true gradients, for clipping and logging (a no-op unless fp16)
    on_before_optimizer_step(trainer)
    clip_gradients(trainer.model, trainer.gradient_clip_val, trainer.gradient_clip_algorithm)
    trainer.learning_rate = trainer.optimizer.param_groups[0]["lr"]  # the rate this step uses
    trainer.scaler.step(trainer.optimizer)  # 4. step (skipped by the scaler if fp16 gradients overflowed)
    trainer.scaler.update()
    trainer.optimizer.zero_grad(set_to_none=True)  # 5. zero the gradients for the next step
    if trainer.schedule and trainer.schedule.interval == "step":
        trainer.schedule.scheduler.step()
    trainer.last_loss = loss.detach()


# -- accumulation --


def accumulation_windows(batches: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive groups of `size` batches, one optimizer step each; the epoch's last group may be shorter and
    steps too. Each loss is divided by `size` (optimizer_step), as Lightning normalises it: the gradients of a
    window add up to those of one batch `size` times larger."""
    batches = iter(batches)
    while window := list(itertools.islice(batches, size)):
        yield window


def no_backward_sync(model: nn.Module, skip: bool):
    """DDP's no_sync(): the gradients of a micro-batch that does not step stay local to the rank; the window's
    last backward averages the accumulated sums over the ranks at once."""
    if skip and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


# -- clipping --


def clip_gradients(model: nn.Module, clip_val: float | None, algorithm: str) -> None:
    """Trainer(gradient_clip_val, gradient_clip_algorithm): after unscaling, before the optimizer step."""
    if not clip_val:
        return
    if algorithm == "norm":
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_val)
    elif algorithm == "value":
        torch.nn.utils.clip_grad_value_(model.parameters(), clip_val)
    else:
        raise UserError(f"trainer.gradient_clip_algorithm={algorithm!r} is not valid: use 'norm' or 'value'")


# -- scheduler --


def lr_scheduler_step(schedule: task.Schedule, val_metrics: dict[str, float]) -> None:
    """An epoch-interval scheduler steps after validation; ReduceLROnPlateau reads the monitored metric.
    (A step-interval one steps after each optimizer step, in optimizer_step.)"""
    if isinstance(schedule.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        value = val_metrics.get(schedule.monitor.removeprefix("val/"))
        if value is not None:  # None: no validation yet, nothing to compare
            schedule.scheduler.step(value)
    else:
        schedule.scheduler.step()


# -- validation --


def validation_loop(trainer: Trainer) -> None:
    """Lightning's validation loop (at the end of an epoch, or inside it: val_check_interval), then what
    ModelCheckpoint(monitor) and EarlyStopping do with its metrics: best.ckpt is rewritten when `monitor` improved,
    at the epoch's end or, when validation may run inside it, at once (and last.ckpt too)."""
    trainer.val_metrics = evaluation_loop(
        trainer.ddp_model,
        trainer.val_loader,
        trainer.num_val_batches,
        trainer.device,
        trainer.precision,
        channels_last=trainer.device_settings.channels_last,
    )
    log_metrics(
        trainer,
        {**{f"val/{name}": value for name, value in trainer.val_metrics.items()}, "epoch": trainer.current_epoch},
        trainer.global_step - 1,
    )  # the epoch's last step
    if trainer.fast_dev_run:  # Lightning's fast_dev_run: no checkpoints, no early stopping
        return
    score = trainer.val_metrics[trainer.monitor.removeprefix("val/")]  # the same on every rank: reduced over all
    best = trainer.best_score
    trainer.improved = best is None or (score > best if trainer.mode == "max" else score < best)
    if trainer.improved:
        trainer.best_score = score
    trainer.early_stopping.update(trainer.val_metrics)
    trainer.should_stop = trainer.early_stopping.should_stop
    if not trainer.save_on_train_epoch_end:  # ModelCheckpoint.on_validation_end
        if trainer.improved:
            trainer_save_checkpoint(trainer, "best.ckpt", weights_only=True)
        trainer_save_checkpoint(trainer, "last.ckpt")


def test_loop(trainer: Trainer) -> dict[str, float]:
    """Trainer.test(ckpt_path="best"): the test set with the best weights, and its TensorBoard figures."""
    best_path = trainer.checkpoint_dir / "best.ckpt"
    barrier()  # rank 0 has finished writing it
    if best_path.is_file() and not trainer.fast_dev_run:  # fast_dev_run: the weights as they are
        trainer.model.load_state_dict(model_state_dict(load_checkpoint(best_path)))
    trainer.data.setup("test")
    test_loader = trainer.data.test_dataloader()
    num_test_batches = limit_batches(len(test_loader), trainer.limit_test_batches)
    trainer.summaries.on_test_start(trainer.device)
    metrics = evaluation_loop(
        trainer.ddp_model,
        test_loader,
        num_test_batches,
        trainer.device,
        trainer.precision,
        observe=trainer.summaries.on_test_batch_end,
        channels_last=trainer.device_settings.channels_last,
    )
    log_metrics(
        trainer,
        {**{f"test/{name}": value for name, value in metrics.items()}, "epoch": trainer.current_epoch},
        trainer.global_step,
    )
    # The confusion matrix (computed on every rank), the misclassified examples, the hparams: written by rank 0.
    trainer.summaries.on_test_end(trainer.tensorboard if trainer.world.is_main else None, trainer.global_step)
    for logger in trainer.loggers:
        logger.finalize("success")
    return metrics


@torch.no_grad()
def evaluation_loop(
    model: nn.Module,
    loader: DataLoader,
    num_batches: int,
    device: torch.device,
    precision: Precision,
    observe: Callable[..., None] | None = None,
    channels_last: bool = False,
) -> dict[str, float]:
    """Mean loss over samples and accuracy, in eval mode (dropout off, batch-norm running statistics), from
    LightningModule.validation_step / test_step (task.py). `observe(inputs, logits, targets)` sees every batch."""
    model.eval()
    loss_sum, correct, count = (torch.zeros((), device=device) for _ in range(3))
    for batch in itertools.islice(loader, num_batches):
        inputs, targets = batch_to_device(batch, device, precision, channels_last)
        with autocast(device, precision):
            batch_loss_sum, logits = task.evaluation_step(model, (inputs, targets))
        loss_sum += batch_loss_sum
        correct += task.count_correct(logits, targets)
        count += len(targets)
        if observe is not None:
            observe(inputs, logits, targets)
    reduce_sum(loss_sum, correct, count)  # under DDP: over every rank's share of the data
    if count == 0:
        return {"loss": float("nan"), "acc": float("nan")}
    return {"loss": (loss_sum / count).item(), "acc": (correct / count).item()}


class EarlyStopping:
    """Lightning's EarlyStopping rule: stop when `monitor` has not improved by more than `min_delta` for `patience`
    validations. Disabled when callbacks.early_stopping is null."""

    def __init__(self, monitor: str | None = None, mode: str = "min", patience: int = 3, min_delta: float = 0.0):
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, abs(min_delta)
        self.best = math.inf if mode == "min" else -math.inf
        self.wait, self.should_stop = 0, False

    @classmethod
    def from_config(cls, cfg: DictConfig | None) -> "EarlyStopping":
        if not cfg:
            return cls()
        if cfg.mode not in ("min", "max"):
            raise UserError(f"callbacks.early_stopping.mode={cfg.mode!r} is not valid: use 'min' or 'max'")
        return cls(cfg.monitor, cfg.mode, cfg.patience, cfg.min_delta)

    def update(self, val_metrics: dict[str, float]) -> None:
        if self.monitor is None:
            return
        value = val_metrics[self.monitor.removeprefix("val/")]
        improved = value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        if not math.isfinite(value):
            self.should_stop = True
        elif improved:
            self.best, self.wait = value, 0
        else:
            self.wait += 1
            self.should_stop = self.wait >= self.patience
        if self.should_stop:
            print(
                f"early stopping: {self.monitor} has not improved for {self.wait} validations (best {self.best:.4f})",
                flush=True,
            )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "should_stop": self.should_stop}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait, self.should_stop = state["best"], state["wait"], state["should_stop"]


# -- non-finite loss --
# guards.NonFiniteLossGuard: training_step records each loss on the device; it is read back (one host sync) at the
# logging cadence (on_train_batch_end) and before every checkpoint write, and stops the run naming epoch and step.


# -- checkpoints --


def trainer_save_checkpoint(trainer: Trainer, name: str, weights_only: bool = False) -> None:
    """Trainer.save_checkpoint: last.ckpt holds everything to resume exactly; best.ckpt (weights_only) the model.
    Rank 0 writes; the write is atomic (checkpoint.py)."""
    trainer.non_finite.check(trainer.model)  # never overwrite the last good state with a broken one
    if not trainer.world.is_main or trainer.fast_dev_run:  # fast_dev_run: no checkpoints
        return
    state = {"engine": "raw", "model": trainer.model.state_dict(), "config": trainer.config_yaml}
    if weights_only:
        state |= {
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            trainer.monitor: trainer.best_score,
        }
    else:
        state |= {
            "progress": {
                "epoch": trainer.current_epoch,
                "batches_done": trainer.batches_done,
                "global_step": trainer.global_step,
                "best_score": trainer.best_score,
            },
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.schedule.scheduler.state_dict() if trainer.schedule else None,
            "scaler": trainer.scaler.state_dict(),
            "early_stopping": trainer.early_stopping.state_dict(),
            "rng": get_rng_state(),  # dropout masks after a resume are the ones the straight run draws
            "data_order": {
                "seed": trainer.cfg.seed,
                "epoch": trainer.current_epoch,
                "batches_done": trainer.batches_done,
            },
            "versions": {"torch": str(torch.__version__), "python": sys.version.split()[0]},
        }
    save_checkpoint(state, trainer.checkpoint_dir / name)


def restore_checkpoint(trainer: Trainer, path: Path) -> None:
    """What Trainer.fit(ckpt_path=...) restores: weights, optimizer, scheduler, scaler, early stopping, the loop's
    progress and (unlike Lightning, which does not save them) the random generators."""
    state = load_for_resume(path, "raw", trainer.model)  # one line for a file that cannot resume this run
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    if trainer.schedule:
        task.check_resumable(state["scheduler"], estimated_stepping_batches(trainer))
        trainer.schedule.scheduler.load_state_dict(state["scheduler"])
    trainer.scaler.load_state_dict(state["scaler"])
    trainer.early_stopping.load_state_dict(state["early_stopping"])
    progress = state["progress"]
    trainer.current_epoch, trainer.batches_done = progress["epoch"], progress["batches_done"]
    trainer.global_step, trainer.best_score = progress["global_step"], progress["best_score"]
    # overfit_batches: from the first batch. After the epoch's last batch (saved by a validation there) nothing
    # is left to skip: that epoch draws no batch, and a skip set now would cut the next epoch's.
    if (
        isinstance(trainer.train_loader.sampler, DistributedSampler)
        and trainer.batches_done < trainer.num_training_batches
    ):
        trainer.train_loader.sampler.start_after(trainer.batches_done * trainer.cfg.data.batch_size)  # data.py
    set_rng_state(state["rng"])


# -- logging --


def setup_loggers(trainer: Trainer) -> list[Any]:
    """Trainer(logger=...): rank 0 logs to configs/logger/'s loggers (loggers.py: TensorBoard, CSV{% if cookiecutter.include_extra_loggers %}, MLflow, W&B{% endif %}),
    the other ranks and fast_dev_run (Lightning's DummyLogger) to none. A resumed run drops what a crashed one
    logged after its checkpoint. TensorBoard also gets summaries.py's images and graph."""
    trainer.tensorboard = summaries.NullWriter()
    if not trainer.world.is_main or trainer.fast_dev_run:
        return []
    chosen = loggers.raw_loggers(trainer.cfg, trainer.run_dir, trainer.global_step)
    loggers.log_hyperparams(chosen, trainer.cfg, resumed=trainer.global_step > 0)
    trainer.tensorboard = loggers.tensorboard_writer(chosen)  # what summaries.py draws on
    trainer.summaries.on_train_start(trainer.tensorboard, trainer.model, trainer.data.train_set, trainer.global_step)
    return chosen


@contextlib.contextmanager
def finalize_loggers_on_failure(trainer: Trainer) -> Iterator[None]:
    """Lightning's _call_and_handle_interrupt: a run that ends in an exception (a stop signal, a non-finite loss, a
    refused setting) finalizes its loggers as failed: TensorBoard's file closed{% if cookiecutter.include_extra_loggers %}, the MLflow run FAILED, W&B done{% endif %}."""
    try:
        yield
    except BaseException:
        for logger in trainer.loggers:
            logger.finalize("failed")
        raise


def log_metrics(trainer: Trainer, metrics: dict[str, float], step: int) -> None:
    """What Lightning's logger connector does with the values of one step: each logger gets them all at once."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step)


class PassThroughProfiler:
    """Trainer(profiler=None): Lightning's stand-in that records nothing."""

    def step(self) -> None:
        pass


@contextlib.contextmanager
def setup_profiler(trainer: Trainer) -> Iterator["torch.profiler.profile | PassThroughProfiler"]:
    """Trainer(profiler="pytorch") (debug=profiler): torch.profiler around the fit loop, stepped after each
    training_step as Lightning's PyTorchProfiler, on the schedule engines/lightning.py gives it (once: warm up in
    the first step, record the next 3), counted as Lightning counts (from 1). The trace goes where Lightning writes
    its own, beside the TensorBoard events: <run>/tensorboard/fit-training_step.<time>.pt.trace.json."""
    setting = trainer.cfg.trainer.profiler
    if setting is None:
        yield PassThroughProfiler()
        return
    if setting != "pytorch":
        raise UserError(
            f"trainer.profiler={setting} is not implemented by engine=raw: use pytorch, or engine=lightning"
        )
    schedule = torch.profiler.schedule(wait=1, warmup=1, active=3, repeat=1)
    rank = f"-{trainer.world.local_rank}" if trainer.world.size > 1 else ""  # Lightning names the rank, too
    folder = loggers.tensorboard_dir(trainer.cfg, trainer.run_dir) or trainer.run_dir  # Lightning's trainer.log_dir
    trace = torch.profiler.tensorboard_trace_handler(str(folder), f"fit{rank}-training_step")
    with torch.profiler.profile(schedule=lambda step: schedule(step + 1), on_trace_ready=trace) as profiler:
        yield profiler


def on_before_optimizer_step(trainer: Trainer) -> None:
    """After backward and unscaling, before clipping: the gradients as TensorBoard shows them (histograms on their
    epochs, the norm at the logging cadence)."""
    trainer.summaries.on_before_optimizer_step(
        trainer.tensorboard,
        trainer.model,
        trainer.current_epoch,
        trainer.batches_done,
        trainer.accumulate_grad_batches,
        trainer.global_step,
    )
    if (trainer.global_step + 1) % trainer.log_every_n_steps == 0:  # logged with the step's loss
        trainer.grad_norm = summaries.gradient_norm(trainer.model).item()


def on_train_batch_end(trainer: Trainer) -> None:
    """After each optimizer step: the scalars Lightning's logger connector writes every log_every_n_steps (reading
    a tensor's value waits for the device: only then), and whether a stop signal came."""
    step = trainer.global_step - 1  # the index of the step just taken
    if trainer.global_step % trainer.log_every_n_steps == 0:
        trainer.non_finite.check(trainer.model)
        loss = trainer.last_loss.item()
        log_metrics(
            trainer,
            {
                "train/grad_norm": trainer.grad_norm,
                "train/loss": loss,
                "lr": trainer.learning_rate,
                "epoch": trainer.current_epoch,
            },
            step,
        )
        trainer.progress.set_postfix(loss=f"{loss:.4f}")
    trainer.stopping = stop_agreed(trainer)


@contextlib.contextmanager
def progress_bar(trainer: Trainer, batches: Iterable[Any]) -> Iterator[Iterable[Any]]:
    """TQDMProgressBar: on a terminal only (console.py); the same bar Lightning draws."""
    total = trainer.num_training_batches - trainer.batches_done
    with tqdm(
        batches,
        total=total,
        desc=f"Epoch {trainer.current_epoch}",
        unit="batch",
        leave=False,
        disable=not console.progress_bar_enabled(trainer.cfg.trainer),
    ) as bar:
        trainer.progress = bar
        yield bar


# -- signals --
# guards.stop_on_signals turns SIGTERM and Ctrl-C into a request that the loop reads after each step.


def stop_agreed(trainer: Trainer) -> bool:
    """Whether a signal came, on any rank: under DDP all of them stop at the same step, or they would wait for each
    other forever."""
    return any_rank(trainer.stop_requested() is not None, trainer.device)


def stop_training(trainer: Trainer) -> None:
    """The step and its validation (at the epoch's last step: the epoch's end) are done: save last.ckpt, leave."""
    trainer_save_checkpoint(trainer, "last.ckpt")
    raise TrainingStopped.by_signal(  # its loggers finalized as failed by finalize_loggers_on_failure
        trainer.stop_requested(), trainer.current_epoch, trainer.global_step, trainer.checkpoint_dir
    )


# -- DDP --
# distributed.py starts one process per device and joins the process group; the data pipeline gives each rank its
# DistributedSampler share; evaluation_loop adds up loss sums over the ranks (reduce_sum) and the accuracy metric
# syncs itself; rank 0 alone writes checkpoints and events.


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """Every rank holds a whole copy of the model; backward() averages the gradients over the ranks, and forward()
    gives every rank rank 0's batch-norm statistics."""
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
