"""model.pt2 archives a hostile user would hand predict.py and serve.py: archives that carry a pickle or Python,
made from a genuine export. Each would create `marker` when loaded by a tool that trusts it."""

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from conftest import compose_train
from hostile_files import code_pickle

from {{ cookiecutter.package }}.core.models import build_model
from {{ cookiecutter.package }}.workflows.exporting import CARD, export_program, model_card


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
