"""engine=lightning: the same training as engines/raw.py, with Lightning's Trainer running the loop.

What stays here is what is specific to the task (the steps and the optimizer); the Trainer takes care of
devices, precision, accumulation, clipping, scheduler stepping, checkpoints and logging, from the same
configs/trainer/*.yaml keys that engine=raw implements by hand.
"""

import logging
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from .. import summaries
from ..data import DataPipeline
from ..distributed import current_world, fail_if_asked
from ..errors import TrainingStopped
from ..guards import NonFiniteLossGuard
from ..launch import build_model, get_rng_state, progress_bar_enabled, set_rng_state, write_hparams
from ..optim import build_optimizer, build_schedule, check_resumable


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
        self.non_finite: NonFiniteLossGuard | None = None
        self.debug = OmegaConf.to_container(cfg.debug)  # read at every step: a dict lookup, not OmegaConf's

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        fail_if_asked(self.debug, self.global_step)  # +debug.fail_rank=R +debug.fail_step=S: a crashed rank
        inputs, targets = batch
        loss = F.cross_entropy(self.model(inputs), targets)
        if self.non_finite is None:
            self.non_finite = NonFiniteLossGuard(self.device)
        self.non_finite.record(loss, inputs, self.current_epoch, self.global_step)
        # self.log costs about a millisecond per call on a CPU, more than the rest of what Lightning adds to a
        # small model's step: call it where the value is used, at the steps the logger writes and at the last
        # step of an epoch or of the run (the final train/loss in metrics.json).
        step = self.global_step + 1
        if step % self.trainer.log_every_n_steps == 0 or self.trainer.is_last_batch or step == self.trainer.max_steps:
            self.log("train/loss", loss)
            self.log("lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning does not save RNG states; without them dropout after a resume would differ.
        checkpoint["rng"] = get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for state in checkpoint.get("lr_schedulers", []):
            check_resumable(state, self.trainer.estimated_stepping_batches)
        if "rng" in checkpoint:
            set_rng_state(checkpoint["rng"])

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Called after unscaling, before clipping: the same gradients engine=raw measures.
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.global_step % self.trainer.log_every_n_steps == 0 and self.non_finite is not None:
            self.non_finite.check(self.model)

    def on_validation_epoch_start(self) -> None:
        if self.non_finite is not None:  # before ModelCheckpoint can save a broken state
            self.non_finite.check(self.model)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "test", self.test_acc)  # the logits, for TensorBoardSummaries

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str,
                  accuracy: MulticlassAccuracy) -> torch.Tensor:
        inputs, targets = batch
        logits = self.model(inputs)
        # Epoch values are means weighted by batch size: the mean over samples, as engine=raw computes;
        # sync_dist adds up the sums of every rank under DDP (the accuracy metric syncs itself).
        self.log(f"{stage}/loss", F.cross_entropy(logits.float(), targets), batch_size=len(targets), sync_dist=True)
        accuracy.update(logits, targets)
        self.log(f"{stage}/acc", accuracy)
        return logits

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
        self.started: float | None = None  # None: a run resumed mid-epoch skips that epoch's start hook
        self.train_started_at: float | None = None

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.train_started_at = time.perf_counter()  # start-up ends here (metrics.json: startup_s)

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.started is not None:
            self.times.append(time.perf_counter() - self.started)


class TensorBoardSummaries(L.Callback):
    """TensorBoard beyond the scalars (summaries.py), at the points where engine=raw writes it; rank 0 writes."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg, self.settings = cfg, summaries.Settings.from_config(cfg.logger.tensorboard)
        self.batch_idx = 0
        self.mistakes: summaries.Mistakes | None = None

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero and trainer.global_step == 0:  # once per run: a resumed run has them already
            summaries.add_input_images(trainer.logger.experiment, self.settings, trainer.datamodule.train_set)
            summaries.add_graph(trainer.logger.experiment, self.settings, module.model, trainer.datamodule.train_set)

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.batch_idx = batch_idx

    def on_before_optimizer_step(self, trainer: L.Trainer, module: L.LightningModule, optimizer: Any) -> None:
        # After unscaling, before clipping and zero_grad: the gradients engine=raw records.
        if trainer.is_global_zero and summaries.histograms_due(self.settings, trainer.current_epoch, self.batch_idx,
                                                               trainer.accumulate_grad_batches):
            summaries.add_histograms(trainer.logger.experiment, module.model, trainer.global_step)

    def on_test_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.mistakes = summaries.Mistakes(self.settings, self.cfg.data.num_classes, module.device)

    def on_test_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self.mistakes.update(batch[0], outputs, batch[1])  # outputs: test_step's logits

    def on_test_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        writer = trainer.logger.experiment if trainer.is_global_zero else None
        self.mistakes.write(writer, trainer.global_step)  # on every rank: the confusion matrix syncs under DDP
        if writer is not None:
            summaries.add_hparams(writer, self.settings, self.cfg)


class SaveOnStop(L.Callback):
    """SIGTERM or Ctrl-C: Lightning finishes the current step and raises; save last.ckpt to resume from.

    Other exceptions (a non-finite loss, a bug) save nothing, so last.ckpt keeps the last good state.
    """

    def __init__(self, path: Path) -> None:
        self.path, self.signal = path, None

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            self.signal = signal.SIGTERM if isinstance(exception, SIGTERMException) else signal.SIGINT
            trainer.save_checkpoint(self.path, weights_only=False)  # everything, to resume


def quiet_lightning() -> None:
    """Keep Lightning's banners and advice off the terminal; real warnings still show."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)
    # Lightning's own use of a torch API that torch has deprecated: nothing the user can act on.
    warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
    # A resumed run writes into its own checkpoints/ folder on purpose.
    warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")
    # Advice for large datasets: the bundled data is a tensor in memory, where workers only cost start-up.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")


