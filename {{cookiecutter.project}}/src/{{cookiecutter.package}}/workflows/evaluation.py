"""evaluate.py's logic: a checkpoint of either engine, evaluated by either engine on its training run's test or
validation split, in a run folder of its own.

The config evaluated is the training run's (engine=raw keeps it in every checkpoint, engine=lightning in the run's
.hydra/config.yaml), with this machine's paths, one process, and the keys given on the command line. The model,
seed, split fractions and limit_*_batches are then the training run's: its test/acc comes out again, bitwise.
engine=raw evaluates with engines/raw.py's evaluation_loop, engine=lightning with Trainer.test; each engine is
imported only once chosen, so engine=raw never imports lightning. The training run's folder is only read.
"""

import json
import re
import time
from pathlib import Path
from typing import Any

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from ..core.data import DataPipeline, limit_batches
from ..core.errors import UserError, foreign_reason
from ..core.models import build_model
from ..run.checkpoint import check_weights_fit, load_checkpoint, model_state_dict, written_by
from ..run.config_rules import one_of, shown, validate
from ..run.distributed import is_ddp
from ..run.rundir import find_checkpoint
from ..watching import loggers, summaries
from .launch import check_config, drawn_seed

# Keys of configs/eval.yaml that belong to the evaluation, not to the training run's config.
OWN_KEYS = ("ckpt_path", "split", "engine", "paths", "task", "hydra", "logger")
CONFUSION_MATRIX_PNG = "confusion_matrix.png"
SPLIT = one_of("test", "val")  # a rule as validation.py's (whose RULES are train.py's keys)
# Groups whose options write across train.py's config (`# @package _global_`), each with its default: presets of
# how a run trains, which evaluate.py refuses (it evaluates the training run's own config and takes keys).
TRAINING_PRESETS = {"experiment": None, "debug": "none"}


