"""Every user-facing value of the composed config, checked before any data or model is built, in both engines.

One rule per key, declared in RULES: what the key accepts, in words, and the test. A bad value ends the run with
one line, `error: <key>=<value> is not valid: <what is accepted>`, before train.py's run folder holds anything but
Hydra's own files (which train.py then removes). Rules that depend on the machine (is there a GPU?) or on other
keys (the DDP device counts) live where they are checked: launch.check_accelerator, distributed.check_distributed.
A model's own arguments (model.*) are the model's to check (core/models/, called by launch.check_config): the rules
here are only for keys every run has. Nothing here imports torch.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..core.errors import UserError

PRECISIONS = ("32-true", "64-true", "bf16-mixed", "16-mixed")
MONITORS = ("val/acc", "val/loss")  # logged every validation: what best.ckpt and early stopping can follow
ABSENT = object()


def number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def whole(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def whole_list(value: Any, least: int, min_length: int) -> bool:
    return (
        isinstance(value, (list, tuple, ListConfig))
        and len(value) >= min_length
        and all(whole(item, least) for item in value)
    )


@dataclass(frozen=True)
class Rule:
    accepted: str  # what the key accepts, in words: the end of the error line
    test: Callable[[Any], bool]


def one_of(*options: Any) -> Rule:
    return Rule(
        "one of " + ", ".join(str(o).lower() if isinstance(o, bool) else str(o) for o in options),
        lambda value: any(value == o and type(value) is type(o) for o in options),
    )


WHOLE_1 = Rule("a whole number of at least 1", lambda v: whole(v, 1))
WHOLE_0 = Rule("a whole number of at least 0", lambda v: whole(v, 0))
POSITIVE = Rule("a number above 0", lambda v: number(v) and v > 0)
NON_NEGATIVE = Rule("a number of at least 0", lambda v: number(v) and v >= 0)
BOOLEAN = one_of(True, False)
BATCH_LIMIT = Rule(
    "null (all), a whole number of batches of at least 1, or a fraction in (0.0, 1.0]",
    lambda v: v is None or whole(v, 1) or (isinstance(v, float) and 0 < v <= 1),
)

RULES: dict[str, Rule] = {
    "seed": Rule(
        "a whole number of at least 0, or null to draw one (metrics.json records it)",
        lambda v: v is None or whole(v, 0),
    ),
    "engine.name": one_of("minimal", "fabric", "raw", "lightning"),
    "tags": Rule(
        "a list of short labels (text of 1 to 64 characters, no spaces), e.g. [baseline,lr-sweep]",
        lambda v: (
            isinstance(v, (list, tuple, ListConfig))
            and all(isinstance(t, str) and 0 < len(t) <= 64 and not any(c.isspace() for c in t) for t in v)
        ),
    ),
    "trainer.devices": Rule(
        "a whole number of at least 1, -1 or auto (every GPU), or a list of GPU indices",
        lambda v: v in ("auto", -1) or whole(v, 1) or whole_list(v, 0, 1),
    ),
    "trainer.num_nodes": WHOLE_1,
    "trainer.precision": one_of(*PRECISIONS),
    "trainer.max_epochs": WHOLE_1,
    "trainer.max_steps": Rule("-1 (no limit) or a whole number of at least 1", lambda v: v == -1 or whole(v, 1)),
    "trainer.gradient_clip_val": Rule(
        "null (no clipping) or a number above 0", lambda v: v is None or (number(v) and v > 0)
    ),
    "trainer.gradient_clip_algorithm": one_of("norm", "value"),
    "trainer.accumulate_grad_batches": WHOLE_1,
    "trainer.check_val_every_n_epoch": WHOLE_1,
    "trainer.val_check_interval": Rule(
        "null (at the end of each epoch), a whole number of training batches of at "
        "least 1, or a fraction of the epoch in (0.0, 1.0]",
        lambda v: v is None or whole(v, 1) or (isinstance(v, float) and 0 < v <= 1),
    ),
    "trainer.fast_dev_run": Rule(
        "false, true (1 batch) or a whole number of batches of at least 0 (0: off)",
        lambda v: isinstance(v, bool) or whole(v, 0),
    ),
    "trainer.profiler": Rule(
        "null (off), pytorch (torch.profiler traces, both engines), simple or advanced (engine=lightning)",
        lambda v: v is None or v in ("pytorch", "simple", "advanced"),
    ),
    "trainer.overfit_batches": Rule(
        "0 (off), a whole number of batches of at least 1, or a fraction in (0.0, 1.0]",
        lambda v: whole(v, 0) or (isinstance(v, float) and 0 <= v <= 1),
    ),
    "trainer.limit_train_batches": BATCH_LIMIT,
    "trainer.limit_val_batches": BATCH_LIMIT,
    "trainer.limit_test_batches": BATCH_LIMIT,
    "trainer.log_every_n_steps": WHOLE_1,
    "trainer.enable_progress_bar": BOOLEAN,
    "trainer.deterministic": one_of(True, False, "warn"),
    "trainer.benchmark": Rule(
        "null (on when training on CUDA, unless deterministic), true or false",
        lambda v: v is None or isinstance(v, bool),
    ),
    "data.batch_size": WHOLE_1,
    "data.num_workers": WHOLE_0,
    "data.num_classes": Rule("a whole number of at least 2", lambda v: whole(v, 2)),
    "data.val_fraction": Rule(
        "a fraction in (0.0, 1.0): validation picks best.ckpt", lambda v: number(v) and 0 < v < 1
    ),
    "data.test_fraction": Rule("a fraction in (0.0, 1.0)", lambda v: number(v) and 0 < v < 1),
    "data.pin_memory": BOOLEAN,
    "data.download": BOOLEAN,
    "data.loader": one_of("dataloader", "tensor"),  # data.LOADERS (this module imports no torch)
    "data.augment.crop_padding": WHOLE_0,
    "data.augment.horizontal_flip": BOOLEAN,
    # model.*: each model checks its own arguments (core/models/), and build_model its _target_ and keys.
    "loss.label_smoothing": Rule("a fraction in [0.0, 1.0)", lambda v: number(v) and 0 <= v < 1),
    "compile": BOOLEAN,
    "matmul_precision": Rule(
        "null (high on CUDA, torch's default elsewhere), highest, high or medium",
        lambda v: v is None or v in ("highest", "high", "medium"),  # device.MATMUL_PRECISIONS (no torch here)
    ),
    "channels_last": BOOLEAN,
    "optimizer.lr": POSITIVE,
    "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.momentum": NON_NEGATIVE,
    "optimizer.alpha": Rule("a number in (0.0, 1.0]", lambda v: number(v) and 0 < v <= 1),
    "scheduler.interval": one_of("step", "epoch"),
    "scheduler.step_size": WHOLE_1,
    "scheduler.gamma": POSITIVE,
    "scheduler.T_max": WHOLE_1,
    "scheduler.eta_min": NON_NEGATIVE,
    "scheduler.max_lr": POSITIVE,
    "scheduler.pct_start": Rule("a fraction in (0.0, 1.0)", lambda v: number(v) and 0 < v < 1),
    "scheduler.factor": Rule("a fraction in (0.0, 1.0)", lambda v: number(v) and 0 < v < 1),
    "scheduler.patience": WHOLE_0,
    "scheduler.mode": one_of("min", "max"),
    "scheduler.monitor": Rule("null or one of " + ", ".join(MONITORS), lambda v: v is None or v in MONITORS),
    "callbacks.model_checkpoint.monitor": one_of(*MONITORS),
    "callbacks.model_checkpoint.mode": one_of("max", "min"),
    "callbacks.early_stopping.monitor": one_of(*MONITORS),
    "callbacks.early_stopping.mode": one_of("min", "max"),
    "callbacks.early_stopping.patience": WHOLE_0,
    "callbacks.early_stopping.min_delta": NON_NEGATIVE,
    "distributed.timeout_s": POSITIVE,
}


def shown(value: Any) -> str:
    """A value as it would be written on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (ListConfig, DictConfig)):
        value = OmegaConf.to_container(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(shown(item) for item in value) + "]"
    return str(value)


def validate(cfg: DictConfig) -> None:
    """Raise UserError for the first value of `cfg` that breaks its rule (keys a config group leaves out are
    skipped: scheduler=none has no step_size)."""
    for key, rule in RULES.items():
        value = OmegaConf.select(cfg, key, default=ABSENT, throw_on_missing=False)
        if value is not ABSENT and not rule.test(value):
            raise UserError(f"{key}={shown(value)} is not valid: {rule.accepted}")
    data = cfg.data
    if "test_fraction" in data and data.val_fraction + data.test_fraction >= 1:
        raise UserError(
            f"data.val_fraction={shown(data.val_fraction)} with data.test_fraction="
            f"{shown(data.test_fraction)} is not valid: the two must add up to less than 1 (the rest "
            "is the training set; no image may be in two splits)"
        )


# engine=minimal and engine=fabric, the ladder's first rungs, implement a part of what configs/ can ask (each lists
# its part: IMPLEMENTED_KEYS at the top of engines/minimal.py and engines/fabric.py). Any other of these keys must
# keep the value it has when nothing is asked of it, the value those rungs behave as; engine=raw and engine=lightning
# implement them all. Only TensorBoard of the loggers: the rungs write its scalars.
NEUTRAL: dict[str, Any] = {
    "trainer.devices": 1,
    "trainer.strategy": "auto",
    "trainer.num_nodes": 1,
    "trainer.precision": "32-true",
    "trainer.max_steps": -1,
    "trainer.gradient_clip_val": None,
    "trainer.gradient_clip_algorithm": "norm",
    "trainer.accumulate_grad_batches": 1,
    "trainer.check_val_every_n_epoch": 1,
    "trainer.val_check_interval": None,
    "trainer.limit_train_batches": None,
    "trainer.limit_val_batches": None,
    "trainer.limit_test_batches": None,
    "trainer.deterministic": False,
    "trainer.benchmark": None,
    "trainer.fast_dev_run": False,
    "trainer.overfit_batches": 0,
    "trainer.profiler": None,
    "callbacks.early_stopping": None,
    "debug.detect_anomaly": False,
    "data.loader": "dataloader",
    "compile": False,
    "channels_last": False,
    "matmul_precision": None,
}
# The TensorBoard figures (watching/summaries.py) beyond the scalars: the rungs write scalars only. null or off is
# neutral; a switch set on is refused.
FIGURE_SWITCHES = ("images", "graph", "histogram_every_n_epochs", "confusion_matrix", "hparams")
RUNG_TRAINER_KEYS = ("accelerator", "max_epochs", "log_every_n_steps", "enable_progress_bar")  # every rung's


def check_rung(cfg: DictConfig, engine: str, implemented: set[str], instead: dict[str, str] | None = None) -> None:
    """Refuse, by name and before any work, what `engine` (a rung that implements only the keys `implemented` of
    NEUTRAL) would otherwise ignore: a value other than the neutral one, a trainer key it does not know, a logger
    other than TensorBoard. `instead`: a key -> the lower rung that implements it, named before raw and lightning."""
    offered = sorted({*implemented, *(f"trainer.{key}" for key in RUNG_TRAINER_KEYS)})

    def refuse(setting: str, key: str) -> None:
        others = [name for name in ((instead or {}).get(key), "raw", "lightning") if name]
        raise UserError(
            f"{setting} is not implemented by engine={engine} (it implements: {', '.join(offered)}): use "
            + ", ".join(f"engine={name}" for name in others[:-1])
            + f" or engine={others[-1]}"
        )

    for key in sorted(set(cfg.trainer) - {key.split(".", 1)[1] for key in NEUTRAL if key.startswith("trainer.")}):
        if key not in RUNG_TRAINER_KEYS:
            refuse(f"trainer.{key}={shown(cfg.trainer[key])}", f"trainer.{key}")
    for key, neutral in NEUTRAL.items():
        value = OmegaConf.select(cfg, key, default=neutral)
        single_device = key == "trainer.devices" and value in (1, "1", "auto", [0])  # check_distributed's one device
        if key not in implemented and not single_device and value != neutral:
            refuse(f"{key}={shown(value)}", key)
    for name in (cfg.get("logger") or {}).keys():
        if name != "tensorboard":
            refuse(f"logger={name}", "logger")
    for switch in FIGURE_SWITCHES:
        value = OmegaConf.select(cfg, f"logger.tensorboard.{switch}", default=None)
        if value not in (None, False, 0):
            refuse(f"logger.tensorboard.{switch}={shown(value)}", "logger")