def fit(cfg: DictConfig, run_dir: Path, ckpt_path: Path | None = None) -> dict[str, Any]:
    """Train with validation every epoch, then test with the best checkpoint. Returns the final metrics."""
    quiet_lightning()
    summaries_callback = TensorBoardSummaries(cfg)  # checks the TensorBoard switches before any work
    data = DataModule(cfg.data, seed=cfg.seed)
    module = Classifier(build_model(cfg.model), cfg)
    timer = EpochTimer()
    stop = SaveOnStop(run_dir / "checkpoints" / "last.ckpt")
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor=cfg.callbacks.model_checkpoint.monitor,
        mode=cfg.callbacks.model_checkpoint.mode, enable_version_counter=False,
    )
    # A second checkpoint with no monitor keeps the latest epoch. (ModelCheckpoint's own save_last=True
    # writes last.ckpt only in epochs where the monitored metric improved, so it can lag behind.)
    latest = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", enable_version_counter=False)
    logger = TensorBoardLogger(save_dir=run_dir, name=cfg.logger.tensorboard.subdir, version="",
                               default_hp_metric=False)
    if current_world().is_main:  # under DDP, rank 0 alone writes (the process group exists: distributed.py)
        write_hparams(cfg, Path(logger.log_dir))
    # tqdm on a terminal only, as in engine=raw (with `rich` installed Lightning would pick its much slower
    # rich progress bar).
    show_progress = progress_bar_enabled(cfg.trainer)
    # TensorBoardSummaries before the timer: its one-off images and graph count as start-up, as in engine=raw.
    callbacks = [checkpoint, latest, summaries_callback, timer, stop] + \
        ([TQDMProgressBar()] if show_progress else [])
    if cfg.callbacks.get("early_stopping"):
        callbacks.append(EarlyStopping(**cfg.callbacks.early_stopping))
    trainer = L.Trainer(**trainer_arguments(cfg, show_progress), logger=logger, callbacks=callbacks,
                        default_root_dir=run_dir)

    try:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    except (SIGTERMException, SystemExit):  # Lightning exits on Ctrl-C after its on_exception hooks
        if stop.signal is None:
            raise
        raise TrainingStopped.by_signal(stop.signal, trainer.current_epoch, trainer.global_step,
                                        run_dir / "checkpoints", "lightning") from None
    fit_metrics = {k: v.item() for k, v in trainer.callback_metrics.items()}
    trainer.test(module, datamodule=data, ckpt_path=checkpoint.best_model_path or None, verbose=False,
                 weights_only=True)
    test_metrics = {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("test/")}

    return {
        "device": str(module.device),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "train/loss": fit_metrics.get("train/loss", float("nan")),
        **{k: v for k, v in fit_metrics.items() if k.startswith("val/")},
        "best_score": checkpoint.best_model_score.item() if checkpoint.best_model_score is not None else None,
        "monitor": checkpoint.monitor,
        **test_metrics,
        "epoch_times_s": [round(t, 4) for t in timer.times],
        "train_started_at": timer.train_started_at,
    }


def trainer_arguments(cfg: DictConfig, show_progress: bool) -> dict[str, Any]:
    """lightning.Trainer arguments: configs/trainer/*.yaml plus the debug switches."""
    # The data pipeline gives each rank its DistributedSampler itself, the same one engine=raw uses.
    return {**cfg.trainer, "enable_progress_bar": show_progress, "detect_anomaly": bool(cfg.debug.detect_anomaly),
            "use_distributed_sampler": False}
