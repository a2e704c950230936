"""What both engines do identically: the training step, the evaluation step, the accuracy (counted by hand in
engine=raw, by the same rule as a torchmetrics Metric in engine=lightning), the optimizer and its schedule.
engines/raw.py calls these from its loop, engines/lightning.py from its LightningModule: a change to the loss,
the metric or the optimizer is one edit here.
"""

import functools
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from .errors import UserError

if TYPE_CHECKING:
    from torchmetrics.classification import MulticlassAccuracy

# Keys of configs/scheduler/*.yaml that are ours, not the scheduler's: how the engines drive it.
SCHEDULER_DRIVER_KEYS = ("interval", "monitor")

Batch = tuple[torch.Tensor, torch.Tensor]  # (images, class indices)


def training_step(model: nn.Module, batch: Batch, label_smoothing: float = 0.0) -> torch.Tensor:
    """A batch -> the loss to minimise (the mean over the batch), with loss.label_smoothing (configs/train.yaml).
    Validation and test losses stay plain cross-entropy (evaluation_step)."""
    inputs, targets = batch
    return F.cross_entropy(model(inputs), targets, label_smoothing=label_smoothing)


def evaluation_step(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch -> (the sum of its per-sample losses, the logits). Sums add up over batches and ranks into the
    mean over samples; the logits feed the accuracy (and, on the test set, the confusion matrix)."""
    inputs, targets = batch
    logits = model(inputs).float()  # float32 statistics also under bf16/fp16 autocast
    return F.cross_entropy(logits, targets, reduction="sum"), logits


def count_correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """How many samples' largest logit is the true class: engine=raw adds these up (over batches and, under DDP, over
    ranks with the loss sums) into the accuracy, by hand."""
    return (logits.argmax(dim=1) == targets).sum()


def accuracy(num_classes: int) -> "MulticlassAccuracy":
    """engine=lightning's accuracy: the same share as engine=raw's count_correct, as a torchmetrics Metric that
    `self.log` accumulates over the epoch and syncs under DDP. Imported here: torchmetrics takes seconds to import
    (torchvision's models with it{% if cookiecutter.include_benchmarks %}: benchmarks/README.md{% endif %}), which engine=raw does without."""
    from torchmetrics.classification import MulticlassAccuracy

    return MulticlassAccuracy(num_classes=num_classes, average="micro")


@dataclass
class Schedule:
    """A scheduler and how to drive it: after every optimizer `step` or every `epoch`, reading `monitor`; an epoch
    scheduler steps after every `frequency`-th epoch (Lightning's lr_scheduler "frequency")."""

    scheduler: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau
    interval: str
    monitor: str | None
    frequency: int = 1


def configure_optimizers(
    cfg: DictConfig, model: nn.Module, total_steps: int
) -> tuple[torch.optim.Optimizer, Schedule | None]:
    """The optimizer of configs/optimizer/ and the schedule of configs/scheduler/ (None for scheduler=none).

    `total_steps` is the number of optimizer steps in the run (Lightning's `estimated_stepping_batches`): a
    scheduler that takes `total_steps` (OneCycleLR) and was not given one gets it.
    """
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    scheduler_cfg = cfg.scheduler
    if scheduler_cfg is None or scheduler_cfg.get("_target_") is None:
        return optimizer, None
    interval, monitor = scheduler_cfg.get("interval", "epoch"), scheduler_cfg.get("monitor")
    if interval not in ("step", "epoch"):
        raise UserError(f"scheduler.interval={interval!r} is not valid: use 'step' or 'epoch'")
    factory = instantiate({k: v for k, v in scheduler_cfg.items() if k not in SCHEDULER_DRIVER_KEYS})
    kwargs = {}
    if "total_steps" in inspect.signature(factory.func).parameters and "total_steps" not in factory.keywords:
        kwargs["total_steps"] = total_steps
    check_one_cycle(factory, total_steps)
    scheduler = factory(optimizer, **kwargs)
    if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return optimizer, Schedule(scheduler, interval, monitor)
    if not monitor:
        raise UserError("scheduler=plateau needs scheduler.monitor, the metric it reads (e.g. val/loss)")
    check_plateau_interval(interval)
    # It reads a validation's metric: it steps after the epochs that validate, none of the others.
    return optimizer, Schedule(scheduler, interval, monitor, frequency=cfg.trainer.get("check_val_every_n_epoch", 1))


def check_schedule(scheduler_cfg: DictConfig | None) -> None:
    """What configure_optimizers refuses of the schedule's driver keys, checked from the config alone (before any
    data or model is built: launch.check_config)."""
    target = str((scheduler_cfg or {}).get("_target_") or "")
    if target.rsplit(".", 1)[-1] == "ReduceLROnPlateau":
        check_plateau_interval(scheduler_cfg.get("interval", "epoch"))


def check_plateau_interval(interval: str) -> None:
    """ReduceLROnPlateau compares validation metrics: stepped after every optimizer step it would read a metric
    that no validation has logged yet (Lightning raises a MisconfigurationException mid-run). Refused by name."""
    if interval != "epoch":
        raise UserError(
            f"scheduler.interval={interval} with scheduler=plateau is not valid: ReduceLROnPlateau reads a "
            "validation metric, so it steps once per epoch (scheduler.interval=epoch)"
        )


def check_one_cycle(factory: functools.partial, total_steps: int) -> None:
    """OneCycleLR splits its steps into phases; a first or last phase of no steps makes it divide by zero (at once, or
    at the last step). Refuse such a plan by name before training."""
    if not (isinstance(factory.func, type) and issubclass(factory.func, torch.optim.lr_scheduler.OneCycleLR)):
        return
    defaults = {name: p.default for name, p in inspect.signature(factory.func).parameters.items()}
    pct_start = factory.keywords.get("pct_start", defaults["pct_start"])
    total = factory.keywords.get("total_steps", total_steps)
    ends = (
        [pct_start * total - 1, 2 * pct_start * total - 2, total - 1]
        if factory.keywords.get("three_phase", defaults["three_phase"])
        else [pct_start * total - 1, total - 1]
    )
    if ends[0] == 0 or ends[-1] == ends[-2]:
        raise UserError(
            f"scheduler.pct_start={pct_start} over {total} optimizer steps gives OneCycleLR a phase of no "
            "steps (it would divide by zero): use another scheduler.pct_start or more steps "
            "(trainer.max_epochs, limit_train_batches), or scheduler=cosine"
        )


def check_resumable(saved_scheduler_state: dict | None, total_steps: int) -> None:
    """A schedule planned for a fixed number of steps (OneCycleLR) cannot be stretched on resume."""
    saved_total = (saved_scheduler_state or {}).get("total_steps")
    if saved_total is not None and saved_total != total_steps:
        raise UserError(
            f"the checkpoint's OneCycleLR was planned for {saved_total} steps, this run has {total_steps}: "
            "resume with the original trainer.max_epochs/max_steps, or start a new run from its weights "
            "(weights_from=<the checkpoint> instead of ckpt_path), which plans a new schedule"
        )
