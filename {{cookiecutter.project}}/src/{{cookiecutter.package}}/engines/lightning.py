"""engine=lightning: the same task (task.py) under Lightning's Trainer, as short as Lightning allows.

The idiomatic core is `fit` (the Trainer, fit, test) and `Classifier` (a LightningModule whose steps call
task.py). Each callback below them exists only to keep parity with engine=raw or to measure, and says why in
one line. This file and engines/raw.py carry the same `# -- section --` markers in the same order: where
engine=raw writes a section by hand, this one names the Trainer argument or hook that does it.
"""

import contextlib
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins import TorchCheckpointIO
from lightning.pytorch.profilers import PyTorchProfiler
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig
from torchmetrics import Metric

from ..core import data, errors, task
from ..run import console, guards
from ..run.checkpoint import get_rng_state, initial_model, save_checkpoint, set_rng_state
from ..run.distributed import any_rank
from ..watching import loggers, summaries

# -- fit --


def fit(cfg: DictConfig, run_dir: Path, ckpt_path: Path | None = None) -> dict[str, Any]:
    """Train with validation every epoch, then test with the best checkpoint. Returns the final metrics."""
    console.quiet_lightning()
    datamodule = DataModule(cfg.data, seed=cfg.seed, batch_limits=cfg.trainer)
    module = Classifier(initial_model(cfg), cfg)
    checkpoints = run_dir / "checkpoints"
    best = ModelCheckpoint(
        dirpath=checkpoints,
        filename="best",
        monitor=cfg.callbacks.model_checkpoint.monitor,
        mode=cfg.callbacks.model_checkpoint.mode,
        enable_version_counter=False,
    )
    # A second, unmonitored ModelCheckpoint keeps the latest epoch (save_last=True on `best` writes last.ckpt only
    # in epochs where the monitored metric improved).
    latest = ModelCheckpoint(dirpath=checkpoints, filename="last", enable_version_counter=False)
    timer, stop, early_stopping = EpochTimer(), SaveOnStop(checkpoints / "last.ckpt"), cfg.callbacks.early_stopping
    callbacks = [
        best,
        latest,
        ExactResume(),
        NonFiniteGuard(),
        TensorBoardSummaries(cfg),
        timer,
        stop,
        *([EarlyStopping(**early_stopping)] if early_stopping else []),
        # tqdm on a terminal, as engine=raw (with `rich` installed Lightning would pick its slower bar)
        *([TQDMProgressBar()] if console.progress_bar_enabled(cfg.trainer) else []),
    ]
    trainer = L.Trainer(
        **trainer_arguments(cfg),
        logger=loggers.lightning_loggers(cfg, run_dir),
        callbacks=callbacks,
        default_root_dir=run_dir,
        plugins=[AtomicCheckpointIO()],
    )
    loggers.log_hyperparams(trainer.loggers, cfg, resumed=ckpt_path is not None)

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:  # SaveOnStop saved last.ckpt
        raise errors.TrainingStopped.by_signal(
            stop.received(), trainer.current_epoch, trainer.global_step, checkpoints
        ) from None
    except SystemExit:  # Lightning's exit on a second Ctrl-C (the first one stops after the step: SaveOnStop)
        raise KeyboardInterrupt from None  # as engine=raw
    fit_metrics = {k: v.item() for k, v in trainer.callback_metrics.items() if k in console.EPOCH_FIELDS}
    trainer.test(
        module, datamodule=datamodule, ckpt_path=best.best_model_path or None, verbose=False, weights_only=True
    )
    return {
        "device": str(module.device),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "train/loss": float("nan"),
        **fit_metrics,  # the latest train/loss and val/* logged
        "best_score": best.best_model_score.item() if best.best_model_score is not None else None,
        "monitor": best.monitor,
        **{k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("test/")},
        "epoch_times_s": [round(t, 4) for t in timer.times],
        "train_started_at": timer.train_started_at,
    }


def trainer_arguments(cfg: DictConfig) -> dict[str, Any]:
    """lightning.Trainer arguments: configs/trainer/*.yaml as they are, the debug switch, the console as
    engine=raw's (no model summary), data.py's DistributedSampler, the one engine=raw uses, and for
    profiler=pytorch engine=raw's schedule (Lightning's default one records every step of a short run)."""
    profiler = cfg.trainer.get("profiler")
    return {
        **cfg.trainer,
        "enable_progress_bar": console.progress_bar_enabled(cfg.trainer),
        "enable_model_summary": False,
        "detect_anomaly": bool(cfg.debug.detect_anomaly),
        "use_distributed_sampler": False,
        "profiler": PyTorchProfiler(schedule=torch.profiler.schedule(wait=1, warmup=1, active=3, repeat=1))
        if profiler == "pytorch"
        else profiler,
    }


