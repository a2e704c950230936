"""engine=raw: the whole training run written out in plain PyTorch.

Read `fit` top to bottom: it does by hand what `lightning.Trainer` does for engines/lightning.py, with the
same configs: device and precision, the epoch loop, zero_grad/backward/step, gradient accumulation and
clipping, scheduler stepping, validation, early stopping, TensorBoard, checkpoints that resume exactly,
a clean stop on SIGTERM/Ctrl-C, a test with the best weights, and DDP (one process per device, started by
distributed.py; each process runs this same loop on its share of the data).
This file must not import lightning.
"""

import contextlib
import itertools
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from torchmetrics.classification import MulticlassAccuracy
from tqdm import tqdm

from .. import summaries
from ..checkpoint import load_checkpoint, model_state_dict, save_checkpoint
from ..data import DataPipeline
from ..distributed import NullWriter, any_rank, barrier, current_world, fail_if_asked, is_ddp, reduce_sum
from ..errors import TrainingStopped, UserError
from ..guards import NonFiniteLossGuard
from ..launch import (
    build_model,
    check_precision,
    get_rng_state,
    progress_bar_enabled,
    set_rng_state,
    write_hparams,
)
from ..optim import (
    Schedule,
    build_optimizer,
    build_schedule,
    check_resumable,
    limit_batches,
    total_optimizer_steps,
)

# The keys of configs/trainer/*.yaml that this loop implements. Any other key stops the run before it
# starts: a Lightning setting the raw engine would silently ignore is a bug, not a feature.
SUPPORTED_TRAINER_KEYS = {
    "accelerator", "devices", "precision", "max_epochs", "max_steps", "gradient_clip_val",
    "gradient_clip_algorithm", "accumulate_grad_batches", "check_val_every_n_epoch", "limit_train_batches",
    "limit_val_batches", "limit_test_batches", "log_every_n_steps", "enable_progress_bar", "deterministic",
    "strategy", "num_nodes",
}
PRECISIONS = ("32-true", "64-true", "bf16-mixed", "16-mixed")


