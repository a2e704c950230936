"""engine=lightning: the same training as engines/raw.py, with Lightning's Trainer running the loop.

What stays here is what is specific to the task (the steps and the optimizer); the Trainer takes care of
devices, precision, accumulation, clipping, scheduler stepping, checkpoints and logging, from the same
configs/trainer/*.yaml keys that engine=raw implements by hand.
"""

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from ..data import DataPipeline
from ..launch import progress_bar_enabled
from ..optim import build_optimizer, build_schedule


class DataModule(DataPipeline, L.LightningDataModule):
    """The shared pipeline of data.py, seen by Lightning as a LightningDataModule."""


class Classifier(L.LightningModule):
    """Wraps the plain model (models.py) with its training, validation and test steps."""

    def __init__(self, model: nn.Module, cfg: DictConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.val_acc = MulticlassAccuracy(num_classes=cfg.data.num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=cfg.data.num_classes, average="micro")

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        loss = F.cross_entropy(self.model(inputs), targets)
        self.log("train/loss", loss)
        self.log("lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, accuracy: MulticlassAccuracy) -> None:
        inputs, targets = batch
        logits = self.model(inputs)
        # Epoch values are means weighted by batch size: the mean over samples, as engine=raw computes.
        self.log(f"{stage}/loss", F.cross_entropy(logits.float(), targets), batch_size=len(targets))
        accuracy.update(logits, targets)
        self.log(f"{stage}/acc", accuracy)

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.cfg.optimizer, self.model.parameters())
        schedule = build_schedule(self.cfg.scheduler, optimizer, self.trainer.estimated_stepping_batches)
        if schedule is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule.scheduler, "interval": schedule.interval,
                                 "monitor": schedule.monitor}}


class EpochTimer(L.Callback):
    """Wall time of each epoch (training and validation), for metrics.json."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.times.append(time.perf_counter() - self.started)


def quiet_lightning() -> None:
    """Keep Lightning's banners and advice off the terminal; real warnings still show."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)
    # Lightning's own use of a torch API that torch has deprecated: nothing the user can act on.
    warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
    # Advice for large datasets: the bundled data is a tensor in memory, where workers only cost start-up.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")


def fit(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train with validation every epoch, then test with the best checkpoint. Returns the final metrics."""
    quiet_lightning()
    data = DataModule(cfg.data, seed=cfg.seed)
    module = Classifier(instantiate(cfg.model), cfg)
    timer = EpochTimer()
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor=cfg.callbacks.model_checkpoint.monitor,
        mode=cfg.callbacks.model_checkpoint.mode, save_last=True, enable_version_counter=False,
    )
    logger = TensorBoardLogger(save_dir=run_dir, name=cfg.logger.tensorboard.subdir, version="",
                               default_hp_metric=False)
    # tqdm on a terminal only, as in engine=raw (with `rich` installed Lightning would pick its much slower
    # rich progress bar).
    show_progress = progress_bar_enabled(cfg.trainer)
    callbacks = [checkpoint, timer] + ([TQDMProgressBar()] if show_progress else [])
    trainer = L.Trainer(**{**cfg.trainer, "enable_progress_bar": show_progress}, logger=logger, callbacks=callbacks,
                        default_root_dir=run_dir)

    trainer.fit(module, datamodule=data)
    fit_metrics = {k: v.item() for k, v in trainer.callback_metrics.items()}
    trainer.test(module, datamodule=data, ckpt_path="best" if checkpoint.best_model_path else None,
                 verbose=False, weights_only=True)
    test_metrics = {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("test/")}

    return {
        "device": str(module.device),
        "epochs": len(timer.times),
        "global_step": trainer.global_step,
        "train/loss": fit_metrics.get("train/loss", float("nan")),
        **{k: v for k, v in fit_metrics.items() if k.startswith("val/")},
        "best_score": checkpoint.best_model_score.item() if checkpoint.best_model_score is not None else None,
        "monitor": checkpoint.monitor,
        **test_metrics,
        "epoch_times_s": [round(t, 4) for t in timer.times],
    }
