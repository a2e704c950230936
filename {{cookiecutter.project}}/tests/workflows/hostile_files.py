"""Files a hostile user would hand the tools: checkpoints whose training config names code to run, and model.pt2
archives that carry a pickle or Python. Each one, loaded by a tool that trusts it, would create `marker` or empty
`victim`; a test then checks that the marker never appears and the victim keeps its bytes."""

import json
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from conftest import compose_train
from omegaconf import OmegaConf

from {{ cookiecutter.package }}.core.models import build_model
from {{ cookiecutter.package }}.workflows.exporting import CARD, export_program, model_card

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


def export_folder(folder: Path) -> Path:
    """A model.pt2 with its model.json, as export.py writes them, of the default model (random weights)."""
    cfg = compose_train()
    model = build_model(cfg.model).eval()
    size = cfg.data.image_size
    export_program(model, torch.zeros(2, cfg.data.channels, size, size), folder / "model.pt2")
    card = model_card(cfg, folder / "run" / "last.ckpt", "raw")
    (folder / CARD).write_text(json.dumps(card))
    return folder / "model.pt2"


def rewritten_pt2(source: Path, destination: Path, change: dict[str, Any]) -> Path:
    """`source` with the entries of `change` (name under the archive's folder -> bytes, or a function of the old
    bytes) replaced or added; model.json copied beside it."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(destination, "w") as new:
        root = old.namelist()[0].split("/")[0]
        for info in old.infolist():
            name = info.filename.removeprefix(f"{root}/")
            data = old.read(info.filename)
            if name in change:
                data = change.pop(name)(data) if callable(change[name]) else change.pop(name)
            new.writestr(info, data)
        for name, data in change.items():
            new.writestr(f"{root}/{name}", data)
    shutil.copy(source.with_name(CARD), destination.with_name(CARD))
    return destination


def pt2_with_pickled_sample_inputs(source: Path, destination: Path, marker: Path) -> Path:
    """The issue's archive: sample_inputs/model.pt replaced by a pickle that creates `marker` (torch.export.load
    tries weights_only=True, then falls back to a full unpickle)."""
    return rewritten_pt2(source, destination, {"data/sample_inputs/model.pt": code_pickle(marker)})


def pt2_with_guard_code(source: Path, destination: Path, marker: Path) -> Path:
    """model.json's guards_code, which .module() turns into Python with exec: here it creates `marker`."""

    def add_guard(data: bytes) -> bytes:
        program = json.loads(data)
        program["guards_code"] = [f"open({str(marker)!r}, 'w') is not None"]
        return json.dumps(program).encode()

    return rewritten_pt2(source, destination, {"models/model.json": add_guard})


def pt2_calling(source: Path, destination: Path, target: str) -> Path:
    """model.json with its first graph node calling `target` (a dotted name torch.export.load resolves)."""

    def retarget(data: bytes) -> bytes:
        program = json.loads(data)
        program["graph_module"]["graph"]["nodes"][0]["target"] = target
        return json.dumps(program).encode()

    return rewritten_pt2(source, destination, {"models/model.json": retarget})


def pt2_with_pickled_weight(source: Path, destination: Path, marker: Path) -> Path:
    """The first weight stored as a pickle (use_pickle: torch.load with weights_only=False) that creates `marker`."""
    config_name = "data/weights/model_weights_config.json"
    with zipfile.ZipFile(source) as old:
        root = old.namelist()[0].split("/")[0]
        config = json.loads(old.read(f"{root}/{config_name}"))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    return rewritten_pt2(
        source,
        destination,
        {config_name: json.dumps(config).encode(), f"data/weights/{first['path_name']}": code_pickle(marker)},
    )