# -- device --
# Trainer(accelerator, devices): the accelerator connector picks the device, the strategy moves the model and
# LightningModule.transfer_batch_to_device each batch.

# -- precision --
# Trainer(precision): the precision plugin runs the steps under torch.autocast (bf16/fp16-mixed), casts to float64
# (64-true) and, for 16-mixed, drives its own GradScaler.

# -- data --


class DataModule(data.DataPipeline, L.LightningDataModule):
    """The shared pipeline of data.py, seen by Lightning as a LightningDataModule. Its state in a checkpoint is how
    far into the epoch training got, which a resume hands to data.py (Lightning would replay the epoch from its
    start, as the DataLoader restarts): the state engine=raw saves as `data_order`."""

    def setup(self, stage: str) -> None:
        self.device = self.trainer.strategy.root_device  # where data.loader=tensor keeps the images
        super().setup(stage)

    def state_dict(self) -> dict[str, Any]:
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.completed
        return {"batches_done": done % self.trainer.num_training_batches}  # 0 at the end of an epoch

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.resume(state["batches_done"])


# -- loop --
# trainer.fit runs the fit loop (epochs, max_steps, validation cadence, limit_*_batches); trainer.test the test.


class EpochTimer(L.Callback):
    """To measure and for parity: each epoch's wall time (training and validation) for metrics.json, and the line
    per epoch engine=raw prints (console.py)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.started: float | None = None  # None: a run resumed mid-epoch skips that epoch's start hook
        self.train_started_at: float | None = None

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.train_started_at = time.perf_counter()  # start-up ends here (metrics.json: startup_s)

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.started is not None:
            self.times.append(time.perf_counter() - self.started)
        console.print_epoch(trainer.current_epoch, trainer.callback_metrics)


# -- step --


class Classifier(L.LightningModule):
    """The plain model (models.py) with the steps of task.py, which engine=raw's loop calls too."""

    def __init__(self, model: torch.nn.Module, cfg: DictConfig) -> None:
        super().__init__()
        self.model, self.cfg, self.label_smoothing = model, cfg, cfg.model.get("label_smoothing", 0.0)
        self.val_acc = task.accuracy(cfg.data.num_classes)
        self.test_acc = task.accuracy(cfg.data.num_classes)

    def training_step(self, batch: task.Batch, batch_idx: int) -> torch.Tensor:
        loss = task.training_step(self.model, batch, self.label_smoothing)
        # self.log costs about half a millisecond per call on a CPU: logging every step made the default digits
        # epoch 10 % slower (0.163 s against 0.148 s, medians of 2 runs each, benchmarks/README.md). So call it where
        # the value is used: at the steps the logger writes, and at the last step of an epoch or of the run.
        step = self.global_step + 1
        if step % self.trainer.log_every_n_steps == 0 or self.trainer.is_last_batch or step == self.trainer.max_steps:
            self.log("train/loss", loss)
            self.log("lr", self.optimizers().param_groups[0]["lr"])
        return loss

    # -- accumulation --
    # Trainer(accumulate_grad_batches): the loss divided by it, DDP's no_sync on all but the window's last batch.

    # -- clipping --
    # Trainer(gradient_clip_val, gradient_clip_algorithm): after unscaling, before the optimizer step.

    # -- scheduler --

    def configure_optimizers(self) -> Any:
        optimizer, schedule = task.configure_optimizers(self.cfg, self.model, self.trainer.estimated_stepping_batches)
        if schedule is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": schedule.scheduler,
                "interval": schedule.interval,
                "monitor": schedule.monitor,
            },
        }

    # -- validation --

    def validation_step(self, batch: task.Batch, batch_idx: int) -> None:
        self.evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: task.Batch, batch_idx: int) -> torch.Tensor:
        return self.evaluate(batch, "test", self.test_acc)  # the logits, for TensorBoardSummaries

    def evaluate(self, batch: task.Batch, stage: str, accuracy: Metric) -> torch.Tensor:
        loss_sum, logits = task.evaluation_step(self.model, batch)
        # Epoch values are means weighted by batch size: the mean over samples, as engine=raw computes;
        # sync_dist adds up the sums of every rank under DDP (the accuracy metric syncs itself).
        count = len(batch[1])
        self.log(f"{stage}/loss", loss_sum / count, batch_size=count, sync_dist=True)
        accuracy.update(logits, batch[1])
        self.log(f"{stage}/acc", accuracy)
        return logits


# -- non-finite loss --


class NonFiniteGuard(L.Callback):
    """For parity: engine=raw's guard (guards.py), recorded after each batch on the device, read at the logging
    cadence and before each checkpoint is written."""

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.guard, self.step = guards.NonFiniteLossGuard(), 0

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.step = trainer.global_step  # the step this batch's loss counts towards

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.guard.record(outputs["loss"], batch[0], trainer.current_epoch, self.step)
        if trainer.global_step % trainer.log_every_n_steps == 0:
            self.guard.check(module.model)

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.guard.check(module.model)  # never overwrite the last good state with a broken one


