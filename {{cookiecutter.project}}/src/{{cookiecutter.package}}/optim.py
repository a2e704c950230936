"""Optimizer and learning-rate scheduler from the configs, and the step arithmetic both engines share."""

import inspect
import math
from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from .errors import UserError

# Keys of configs/scheduler/*.yaml that are ours, not the scheduler's: how the engines drive it.
SCHEDULER_DRIVER_KEYS = ("interval", "monitor")


@dataclass
class Schedule:
    """A scheduler and how to drive it: after every optimizer `step` or every `epoch`, reading `monitor`."""

    scheduler: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau
    interval: str
    monitor: str | None


def build_optimizer(cfg: DictConfig, params) -> torch.optim.Optimizer:
    return instantiate(cfg)(params)


def build_schedule(cfg: DictConfig | None, optimizer: torch.optim.Optimizer, total_steps: int) -> Schedule | None:
    """The configured scheduler, or None for `scheduler=none`.

    A scheduler that takes `total_steps` (OneCycleLR) and was not given one gets it computed from the data.
    """
    if cfg is None or cfg.get("_target_") is None:
        return None
    interval, monitor = cfg.get("interval", "epoch"), cfg.get("monitor")
    if interval not in ("step", "epoch"):
        raise UserError(f"scheduler.interval={interval!r} is not valid: use 'step' or 'epoch'")
    factory = instantiate({k: v for k, v in cfg.items() if k not in SCHEDULER_DRIVER_KEYS})
    kwargs = {}
    if "total_steps" in inspect.signature(factory.func).parameters and "total_steps" not in factory.keywords:
        kwargs["total_steps"] = total_steps
    scheduler = factory(optimizer, **kwargs)
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and not monitor:
        raise UserError("scheduler=plateau needs scheduler.monitor, the metric it reads (e.g. val/loss)")
    return Schedule(scheduler, interval, monitor)


def limit_batches(num_batches: int, limit: int | float | None) -> int:
    """Batches used per epoch under Lightning's `limit_*_batches`: an int counts batches, a float is a fraction."""
    if limit is None:
        return num_batches
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 0:
        raise UserError(f"limit_*_batches={limit!r} is not valid: use a batch count (int) or a fraction (float)")
    if isinstance(limit, int):
        return min(num_batches, limit)
    if limit > 1.0:
        raise UserError(f"limit_*_batches={limit} is a fraction above 1.0: use at most 1.0, or an int batch count")
    return int(num_batches * limit)


def total_optimizer_steps(num_batches: int, trainer: DictConfig) -> int:
    """Optimizer steps in the whole run: what Lightning calls `estimated_stepping_batches`."""
    per_epoch = math.ceil(limit_batches(num_batches, trainer.limit_train_batches) / trainer.accumulate_grad_batches)
    total = per_epoch * max(trainer.max_epochs, 1)
    return min(total, trainer.max_steps) if trainer.max_steps not in (None, -1) else total


def check_resumable(saved_scheduler_state: dict | None, total_steps: int) -> None:
    """A schedule planned for a fixed number of steps (OneCycleLR) cannot be stretched on resume."""
    saved_total = (saved_scheduler_state or {}).get("total_steps")
    if saved_total is not None and saved_total != total_steps:
        raise UserError(f"the checkpoint's OneCycleLR was planned for {saved_total} steps, this run has {total_steps}: "
                        "resume with the original trainer.max_epochs/max_steps, or use a scheduler that does not "
                        "plan ahead (scheduler=cosine, step, plateau or none)")