def evaluate(cfg: DictConfig, run_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Evaluate cfg.ckpt_path on cfg.split with cfg.engine; write run_dir/metrics.json, confusion_matrix.png and
    the records of the chosen loggers (logger=, as in train.py); return the metrics. `overrides`: the command
    line's (Hydra's overrides.task), the keys that change the training run's config."""
    started = time.perf_counter()
    if cfg.ckpt_path in (None, "", "null", "None"):
        raise UserError(
            "ckpt_path is required: ckpt_path=last (the newest run of engine=<name>) or ckpt_path=<file> "
            "(a run's checkpoints/best.ckpt or last.ckpt)"
        )
    validate(cfg)  # the command line's values, before any file is read
    check_no_training_preset(overrides)
    if not SPLIT.test(cfg.split):
        raise UserError(f"split={shown(cfg.split)} is not valid: {SPLIT.accepted}")
    checkpoint = find_checkpoint(cfg.ckpt_path, Path(cfg.paths.log_dir) / "train" / cfg.engine.name)
    state, writer, trained, config_from = load_training_run(checkpoint)
    eval_cfg = evaluation_config(trained, cfg, overrides, checkpoint)
    check_config(eval_cfg)

    # The model of the training run's config, with the checkpoint's weights (one line naming the keys that differ).
    model = build_model(eval_cfg.model)
    weights = model_state_dict(state)
    check_weights_fit(
        weights,
        model,
        f"ckpt_path={checkpoint}",
        "evaluate with the training run's own model "
        f"config (leave model.* and data.channels/num_classes as in {config_from})",
    )
    model.load_state_dict(weights)
    if eval_cfg.get("compile"):
        model.compile()

    # The training run's seeded split, and the batches its test (or validation) used.
    split = eval_cfg.split
    pipeline = DataPipeline(eval_cfg.data, seed=eval_cfg.seed, batch_limits=eval_cfg.trainer)
    pipeline.prepare_data()
    pipeline.setup("test")
    loader = pipeline.test_dataloader() if split == "test" else pipeline.val_dataloader()
    key = f"limit_{split}_batches"
    num_batches = limit_batches(len(loader), eval_cfg.trainer.get(key), f"trainer.{key}")

    tensorboard_dir = loggers.tensorboard_dir(eval_cfg, run_dir)
    if tensorboard_dir is not None:
        summaries.write_hparams(eval_cfg, tensorboard_dir)  # the config evaluated
    counts = ConfusionCounts(eval_cfg.data.num_classes)
    if eval_cfg.engine.name == "lightning":
        results, device = evaluate_lightning(eval_cfg, model, loader, num_batches, counts, run_dir)
    else:  # minimal, fabric and raw: plain PyTorch (raw's evaluation loop), as their test passes are
        results, device = evaluate_raw(eval_cfg, model, loader, num_batches, counts, run_dir)

    matrix = counts.matrix
    save_png(summaries.confusion_matrix_figure(matrix), run_dir / CONFUSION_MATRIX_PNG)
    totals = matrix.sum(dim=1)
    metrics = {
        "split": split,
        f"{split}/loss": results["loss"],
        f"{split}/acc": results["acc"],
        # Per true class: the share of its samples predicted as it (null: no sample of the class was evaluated).
        f"{split}/per_class_acc": [
            round(matrix[c, c].item() / total, 6) if total else None for c, total in enumerate(totals.tolist())
        ],
        "samples": int(totals.sum()),
        "confusion_matrix": matrix.tolist(),  # rows: true class, columns: predicted class
        "ckpt_path": str(checkpoint),
        "written_by": writer,  # the engine that trained the checkpoint
        "engine": eval_cfg.engine.name,  # the engine that evaluated it
        "config_from": config_from,
        "device": device,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "run_dir": str(run_dir),
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(
        f"engine={metrics['engine']} {split}/acc={results['acc']:.4f} {split}/loss={results['loss']:.4f} "
        f"samples={metrics['samples']} ckpt={checkpoint} (engine={writer}) run={run_dir}"
    )
    return metrics


def check_no_training_preset(overrides: list[str] | tuple[str, ...]) -> None:
    """experiment=cifar10 or debug=limit would change only their group's own node here, not the keys they write
    across the config: refused by name, instead of an evaluation that silently ignores them."""
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        group = override.key_or_group
        if group in TRAINING_PRESETS and override.value() != TRAINING_PRESETS[group]:
            raise UserError(
                f"{group}={override.get_value_element_as_str()} is not valid here: {group}= presets how a run "
                "trains, and evaluate.py evaluates the training run's own config: give the keys to change "
                "instead (e.g. trainer.limit_test_batches=2, data.batch_size=256)"
            )


def training_config(state: dict[str, Any], writer: str, checkpoint: Path) -> tuple[DictConfig, str]:
    """The composed config of the run that wrote the checkpoint, and where it was read. engine=raw saves it in every
    checkpoint; Lightning's checkpoints hold no config (the Classifier saves no hyperparameters), so it comes from
    the run folder's .hydra/config.yaml, beside checkpoints/."""
    if "config" in state:
        saved, source = state["config"], "the checkpoint"
    else:
        saved = checkpoint.parent.parent / ".hydra" / "config.yaml"
        if checkpoint.parent.name != "checkpoints" or not saved.is_file():
            raise UserError(
                f"ckpt_path={checkpoint}: a checkpoint of engine={writer} holds no config, and there is no "
                f"{saved} beside it: evaluate it in its run folder (<run>/checkpoints/{checkpoint.name})"
            )
        source = str(saved)
    cfg = checked_training_config(saved, checkpoint, source)
    if cfg.get("seed") is None:  # seed=null: the seed the run drew from its folder's name (launch.drawn_seed)
        cfg.seed = drawn_seed(checkpoint.parent.parent)
    return cfg, source


# The nodes every training config has, each a mapping: what evaluate.py{% if cookiecutter.include_deployment %} and export.py{% endif %} read before the config rules.
TRAINING_NODES = ("model", "data", "trainer")
RESOLVER_CALL = re.compile(r"\$\{[^}]*:")  # ${name:...}: a resolver, a function the file would choose to run


def checked_training_config(saved: Any, checkpoint: Path, source: str) -> DictConfig:
    """A training run's config as read from a file (YAML text, a dict, or a .hydra/config.yaml path), checked as
    far as reading it goes: a mapping with model, data and trainer mappings, interpolating only its own keys (no
    resolver, which would call a function the file names), and resolvable. Its values then go through the config
    rules (launch.check_config, core/models/'s build_model) like typed ones; one line for anything else."""
    where = f"ckpt_path={checkpoint}: the training config in {source}"
    try:
        cfg = OmegaConf.load(saved) if isinstance(saved, Path) else OmegaConf.create(saved)
    except Exception as err:  # not YAML, or a value OmegaConf takes for no config
        raise UserError(f"{where} cannot be read ({foreign_reason(err)}): not a config written by train.py") from None
    if not isinstance(cfg, DictConfig):
        raise UserError(f"{where} is {shown(cfg)}, not a mapping of keys: not a config written by train.py")
    for node in TRAINING_NODES:
        if not isinstance(cfg.get(node), DictConfig):
            raise UserError(
                f"{where} has {node}={shown(cfg.get(node))}: a mapping of {node}.* keys is expected (a config "
                "written by train.py)"
            )
    for key, value in plain_items(OmegaConf.to_container(cfg, resolve=False)):
        if isinstance(value, str) and RESOLVER_CALL.search(value):
            raise UserError(
                f"{key}={value} is not valid in {source}: a training config interpolates only its own keys "
                "(${other.key}), never a resolver (${name:...}), which would run a function the file names"
            )
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as err:  # an interpolation of a key the config does not have
        raise UserError(f"{where} does not resolve ({foreign_reason(err)})") from None
    return cfg


def plain_items(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a plain container, and of every dict key (a key may interpolate too)."""
    if isinstance(value, dict):
        items = [(f"{prefix}{key}", key) for key in value if isinstance(key, str)]
        for key, item in value.items():
            items += plain_items(item, f"{prefix}{key}.")
        return items
    if isinstance(value, list):
        return [pair for index, item in enumerate(value) for pair in plain_items(item, f"{prefix}{index}.")]
    return [(prefix.removesuffix("."), value)]


def load_training_run(checkpoint: Path) -> tuple[dict[str, Any], str, DictConfig, str]:
    """A checkpoint of either engine, the engine that wrote it, and its training run's config (and where it was read
    from); one line for a file that is neither engine's checkpoint. evaluate.py{% if cookiecutter.include_deployment %} and export.py{% endif %} start here."""
    state = load_checkpoint(checkpoint)
    writer = written_by(state)
    if writer is None:
        raise UserError(
            f"ckpt_path={checkpoint} is not a checkpoint of either engine (it has neither engine=raw's "
            "'engine' entry nor Lightning's 'pytorch-lightning_version')"
        )
    trained, config_from = training_config(state, writer, checkpoint)
    return state, writer, trained, config_from


def evaluation_config(
    trained: DictConfig, cfg: DictConfig, overrides: list[str] | tuple[str, ...], checkpoint: Path
) -> DictConfig:
    """The training run's config with this machine's paths, one process, and each key the command line gave
    (its value as configs/eval.yaml composed it: a group such as trainer=cpu replaces the whole group)."""
    merged = trained.copy()
    OmegaConf.set_struct(merged, False)
    merged.trainer.merge_with({"strategy": "auto", "devices": 1, "num_nodes": 1})  # a DDP run's checkpoint, too
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if key.split(".")[0] in OWN_KEYS:
            continue
        if override.is_delete():
            parent, _, name = key.rpartition(".")
            node = OmegaConf.select(merged, parent) if parent else merged
            if isinstance(node, DictConfig):
                node.pop(name, None)
        else:
            OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False)
    merged.merge_with(
        {"paths": cfg.paths, "engine": cfg.engine, "task": cfg.task, "split": cfg.split, "ckpt_path": str(checkpoint)}
    )
    # The evaluation's own outputs, to the loggers of this command (train.py's choices), whichever the run had.
    merged.logger = cfg.logger
    devices = merged.trainer.devices
    if (
        is_ddp(merged.trainer)
        or merged.trainer.num_nodes != 1
        or not (devices == 1 or (OmegaConf.is_list(devices) and len(devices) == 1))
    ):
        raise UserError(
            "evaluate.py evaluates in one process on one device: leave trainer.strategy, "
            "trainer.devices and trainer.num_nodes out of its overrides"
        )
    return merged


