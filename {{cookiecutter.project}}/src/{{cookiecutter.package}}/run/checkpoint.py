"""Checkpoint files: written atomically, read without unpickling code, with the random generators' states."""

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from ..core.errors import UserError, foreign_reason
from ..core.models import build_model


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename it over `path`: both engines'
    checkpoints (engine=lightning through AtomicCheckpointIO).

    A crash at any moment leaves either the old file or the new one, never a truncated mix; a failed write (disk
    full, no permission) is one line, and the old file stays.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
        with os.fdopen(fd, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)  # the rename itself survives a power cut
    except OSError as err:
        raise UserError(
            f"cannot write checkpoint {path} ({err.strerror or err}): free disk space or fix the "
            f"folder's permissions; the previous {path.name}, if any, is unchanged"
        ) from err
    finally:
        if tmp is not None and Path(tmp).exists():
            Path(tmp).unlink()


TEMPORARY_SUFFIX = ".tmp"  # .<name>.<random>.tmp beside the checkpoint while it is written


def fsync_folder(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prepare_checkpoint_dir(folder: Path) -> None:
    """Before training, in both engines: the folder exists and takes a file (checked by writing one, as the
    checkpoints will be written), and the temporary files of writes a killed run left behind are removed."""
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check.", suffix=TEMPORARY_SUFFIX):
            pass
        if created:
            folder.rmdir()  # the first save creates it: a run refused later leaves no empty folder
    except OSError as err:
        raise UserError(
            f"checkpoints cannot be written to {folder} ({err.strerror or err}): make it a writable "
            "folder, or choose another paths.log_dir"
        ) from None
    for orphan in folder.glob(f".*.ckpt.*{TEMPORARY_SUFFIX}"):
        orphan.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load tensors and plain containers only (`weights_only=True`): a checkpoint cannot run code."""
    path = Path(path)
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "is not a regular file" if path.exists() else "does not exist"
        raise UserError(f"checkpoint {str(path)!r} {problem}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # empty, truncated, corrupt, not a checkpoint, or a pickle that asks for code
        raise UserError(
            f"checkpoint {str(path)!r} cannot be loaded safely ({foreign_reason(err)}): not a "
            "complete checkpoint, or one that would run code when loaded"
        ) from None
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, not a checkpoint's dictionary")
    return state


def model_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The plain `nn.Module` state_dict from a checkpoint of either engine."""
    if "model" in checkpoint:  # engine=raw, engine=minimal, engine=fabric
        return checkpoint["model"]
    if "state_dict" in checkpoint:  # engine=lightning: the LightningModule keeps the model as `self.model`
        return {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    raise UserError("checkpoint holds no model weights (neither 'model' nor 'state_dict')")


ENGINES_THAT_NAME_THEMSELVES = ("minimal", "fabric", "raw")  # in their checkpoints' 'engine' entry


def written_by(checkpoint: dict[str, Any]) -> str | None:
    """'minimal', 'fabric', 'raw' or 'lightning': the engine that wrote a checkpoint (None: none of them). The first
    three name themselves in an 'engine' entry; Lightning's checkpoints carry its version."""
    if checkpoint.get("engine") in ENGINES_THAT_NAME_THEMSELVES:
        return checkpoint["engine"]
    return "lightning" if "pytorch-lightning_version" in checkpoint else None


def load_for_resume(path: Path, engine: str, model: nn.Module) -> dict[str, Any]:
    """A checkpoint to resume from, checked before the resume touches anything, with one line for what is wrong:
    safe to load, written by `engine`, holding the training state (not best.ckpt's weights alone), and weights that
    fit `model` (the mismatched keys named). Returns its contents."""
    state = load_checkpoint(path)
    writer = written_by(state)
    if writer is None:
        raise UserError(
            f"ckpt_path={path} is not a checkpoint of either engine (it has neither engine=raw's "
            "'engine' entry nor Lightning's 'pytorch-lightning_version')"
        )
    if writer != engine:
        raise UserError(
            f"ckpt_path={path} was written by engine={writer}: resume it with that engine (its weights "
            "load anywhere with checkpoint.model_state_dict)"
        )
    if ("optimizer_states" if writer == "lightning" else "progress") not in state:
        raise UserError(
            f"ckpt_path={path} holds only the best weights, not the training state: resume from "
            "last.ckpt (ckpt_path=last)"
        )
    check_weights_fit(
        model_state_dict(state),
        model,
        f"ckpt_path={path}",
        "resume with the run's own model config (its .hydra/config.yaml)",
    )
    return state


def check_weights_fit(weights: dict[str, torch.Tensor], model: nn.Module, source: str, fix: str) -> None:
    """One line naming the mismatched keys (missing, unexpected, other shapes) when `weights` do not fit `model`."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    saved = {key: tuple(value.shape) for key, value in weights.items()}
    if saved != expected:
        missing, unexpected = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
        resized = sorted(k for k in expected.keys() & saved.keys() if expected[k] != saved[k])
        parts = [
            f"{name} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for name, keys in (("missing", missing), ("unexpected", unexpected), ("other shapes", resized))
            if keys
        ]
        raise UserError(f"{source} holds the weights of another model ({'; '.join(parts)}): {fix}")


def load_weights(path: Path, model: nn.Module) -> None:
    """weights_from: the model weights of a checkpoint of either engine (last.ckpt or best.ckpt) into `model`, which
    a new run then trains with a new optimizer and schedule. Checked as a resume is: one line for a bad file."""
    state = load_checkpoint(path)
    if written_by(state) is None:
        raise UserError(
            f"weights_from={path} is not a checkpoint of either engine (it has neither engine=raw's "
            "'engine' entry nor Lightning's 'pytorch-lightning_version')"
        )
    weights = model_state_dict(state)
    check_weights_fit(
        weights,
        model,
        f"weights_from={path}",
        "start from a checkpoint of the same model config (model=, model.* as in its run's .hydra/config.yaml)",
    )
    model.load_state_dict(weights)


def initial_model(cfg: DictConfig, channels_last: bool = False) -> nn.Module:
    """The model a training run starts from: configs/model/'s, with the weights of the checkpoint
    `weights_from` when it is set (a new run from them); `compile=true` compiles it in place (its state_dict keys
    stay the same, so checkpoints load into it as into the plain module). `channels_last`: the engine's resolved
    setting (run/device.py)."""
    model = build_model(cfg.model)
    if cfg.get("weights_from") is not None:
        load_weights(Path(cfg.weights_from), model)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # conv weights in NHWC, as the batches (a move keeps it)
    if cfg.get("compile"):
        model.compile()
    return model


def get_rng_state() -> dict[str, Any]:
    """Every random generator the run draws from, as tensors and plain values (safe to load). Saved in both
    engines' last.ckpt: without it the dropout masks after a resume would differ from the straight run's."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
