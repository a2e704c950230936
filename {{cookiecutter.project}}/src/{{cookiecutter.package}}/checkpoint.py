"""Checkpoint files: written atomically, read without unpickling code, with the random generators' states."""

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename it over `path`.

    A crash at any moment leaves either the old file or the new one, never a truncated mix.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load tensors and plain containers only (`weights_only=True`): a checkpoint cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt, or a pickle that asks for arbitrary objects
        raise UserError(f"checkpoint {str(path)!r} cannot be loaded safely: {err}") from err


def model_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The plain `nn.Module` state_dict from a checkpoint of either engine."""
    if "model" in checkpoint:  # engine=raw
        return checkpoint["model"]
    if "state_dict" in checkpoint:  # engine=lightning: the LightningModule keeps the model as `self.model`
        return {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    raise UserError("checkpoint holds no model weights (neither 'model' nor 'state_dict')")


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