class ConfusionCounts:
    """True class x predicted class counts of every evaluated sample, on the CPU (per-class accuracy, the PNG)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        pairs = targets.cpu() * self.num_classes + logits.argmax(dim=1).cpu()
        self.matrix += torch.bincount(pairs, minlength=self.num_classes**2).reshape(self.num_classes, -1)


def save_png(image: Any, path: Path) -> None:
    from PIL import Image  # pillow, which summaries.py draws the figures with

    Image.fromarray(image).save(path)


def evaluate_raw(
    cfg: DictConfig, model: nn.Module, loader: DataLoader, num_batches: int, counts: ConfusionCounts, run_dir: Path
) -> tuple[dict[str, float], str]:
    """engine=raw: test_loop's evaluation, by hand; the scalars and figures under the training run's test tags."""
    from ..engines import raw
    from ..run import device as device_settings

    device = raw.pick_device(cfg.trainer.accelerator)
    precision = raw.parse_precision(str(cfg.trainer.precision), device)
    raw.set_deterministic(cfg.trainer.deterministic, device_settings.resolve(cfg, device.type == "cuda").benchmark)
    model = model.to(device, precision.param_dtype)
    board = summaries.Summaries(cfg)
    board.on_test_start(device)

    def observe(inputs: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        board.on_test_batch_end(inputs, logits, targets)
        counts.update(logits, targets)

    metrics = raw.evaluation_loop(model, loader, num_batches, device, precision, observe=observe)
    chosen = loggers.raw_loggers(cfg, run_dir, 0)
    loggers.log_hyperparams(chosen, cfg, resumed=False)
    for logger in chosen:  # "epoch" as Trainer.test logs it (a new Trainer's epoch)
        logger.log_metrics({**{f"test/{name}": value for name, value in metrics.items()}, "epoch": 0}, 0)
    board.on_test_end(loggers.tensorboard_writer(chosen), 0)
    for logger in chosen:
        logger.finalize("success")
    return metrics, str(device)


def evaluate_lightning(
    cfg: DictConfig, model: nn.Module, loader: DataLoader, num_batches: int, counts: ConfusionCounts, run_dir: Path
) -> tuple[dict[str, float], str]:
    """engine=lightning: Trainer.test on the training's Classifier, with its TensorBoard callback."""
    import lightning as L

    from ..engines import lightning as engine
    from ..run import console

    class CountConfusion(L.Callback):
        def on_test_batch_end(
            self,
            trainer: L.Trainer,
            module: L.LightningModule,
            outputs: Any,
            batch: Any,
            batch_idx: int,
            dataloader_idx: int = 0,
        ) -> None:
            counts.update(outputs, batch[1])  # outputs: test_step's logits

    console.quiet_lightning()
    module = engine.Classifier(model, cfg)
    chosen = loggers.lightning_loggers(cfg, run_dir)
    loggers.log_hyperparams(chosen, cfg, resumed=False)
    # The batches evaluate() counted, as engine=raw evaluates them: no debugging run (fast_dev_run would also log
    # nothing), no profiler.
    arguments = {
        **engine.trainer_arguments(cfg),
        "limit_test_batches": num_batches,
        "enable_checkpointing": False,
        "fast_dev_run": False,
        "overfit_batches": 0.0,
        "profiler": None,
    }
    trainer = L.Trainer(
        **arguments,
        logger=chosen or False,
        callbacks=[engine.TensorBoardSummaries(cfg), CountConfusion()],
        default_root_dir=run_dir,
    )
    trainer.test(module, dataloaders=loader, verbose=False)
    metrics = {k.removeprefix("test/"): v.item() for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    return metrics, str(module.device)
