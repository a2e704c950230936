"""Files a hostile user would hand the tools: checkpoints whose training config names code to run
{% if cookiecutter.include_deployment %}(model.pt2 archives: hostile_archives.py). {% endif %}Each one, loaded by a tool that trusts it, would create `marker` or
empty `victim`; a test then checks that the marker never appears and the victim keeps its bytes."""

import pickle
from pathlib import Path
from typing import Any

import torch
from conftest import compose_train
from omegaconf import OmegaConf

from {{ cookiecutter.package }}.core.models import build_model

VICTIM_BYTES = b"the weights of a week of training\n"


class CreatesFile:
    """Unpickled, it opens `path` for writing: the file appears (or an existing one is emptied)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (self.path, "w")


def code_pickle(marker: Path) -> bytes:
    """A pickle that creates `marker` when loaded without weights_only."""
    return pickle.dumps(CreatesFile(marker))


def victim_file(folder: Path) -> Path:
    victim = folder / "victim.txt"
    victim.write_bytes(VICTIM_BYTES)
    return victim


def checkpoint(folder: Path, config: Any = None, name: str = "last.ckpt") -> Path:
    """An engine=raw checkpoint of the default model, in a run folder's checkpoints/, with `config` (default: the
    composed training config, as YAML text, as engine=raw saves it)."""
    cfg = compose_train()
    path = folder / "run" / "checkpoints" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_yaml(cfg) if config is None else config
    torch.save({"engine": "raw", "model": build_model(cfg.model).state_dict(), "config": config}, path)
    return path


def checkpoint_with_model(folder: Path, model_node: Any, name: str = "last.ckpt") -> Path:
    """A checkpoint whose training config's `model` node is `model_node` (the rest as train.py writes it)."""
    config = OmegaConf.to_container(compose_train(), resolve=False)
    config["model"] = model_node
    return checkpoint(folder, OmegaConf.to_yaml(OmegaConf.create(config)), name)


def default_model_node(**values: Any) -> dict[str, Any]:
    """configs/model/'s default node (as train.py saves it), with `values` changed."""
    return {**OmegaConf.to_container(compose_train().model, resolve=False), **values}


def torch_load_target(folder: Path, marker: Path) -> dict[str, Any]:
    """A model node that asks hydra.utils.instantiate to torch.load a pickle that creates `marker`."""
    evil = folder / "evil.pkl"
    evil.write_bytes(code_pickle(marker))
    return {"_target_": "torch.load", "f": str(evil), "weights_only": False}


def open_for_writing_target(victim: Path) -> dict[str, Any]:
    """A model node that asks hydra.utils.instantiate to open `victim` for writing (emptying it)."""
    return {"_target_": "builtins.open", "file": str(victim), "mode": "w"}
