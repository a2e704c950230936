"""engine=lightning: the same task (task.py) under Lightning's Trainer, written as a Lightning user writes it.

`fit` runs the Trainer (fit, then test), `Classifier` is the LightningModule whose steps call task.py, `DataModule`
the shared data pipeline. What keeps the numbers, files and stops equal to engine=raw's is in lightning_parity.py:
callbacks, each saying in one line what Lightning does differently. This file and engines/raw.py carry the same
`# -- section --` markers in the same order: where engine=raw writes a section by hand, this one names the Trainer
argument, the hook or the parity callback that does it.
"""

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig
from torchmetrics import Metric

from ..core import data, task
from ..run import console, device
from ..run.checkpoint import initial_model
from ..watching import loggers
from .lightning_parity import (
    AtomicCheckpointIO,
    EpochTimer,
    ExactResume,
    NonFiniteGuard,
    SaveOnStop,
    TensorBoardSummaries,
    profiler,
)

# -- fit --


def fit(cfg: DictConfig, run_dir: Path, ckpt_path: Path | None = None) -> dict[str, Any]:
    """Train with validation every epoch, then test with the best checkpoint. Returns the final metrics."""
    console.quiet_lightning()
    settings = device.apply(cfg, device.on_cuda(cfg.trainer.accelerator))  # CUDA speed settings, as engine=raw
    datamodule = DataModule(cfg.data, seed=cfg.seed, batch_limits=cfg.trainer)
    module = Classifier(initial_model(cfg, settings.channels_last), cfg)
    datamodule.channels_last = settings.channels_last  # its on_after_batch_transfer: NHWC images on CUDA
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
    early_stopping = [EarlyStopping(**cfg.callbacks.early_stopping)] if cfg.callbacks.early_stopping else []
    # tqdm on a terminal, as engine=raw (with `rich` installed Lightning would pick its slower bar)
    progress_bar = [TQDMProgressBar()] if console.progress_bar_enabled(cfg.trainer) else []
    timer, stop = EpochTimer(), SaveOnStop(checkpoints / "last.ckpt")
    parity = [ExactResume(), NonFiniteGuard(), TensorBoardSummaries(cfg), timer, stop]  # lightning_parity.py
    trainer = L.Trainer(
        **trainer_arguments(cfg),
        logger=loggers.lightning_loggers(cfg, run_dir),
        callbacks=[best, latest, *parity, *early_stopping, *progress_bar],
        default_root_dir=run_dir,
        plugins=[AtomicCheckpointIO()],
    )
    loggers.log_hyperparams(trainer.loggers, cfg, resumed=ckpt_path is not None)

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:  # SaveOnStop saved last.ckpt
        raise stop.stopped(trainer) from None
    except SystemExit:  # Lightning's exit on a second Ctrl-C (the first one stops after the step: SaveOnStop)
        raise KeyboardInterrupt from None  # as engine=raw
    fit_metrics = {k: v.item() for k, v in trainer.callback_metrics.items() if k in console.EPOCH_FIELDS}
    best_path = best.best_model_path or None  # None where no best.ckpt was written (debug=fdr): the weights as trained
    trainer.test(module, datamodule=datamodule, ckpt_path=best_path, verbose=False, weights_only=True)
    return {
        "device": str(module.device),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "train/loss": float("nan"),
        **fit_metrics,  # the latest train/loss and val/* logged
        "best_score": best.best_model_score.item() if best.best_model_score is not None else None,
        "monitor": best.monitor,
        **{k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("test/")},
        **timer.recorded(),
        **device.recorded(settings, trainer.train_dataloader),
    }


def trainer_arguments(cfg: DictConfig) -> dict[str, Any]:
    """lightning.Trainer arguments: configs/trainer/*.yaml as they are, the debug switch, the console as
    engine=raw's (no model summary), data.py's DistributedSampler, the one engine=raw uses, for
    profiler=pytorch engine=raw's schedule, and trainer.benchmark resolved for the device (run/device.py)."""
    return {
        **cfg.trainer,
        "benchmark": device.resolve(cfg, device.on_cuda(cfg.trainer.accelerator)).benchmark,
        "enable_progress_bar": console.progress_bar_enabled(cfg.trainer),
        "enable_model_summary": False,
        "detect_anomaly": bool(cfg.debug.detect_anomaly),
        "use_distributed_sampler": False,
        "profiler": profiler(cfg.trainer.get("profiler")),
    }


# -- device --
# Trainer(accelerator, devices): the accelerator connector picks the device, the strategy moves the model and
# LightningModule.transfer_batch_to_device each batch (non-blocking copies to CUDA). Trainer(benchmark) sets
# cudnn.benchmark; fit sets the matmul precision, initial_model and DataModule the channels_last format (run/device.py).

# -- precision --
# Trainer(precision): the precision plugin runs the steps under torch.autocast (bf16/fp16-mixed), casts to float64
# (64-true) and, for 16-mixed, drives its own GradScaler.

# -- data --


class DataModule(data.DataPipeline, L.LightningDataModule):
    """The shared pipeline of data.py, seen by Lightning as a LightningDataModule. A mid-epoch resume starts after
    the batches done: ExactResume (lightning_parity.py) saves how far the epoch got and calls `resume`."""

    def setup(self, stage: str) -> None:
        self.device = self.trainer.strategy.root_device  # where data.loader=tensor keeps the images
        super().setup(stage)


# -- loop --
# trainer.fit runs the fit loop (epochs, max_steps, validation cadence, limit_*_batches); trainer.test the test.
# EpochTimer (lightning_parity.py) times each epoch and prints engine=raw's line per epoch.

# -- step --


class Classifier(L.LightningModule):
    """The plain model (models.py) with the steps of task.py, which engine=raw's loop calls too."""

    def __init__(self, model: torch.nn.Module, cfg: DictConfig) -> None:
        super().__init__()
        self.model, self.cfg, self.label_smoothing = model, cfg, cfg.loss.label_smoothing
        self.val_acc = task.accuracy(cfg.data.num_classes)
        self.test_acc = task.accuracy(cfg.data.num_classes)

    def training_step(self, batch: task.Batch, batch_idx: int) -> torch.Tensor:
        loss = task.training_step(self.model, batch, self.label_smoothing)
        # Logged where the value is used: the steps the logger writes, the last of an epoch or of the run
        # (logging every step made the default epoch measurably slower{% if cookiecutter.include_benchmarks %}: benchmarks/README.md{% endif %}).
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
                "frequency": schedule.frequency,
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
# Lightning has no guard: NonFiniteGuard (lightning_parity.py) is engine=raw's, as a callback.


# -- checkpoints --
# ModelCheckpoint `best` and `latest` (fit); AtomicCheckpointIO (lightning_parity.py) writes the files as
# engine=raw does, ExactResume adds what an exact resume needs and Lightning does not save.


# -- logging --
# TensorBoardLogger (fit) writes every self.log value at log_every_n_steps; validation values per epoch.
# TensorBoardSummaries (lightning_parity.py) writes the gradient norm, histograms, images, graph and the rest.


# -- signals --
# SaveOnStop (lightning_parity.py): SIGTERM and Ctrl-C stop after the step, on every rank alike, and save last.ckpt.


# -- DDP --
# distributed.py starts the processes and joins the group before the Trainer exists: Lightning's DDP strategy finds
# it and launches nothing. use_distributed_sampler=False keeps data.py's sampler; sync_dist and the metric reduce
# the validation values over the ranks.