# -- checkpoints --
# ModelCheckpoint `best` and `latest` (fit); the strategy's checkpoint_io writes the files.


class AtomicCheckpointIO(TorchCheckpointIO):
    """For parity and safety: checkpoint.py's write (a temporary file beside the target, fsync, rename), as in
    engine=raw. Lightning's own write goes through a temporary file elsewhere and can leave an empty last.ckpt."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        save_checkpoint(checkpoint, Path(path))


class ExactResume(L.Callback):
    """For parity: Lightning saves no random generator states, without which dropout after a resume would differ;
    and it would stretch a OneCycleLR planned for another number of steps instead of refusing."""

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng"] = get_rng_state()

    def on_load_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        for state in checkpoint.get("lr_schedulers", []):
            task.check_resumable(state, trainer.estimated_stepping_batches)
        if "rng" in checkpoint:
            set_rng_state(checkpoint["rng"])


# -- logging --
# TensorBoardLogger (fit) writes every self.log value at log_every_n_steps; validation values per epoch.


class TensorBoardSummaries(L.Callback):
    """For parity: what engine=raw writes to TensorBoard beyond the loss, lr and metrics, where it writes it: the
    gradient norm, and summaries.py's histograms, images, graph, confusion matrix and hparams. On ranks > 0
    the logger's `experiment` is Lightning's stand-in that writes nothing; without TensorBoard, one of loggers.py."""

    def __init__(self, cfg: DictConfig) -> None:
        self.summaries = summaries.Summaries(cfg)

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        self.writer = loggers.tensorboard_writer(trainer.loggers)

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.summaries.on_train_start(self.writer, module.model, trainer.datamodule.train_set, trainer.global_step)

    def on_before_optimizer_step(self, trainer: L.Trainer, module: L.LightningModule, optimizer: Any) -> None:
        # After unscaling, before clipping and zero_grad, as in engine=raw.
        self.summaries.on_before_optimizer_step(
            self.writer,
            module.model,
            trainer.current_epoch,
            trainer.fit_loop.epoch_loop.batch_idx,
            trainer.accumulate_grad_batches,
            trainer.global_step,
        )
        if (trainer.global_step + 1) % trainer.log_every_n_steps == 0:
            module.log("train/grad_norm", summaries.gradient_norm(module.model))

    def on_test_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.summaries.on_test_start(module.device)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.summaries.on_test_batch_end(batch[0], outputs, batch[1])  # outputs: test_step's logits

    def on_test_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.summaries.on_test_end(self.writer if trainer.is_global_zero else None, trainer.global_step)


# -- signals --


class SaveOnStop(L.Callback):
    """For parity: SIGTERM and Ctrl-C stop after the current optimizer step and its validation (after the epoch's
    end, at its last step), at the same step on every rank, and save last.ckpt to resume from. Lightning alone
    would raise inside the step on Ctrl-C, inside the validation on SIGTERM, and under DDP on each rank at its own
    step (the ranks then wait for each other in the save). So the signal is only recorded (guards.py); after each
    step and epoch the ranks agree (any_rank) and take Lightning's SIGTERM path, which raises SIGTERMException once
    the step or epoch is counted. A second Ctrl-C stops at once and saves nothing, as do other exceptions."""

    def __init__(self, path: Path) -> None:
        self.path, self.signals, self.stopping, self.saved = path, contextlib.ExitStack(), False, False

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.received = self.signals.enter_context(guards.stop_on_signals())

    def stop_if_agreed(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if any_rank(self.received() is not None, module.device):
            self.stopping = trainer._signal_connector.received_sigterm = True  # what Lightning's handler sets

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0 or trainer.is_last_batch:  # a step was taken
            self.stop_if_agreed(trainer, module)

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.stopping:  # the validation runs to its end, then the run stops
            trainer._signal_connector.received_sigterm = False

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.stopping:
            trainer._signal_connector.received_sigterm = True
            if not trainer.is_last_batch and not 0 <= trainer.max_steps <= trainer.global_step:  # mid-epoch: the
                self.save(trainer)  # state ModelCheckpoint saves here, which Lightning's restart counts right

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.stop_if_agreed(trainer, module)  # the fit loop raises once the epoch is counted

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.signals.close()  # Lightning's handlers back, which trainer.fit then restores

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        self.on_train_end(trainer, module)
        if isinstance(exception, SIGTERMException) and not self.saved:
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # everything, to resume
        self.saved = True


# -- DDP --
# distributed.py starts the processes and joins the group before the Trainer exists: Lightning's DDP strategy finds
# it and launches nothing. use_distributed_sampler=False keeps data.py's sampler; sync_dist and the metric reduce
# the validation values over the ranks.