def fit(cfg: DictConfig, run_dir: Path, ckpt_path: Path | None = None) -> dict[str, Any]:
    """Train with validation every epoch, then test with the best checkpoint. Returns the final metrics."""
    trainer = cfg.trainer
    check_trainer_keys(trainer)
    tensorboard = summaries.Settings.from_config(cfg.logger.tensorboard)  # its switches, checked up front
    world = current_world()  # rank 0 of 1 unless trainer.strategy=ddp
    device = pick_device(trainer.accelerator, world.local_rank)
    param_dtype, autocast_dtype = parse_precision(str(trainer.precision), device)
    if trainer.deterministic:  # as Lightning does: deterministic kernels, or an error where none exists
        torch.use_deterministic_algorithms(True, warn_only=trainer.deterministic == "warn")
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
    torch.autograd.set_detect_anomaly(bool(cfg.debug.detect_anomaly))  # debug=anomaly: slow, names the bad op

    # Data: the same pipeline the Lightning engine wraps in a LightningDataModule. Under DDP each rank's
    # loaders read its own share (DistributedSampler); data.batch_size is per process.
    data = DataPipeline(cfg.data, seed=cfg.seed)
    data.prepare_data()
    data.setup("fit")
    train_loader, val_loader = data.train_dataloader(), data.val_dataloader()
    train_batches = limit_batches(len(train_loader), trainer.limit_train_batches)
    val_batches = limit_batches(len(val_loader), trainer.limit_val_batches)

    # Model, optimizer, scheduler. OneCycleLR's total_steps comes from the data, as in Lightning.
    model = build_model(cfg.model).to(device=device, dtype=param_dtype)
    # DDP: every rank holds a whole copy of the model; backward() averages the gradients over the ranks, and
    # forward() gives every rank rank 0's batch-norm statistics. In one process ddp_model is the model itself.
    ddp_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if is_ddp(trainer) else model
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    schedule = build_schedule(cfg.scheduler, optimizer, total_optimizer_steps(len(train_loader), trainer))
    # Loss scaling keeps float16 gradients from underflowing; with any other precision it does nothing.
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    accuracy = MulticlassAccuracy(num_classes=cfg.data.num_classes, average="micro").to(device)
    checkpoint_dir = run_dir / "checkpoints"
    monitor, mode = cfg.callbacks.model_checkpoint.monitor, cfg.callbacks.model_checkpoint.mode
    early_stopping = EarlyStopping.from_config(cfg.callbacks.get("early_stopping"))

    # Where the run starts: from scratch, or exactly where a checkpoint left off.
    progress = {"epoch": 0, "batches_done": 0, "global_step": 0, "best_score": None}
    if ckpt_path is not None:
        state = load_checkpoint(ckpt_path)
        if state.get("engine") != "raw":
            raise UserError(f"ckpt_path={ckpt_path} was written by engine={state.get('engine', 'lightning')}: "
                            "resume it with that engine (its weights load anywhere with checkpoint.model_state_dict)")
        if "progress" not in state:
            raise UserError(f"ckpt_path={ckpt_path} holds only the best weights, not the training state: resume "
                            "from last.ckpt (ckpt_path=last)")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if schedule:
            check_resumable(state["scheduler"], total_optimizer_steps(len(train_loader), trainer))
            schedule.scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        early_stopping.load_state_dict(state["early_stopping"])
        progress = state["progress"]
        set_rng_state(state["rng"])
        print(f"resuming {ckpt_path} at epoch {progress['epoch']}, step {progress['global_step']}", flush=True)
    global_step, best_score = progress["global_step"], progress["best_score"]

    # purge_step drops events a crashed run logged after this checkpoint, so curves continue cleanly.
    # Rank 0 alone writes events and checkpoints; the other ranks get a writer that writes nothing.
    if world.is_main:
        write_hparams(cfg, run_dir / cfg.logger.tensorboard.subdir)
    writer = SummaryWriter(run_dir / cfg.logger.tensorboard.subdir, purge_step=global_step or None) \
        if world.is_main else NullWriter()
    # TensorBoard beyond the scalars (summaries.py): what the model sees and its graph, once per run.
    if global_step == 0:  # a resumed run has them already
        summaries.add_input_images(writer, tensorboard, data.train_set)
        summaries.add_graph(writer, tensorboard, model, data.train_set)
    accumulate = trainer.accumulate_grad_batches
    # What the loop reads at every step, as plain values: an OmegaConf lookup costs tens of microseconds, and a
    # few per step add up to percents of a small model's step (benchmarks/engine_overhead.py).
    max_steps, log_every_n_steps = trainer.max_steps, trainer.log_every_n_steps
    clip_val, clip_algorithm = trainer.gradient_clip_val, trainer.gradient_clip_algorithm
    debug = OmegaConf.to_container(cfg.debug)
    non_finite = NonFiniteLossGuard(device)
    last_loss = torch.tensor(float("nan"))
    val_metrics: dict[str, float] = {}
    epoch_times: list[float] = []
    epochs_done = progress["epoch"]
    show_progress = progress_bar_enabled(trainer)

    def save_last(epoch: int, batches_done: int) -> None:
        non_finite.check(model)  # never overwrite the last good state with a broken one
        if not world.is_main:
            return
        state = {
            "engine": "raw",
            "progress": {"epoch": epoch, "batches_done": batches_done, "global_step": global_step,
                         "best_score": best_score},
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.scheduler.state_dict() if schedule else None,
            "scaler": scaler.state_dict(),
            "early_stopping": early_stopping.state_dict(),
            "rng": get_rng_state(),  # dropout masks after a resume are the ones the straight run draws
            "data_order": {"seed": cfg.seed, "epoch": epoch, "batches_done": batches_done},
            "config": OmegaConf.to_yaml(cfg),
            "versions": {"torch": str(torch.__version__), "python": sys.version.split()[0]},
        }
        save_checkpoint(state, checkpoint_dir / "last.ckpt")

    train_started_at = time.perf_counter()  # start-up ends here (metrics.json: startup_s)
    with stop_on_signals() as stop_requested:
        for epoch in range(progress["epoch"], trainer.max_epochs):
            if early_stopping.should_stop or 0 <= trainer.max_steps <= global_step:
                break
            epoch_started = time.perf_counter()
            train_loader.sampler.set_epoch(epoch)  # the shuffle order is a function of (seed, epoch)
            skip = progress["batches_done"] if epoch == progress["epoch"] else 0  # resumed mid-epoch
            model.train()
            batches = tqdm(itertools.islice(enumerate(train_loader), skip, train_batches), total=train_batches - skip,
                           desc=f"Epoch {epoch}", unit="batch", disable=not show_progress, leave=False)
            epoch_finished = True  # False when max_steps ends the run inside this epoch
            for batch_idx, (inputs, targets) in batches:
                if 0 <= max_steps <= global_step:
                    epoch_finished = False
                    break
                fail_if_asked(debug, global_step)  # +debug.fail_rank=R +debug.fail_step=S: a crashed rank
                inputs = inputs.to(device, dtype=param_dtype, non_blocking=True)
                targets = targets.to(device, non_blocking=True)

                steps = (batch_idx + 1) % accumulate == 0 or batch_idx + 1 == train_batches  # the last always steps
                # DDP averages gradients over the ranks in backward(); while accumulating that can wait.
                with no_gradient_sync(ddp_model, not steps):
                    # 1. forward, 2. loss (autocast runs the forward pass in bf16/fp16 under mixed precision)
                    with autocast(device, autocast_dtype):
                        loss = F.cross_entropy(ddp_model(inputs), targets)
                    non_finite.record(loss, inputs, epoch, global_step)  # checked at the logging cadence
                    # 3. backward: gradients add up over `accumulate` batches, each loss scaled down to match
                    #    one big batch (the same normalisation Lightning applies)
                    scaler.scale(loss / accumulate).backward()
                last_loss = loss.detach()
                if not steps:
                    continue  # keep accumulating

                # 4. clip and step, 5. zero the gradients for the next window
                scaler.unscale_(optimizer)  # clip true gradients, not loss-scaled ones
                if summaries.histograms_due(tensorboard, epoch, batch_idx, accumulate):  # before zero_grad
                    summaries.add_histograms(writer, model, global_step)
                log_now = (global_step + 1) % log_every_n_steps == 0
                if log_now:
                    grads = [p.grad for p in model.parameters() if p.grad is not None]
                    writer.add_scalar("train/grad_norm", torch.nn.utils.get_total_norm(grads).item(), global_step)
                clip_gradients(model, clip_val, clip_algorithm)
                learning_rate = optimizer.param_groups[0]["lr"]  # the rate this step uses
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                if schedule and schedule.interval == "step":
                    schedule.scheduler.step()

                # Reading a tensor's value (.item()) waits for the device: only at the logging cadence.
                if log_now:
                    non_finite.check(model)
                    writer.add_scalar("train/loss", last_loss.item(), global_step)
                    writer.add_scalar("lr", learning_rate, global_step)
                    writer.add_scalar("epoch", epoch, global_step)
                    batches.set_postfix(loss=f"{last_loss.item():.4f}")
                global_step += 1
                # SIGTERM/SIGINT (on any rank: under DDP all ranks must stop at the same step, or they would
                # wait for each other forever): the step is done, save it and leave.
                if any_rank(stop_requested() is not None, device):
                    save_last(epoch, batch_idx + 1)
                    writer.close()
                    raise TrainingStopped.by_signal(stop_requested() or signal.SIGTERM, epoch, global_step,
                                                    checkpoint_dir, "raw")

            non_finite.check(model)
            improved = False
            # No validation of an epoch that max_steps cut short (Lightning skips it too).
            if (epoch + 1) % trainer.check_val_every_n_epoch == 0 and epoch_finished:
                val_metrics = evaluate(ddp_model, val_loader, val_batches, accuracy, device, param_dtype,
                                       autocast_dtype)
                # Logged at the index of the epoch's last optimizer step, where Lightning logs them too.
                for name, value in val_metrics.items():
                    writer.add_scalar(f"val/{name}", value, global_step - 1)
                writer.add_scalar("epoch", epoch, global_step - 1)
                score = val_metrics[monitor.removeprefix("val/")]
                improved = best_score is None or (score > best_score if mode == "max" else score < best_score)
                if improved:
                    best_score = score  # the same on every rank: the metrics are reduced over all ranks
                early_stopping.update(val_metrics)
            if schedule and schedule.interval == "epoch":
                step_epoch_scheduler(schedule, val_metrics)
            # Training and validation; the checkpoint writes below are outside it, as in Lightning's EpochTimer.
            epoch_times.append(time.perf_counter() - epoch_started)
            if improved and world.is_main:
                save_checkpoint({"engine": "raw", "model": model.state_dict(), "epoch": epoch,
                                 "global_step": global_step, monitor: best_score,
                                 "config": OmegaConf.to_yaml(cfg)}, checkpoint_dir / "best.ckpt")
            epochs_done = epoch + 1
            save_last(epochs_done, 0)
            print(f"epoch {epoch}: train/loss {last_loss.item():.4f}"
                  + "".join(f"  val/{k} {v:.4f}" for k, v in val_metrics.items()), flush=True)

    # Test with the best weights, as Lightning's trainer.test(ckpt_path="best") does.
    best_path = checkpoint_dir / "best.ckpt"
    barrier()  # rank 0 has finished writing it
    if best_path.is_file():
        model.load_state_dict(model_state_dict(load_checkpoint(best_path)))
    data.setup("test")
    test_loader = data.test_dataloader()
    test_batches = limit_batches(len(test_loader), trainer.limit_test_batches)
    mistakes = summaries.Mistakes(tensorboard, cfg.data.num_classes, device)  # confusion matrix, wrong examples
    test_metrics = evaluate(ddp_model, test_loader, test_batches, accuracy, device, param_dtype, autocast_dtype,
                            observe=mistakes.update)
    for name, value in test_metrics.items():
        writer.add_scalar(f"test/{name}", value, global_step)
    writer.add_scalar("epoch", epochs_done, global_step)
    mistakes.write(writer, global_step)
    summaries.add_hparams(writer, tensorboard, cfg)  # the run's settings beside its final metrics
    writer.close()

    return {
        "device": str(device),
        "epochs": epochs_done,
        "global_step": global_step,
        "train/loss": last_loss.item(),
        **{f"val/{k}": v for k, v in val_metrics.items()},
        "best_score": best_score,
        "monitor": monitor,
        **{f"test/{k}": v for k, v in test_metrics.items()},
        "epoch_times_s": [round(t, 4) for t in epoch_times],
        "train_started_at": train_started_at,
    }


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, num_batches: int, accuracy: MulticlassAccuracy,
             device: torch.device, param_dtype: torch.dtype, autocast_dtype: torch.dtype | None,
             observe: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None) -> dict[str, float]:
    """Mean loss over samples and accuracy, in eval mode (dropout off, batch-norm running statistics).
    `observe(inputs, logits, targets)`, if given, sees every batch (the test set's TensorBoard figures)."""
    model.eval()
    accuracy.reset()
    loss_sum, count = torch.zeros((), device=device), torch.zeros((), device=device)
    for inputs, targets in itertools.islice(loader, num_batches):
        inputs = inputs.to(device, dtype=param_dtype, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, autocast_dtype):
            logits = model(inputs).float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum")
        count += len(targets)
        accuracy.update(logits, targets)
        if observe is not None:
            observe(inputs, logits, targets)
    reduce_sum(loss_sum, count)  # under DDP: over every rank's share of the data (accuracy syncs itself)
    if count == 0:
        return {"loss": float("nan"), "acc": float("nan")}
    return {"loss": (loss_sum / count).item(), "acc": accuracy.compute().item()}


