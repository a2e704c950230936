"""The callbacks that keep engine=lightning at parity with engine=raw: same numbers, same files, same stops.

engines/lightning.py is the Trainer as a Lightning user writes it; each class here exists because Lightning does one
thing differently from engine=raw, and its docstring says what in its first line. They use Lightning's public hooks
and APIs, but for one read (`batches_done`) and one write (`request_lightning_stop`) marked `Lightning private`, each
with the attribute, why no public API does it and the versions checked: tests/engines/test_lightning_parity.py fails
when one of them stops meaning what it is used for.
"""

import contextlib
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins import TorchCheckpointIO
from lightning.pytorch.profilers import PyTorchProfiler
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from ..core import errors, task
from ..run import console, guards
from ..run.checkpoint import get_rng_state, save_checkpoint, set_rng_state
from ..run.distributed import any_rank
from ..watching import loggers, summaries


def profiler(name: str | None) -> Any:
    """Trainer(profiler=): for `pytorch`, engine=raw's schedule (Lightning's default one records every step of a
    short run)."""
    if name == "pytorch":
        return PyTorchProfiler(schedule=torch.profiler.schedule(wait=1, warmup=1, active=3, repeat=1))
    return name


def batches_done(trainer: L.Trainer) -> int:
    """How far into the current epoch training got (0 at an epoch's end).

    Lightning private: `trainer.fit_loop.epoch_loop.batch_progress.current.completed`, checked with Lightning
    2.6.x. `trainer.fit_loop` is public, but the loop and progress classes behind it are private (`_TrainingEpochLoop`,
    `_BatchProgress`) and no public property counts the batches of the epoch that are done; the count includes the
    batch whose validation or checkpoint is running (its `increment_completed` comes before them).
    """
    done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
    return done % trainer.num_training_batches


def request_lightning_stop(trainer: L.Trainer, stop: bool) -> None:
    """Lightning's graceful stop on SIGTERM: its loops raise SIGTERMException once the step (or epoch) is counted,
    and in a validation before its next batch.

    Lightning private: `trainer._signal_connector.received_sigterm`, checked with Lightning 2.6.x. The public
    `trainer.received_sigterm` only reads it; `trainer.should_stop` ends the epoch instead (its end hooks run and it
    counts as done, so a resume would skip the rest of it), where engine=raw stops in the middle and resumes there.
    """
    trainer._signal_connector.received_sigterm = stop


# -- loop --


class EpochTimer(L.Callback):
    """Lightning neither times epochs nor prints a line per epoch: metrics.json and engine=raw's console need both.

    The time is training and validation, without the checkpoint writes after them, as engine=raw times it."""

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

    def recorded(self) -> dict:
        """metrics.json's epoch times and the end of start-up, as engine=raw records them."""
        return {"epoch_times_s": [round(t, 4) for t in self.times], "train_started_at": self.train_started_at}


# -- non-finite loss --


class NonFiniteGuard(L.Callback):
    """Lightning trains on after a NaN or infinite loss: engine=raw stops with guards.py's message, and so does this.

    Recorded after each batch on the device, read at the logging cadence and before each checkpoint is written."""

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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's write can leave an empty last.ckpt when killed: this is checkpoint.py's atomic one, as raw's.

    A temporary file beside the target, fsync, rename; Lightning's goes through a temporary file elsewhere."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        save_checkpoint(checkpoint, Path(path))


class ExactResume(L.Callback):
    """Lightning's resume is not exact (no RNG states, a stopped epoch replayed from its start): this makes it so.

    It saves the random generators' states (dropout after a resume would differ otherwise) and the batches done
    of the epoch, which data.py's sampler then skips, and refuses a OneCycleLR planned for another number of steps,
    which Lightning would stretch."""

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng"] = get_rng_state()
        checkpoint["batches_done"] = batches_done(trainer)  # the state engine=raw saves in its progress

    def on_load_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # First: estimated_stepping_batches below makes the Trainer ask for the train loader, which starts there.
        trainer.datamodule.resume(checkpoint.get("batches_done", 0))
        for state in checkpoint.get("lr_schedulers", []):
            task.check_resumable(state, trainer.estimated_stepping_batches)
        if "rng" in checkpoint:
            set_rng_state(checkpoint["rng"])


# -- logging --


class TensorBoardSummaries(L.Callback):
    """Lightning logs scalars only: this writes the rest of engine=raw's TensorBoard, at the same points.

    The gradient norm, and summaries.py's histograms, images, graph, confusion matrix and hparams. On ranks > 0 the
    logger's `experiment` is Lightning's stand-in that writes nothing; without TensorBoard, one of loggers.py."""

    def __init__(self, cfg: DictConfig) -> None:
        self.summaries, self.batch_idx = summaries.Summaries(cfg), 0

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        self.writer = loggers.tensorboard_writer(trainer.loggers)

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.summaries.on_train_start(self.writer, module.model, trainer.datamodule.train_set, trainer.global_step)

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.batch_idx = batch_idx

    def on_before_optimizer_step(self, trainer: L.Trainer, module: L.LightningModule, optimizer: Any) -> None:
        # After unscaling, before clipping and zero_grad, as in engine=raw.
        self.summaries.on_before_optimizer_step(
            self.writer,
            module.model,
            trainer.current_epoch,
            self.batch_idx,
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
    """Lightning saves nothing on SIGTERM or Ctrl-C and stops mid-step or mid-validation: this stops and saves as raw.

    Lightning alone raises Ctrl-C inside the step, a SIGTERM inside the validation, and under DDP each rank at its own
    step. Like engine=raw, this stops after the current optimizer step and its validation (after the epoch's end, at
    its last step), at the same step on every rank, and saves last.ckpt. The signal is only recorded (guards.py);
    after each step and epoch the ranks agree (any_rank) and take Lightning's SIGTERM path (request_lightning_stop),
    which raises SIGTERMException once the step or epoch is counted. A second Ctrl-C stops at once and saves
    nothing, as do other exceptions.
    """

    def __init__(self, path: Path) -> None:
        self.path, self.signals, self.stopping, self.saved = path, contextlib.ExitStack(), False, False

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.received = self.signals.enter_context(guards.stop_on_signals())

    def stop_if_agreed(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if any_rank(self.received() is not None, module.device):
            self.stopping = True
            request_lightning_stop(trainer, True)

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0 or trainer.is_last_batch:  # a step was taken
            self.stop_if_agreed(trainer, module)

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.stopping:  # the validation runs to its end, then the run stops
            request_lightning_stop(trainer, False)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.stopping:
            request_lightning_stop(trainer, True)
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

    def stopped(self, trainer: L.Trainer) -> errors.TrainingStopped:
        """The error engine=raw raises for the same stop: which signal, where, and the checkpoint to resume."""
        return errors.TrainingStopped.by_signal(
            self.received(), trainer.current_epoch, trainer.global_step, self.path.parent
        )