def check_trainer_keys(trainer: DictConfig) -> None:
    unknown = sorted(set(trainer) - SUPPORTED_TRAINER_KEYS)
    if unknown:
        raise UserError(f"trainer.{unknown[0]} is not implemented by engine=raw (it implements: "
                        f"{', '.join(sorted(SUPPORTED_TRAINER_KEYS))}); remove it or use engine=lightning")


def pick_device(accelerator: str, local_rank: int = 0) -> torch.device:
    """Lightning's accelerator names mapped to a torch.device ('auto' prefers CUDA, then MPS).
    Under DDP each process on a machine takes the GPU of its local rank."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    if accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        return torch.device("mps")
    return torch.device("cpu")


def parse_precision(precision: str, device: torch.device) -> tuple[torch.dtype, torch.dtype | None]:
    """(dtype of the parameters, dtype autocast computes in or None) for Lightning's precision names."""
    if precision not in PRECISIONS:
        raise UserError(f"trainer.precision={precision!r} is not implemented by engine=raw: use one of "
                        f"{', '.join(PRECISIONS)}")
    check_precision(precision, device.type)
    if precision == "64-true" and device.type == "mps":
        raise UserError("trainer.precision=64-true is not supported on mps: use 32-true")
    return {
        "32-true": (torch.float32, None),
        "64-true": (torch.float64, None),
        "bf16-mixed": (torch.float32, torch.bfloat16),
        "16-mixed": (torch.float32, torch.float16),
    }[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision: ops that are safe in lower precision run in `dtype`; off when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def no_gradient_sync(model: nn.Module, skip: bool):
    """DDP's no_sync(): gradients stay local to the rank for this forward/backward (accumulation)."""
    if skip and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def clip_gradients(model: nn.Module, clip_val: float | None, algorithm: str) -> None:
    if not clip_val:
        return
    if algorithm == "norm":
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_val)
    elif algorithm == "value":
        torch.nn.utils.clip_grad_value_(model.parameters(), clip_val)
    else:
        raise UserError(f"trainer.gradient_clip_algorithm={algorithm!r} is not valid: use 'norm' or 'value'")


def step_epoch_scheduler(schedule: Schedule, val_metrics: dict[str, float]) -> None:
    """Epoch-interval schedulers step after validation; ReduceLROnPlateau reads the monitored metric."""
    if isinstance(schedule.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        value = val_metrics.get(schedule.monitor.removeprefix("val/"))
        if value is None:
            return  # no validation this epoch: nothing to compare
        schedule.scheduler.step(value)
    else:
        schedule.scheduler.step()


class EarlyStopping:
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` validations
    (Lightning's EarlyStopping rule). Disabled when callbacks.early_stopping is null."""

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
            print(f"early stopping: {self.monitor} has not improved for {self.wait} validations "
                  f"(best {self.best:.4f})", flush=True)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "should_stop": self.should_stop}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait, self.should_stop = state["best"], state["wait"], state["should_stop"]


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM and SIGINT (Ctrl-C) ask the loop to stop after the current step instead of killing it.

    Yields a function that returns the signal received, or None. A second Ctrl-C stops at once.
    """
    received: list[int] = []

    def handler(signum, frame):
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield lambda: received[0] if received else None
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
