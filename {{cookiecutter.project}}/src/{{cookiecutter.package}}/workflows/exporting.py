"""export.py's logic: a checkpoint of either engine as deployable files, each one checked before it is kept.

`torch_export`: a torch.export program (model.pt2: the graph of ATen ops and the weights, loadable without this
package). `onnx`: an ONNX file (model.onnx, the dynamo exporter) for ONNX Runtime, TensorRT, OpenVINO...; it needs
the optional `export` extra. Both take a batch of any size. model.json beside them holds what a consumer needs
besides the file: the input's shape, dtype and normalisation, and the class names. Each file is reloaded and run
(the .pt2 with torch.export.load, the .onnx in ONNX Runtime) on a batch of the training run's test images and on a
single image, and kept only if its logits are within `check.tolerance` of the PyTorch model's and its predicted
classes are the same. The files are written into a hidden folder beside the export's folder, which takes its place
once every check has passed: a failed export leaves nothing behind.
"""

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..core import datasets
from ..core.data import DataPipeline
from ..core.errors import UserError
from ..core.models import build_model
from ..run.checkpoint import check_weights_fit, model_state_dict
from ..run.config_rules import POSITIVE, WHOLE_1, one_of, shown
from ..run.rundir import find_checkpoint
from .evaluation import load_training_run

FORMATS = one_of("torch_export", "onnx", "all")
FILES = {"torch_export": "model.pt2", "onnx": "model.onnx"}
CARD = "model.json"  # the input, the normalisation and the class names: beside the exported files
INPUT, OUTPUT = "images", "logits"  # the ONNX graph's input and output names
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
EXPORT_EXTRA = 'pip install -e ".[export]" (onnx, onnxscript, onnxruntime)'


def export(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Export cfg.ckpt_path in cfg.format into run_dir (created by Hydra, holding only its .hydra/ and log); return
    model.json's contents."""
    if cfg.ckpt_path in (None, "", "null", "None"):
        raise UserError(
            "ckpt_path is required: ckpt_path=last (the newest run of engine=<name>) or ckpt_path=<file> "
            "(a run's checkpoints/best.ckpt or last.ckpt)"
        )
    if not FORMATS.test(cfg.format):
        raise UserError(f"format={shown(cfg.format)} is not valid: {FORMATS.accepted}")
    for key, rule in (("check.batch_size", WHOLE_1), ("check.tolerance", POSITIVE)):
        if not rule.test(OmegaConf.select(cfg, key)):
            raise UserError(f"{key}={shown(OmegaConf.select(cfg, key))} is not valid: {rule.accepted}")
    formats = list(FILES) if cfg.format == "all" else [cfg.format]
    if "onnx" in formats:
        require_onnx(f"format={cfg.format}")
    checkpoint = find_checkpoint(cfg.ckpt_path, Path(cfg.paths.log_dir) / "train" / cfg.engine.name)
    model, trained, card = load_trained(checkpoint)
    images = test_images(trained, cfg.check.batch_size)

    partial = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=f".{run_dir.name}.", suffix=".partial"))
    try:
        partial.chmod(run_dir.stat().st_mode)  # the permissions of Hydra's folder, not mkdtemp's owner-only ones
        card["files"], card["checks"] = {}, {}
        for kind in formats:
            path = partial / FILES[kind]
            if kind == "torch_export":
                export_program(model, images, path)
            else:
                card["onnx_opset"] = export_onnx(model, images, path)
            card["files"][kind] = path.name
            card["checks"][kind] = check_export(kind, load_exported(path), model, images, cfg.check.tolerance)
        (partial / CARD).write_text(json.dumps(card, indent=2) + "\n")
        for kept in run_dir.iterdir():  # Hydra's .hydra/ and log: the record of this export, kept with it
            os.replace(kept, partial / kept.name)
        run_dir.rmdir()
        os.replace(partial, run_dir)
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    for kind, check in card["checks"].items():
        print(
            f"{kind}: {run_dir / FILES[kind]} checked on {check['samples']} test images: max |logit difference| "
            f"{check['max_abs_diff']:.3g} (tolerance {cfg.check.tolerance:g}), the same predicted classes"
        )
    print(f"exported ckpt={checkpoint} (engine={card['written_by']}) to {run_dir}")
    return card


def require_onnx(key: str) -> None:
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"{key} needs {', '.join(missing)}, which are not installed: {EXPORT_EXTRA}; "
            "format=torch_export needs nothing more"
        )


def load_trained(checkpoint: Path) -> tuple[nn.Module, DictConfig, dict[str, Any]]:
    """The PyTorch model of a checkpoint of either engine, in eval mode on the CPU, its training run's config, and
    the model card of model.json (without the exported files)."""
    state, writer, trained, config_from = load_training_run(checkpoint)
    model = build_model(trained.model)
    weights = model_state_dict(state)
    check_weights_fit(weights, model, f"ckpt_path={checkpoint}", f"keep the training run's config ({config_from})")
    model.load_state_dict(weights)
    return model.float().eval(), trained, model_card(trained, checkpoint, writer)


def model_card(trained: DictConfig, checkpoint: Path, writer: str) -> dict[str, Any]:
    data = trained.data
    dataset = datasets.get(data.name)  # its registry entry: normalisation, class names, input dtype
    mean, std = dataset.mean, dataset.std
    return {
        "input": {
            "name": INPUT,
            "shape": ["batch", data.channels, data.image_size, data.image_size],
            "dtype": str(dataset.input_dtype).removeprefix("torch."),
            "layout": "NCHW",
        },
        "output": {
            "name": OUTPUT,
            "shape": ["batch", data.num_classes],
            "dtype": "float32",
            "meaning": "logits: softmax gives the class probabilities",
        },
        # data.image_transform: pixels scaled to [0, 1] (8-bit images divided by 255), then per channel
        "normalization": {"mean": list(mean), "std": list(std), "input": "(pixel / 255 - mean) / std"},
        "classes": list(dataset.class_names),
        "data": data.name,
        "model": trained.model._target_,
        "ckpt_path": str(checkpoint),
        "written_by": writer,
        "torch": torch.__version__,
    }


def test_images(trained: DictConfig, count: int) -> torch.Tensor:
    """The first `count` images of the training run's test split (its seeded split), as the model gets them."""
    pipeline = DataPipeline(trained.data, seed=trained.seed)
    pipeline.prepare_data()
    pipeline.setup("test")
    test_set = pipeline.test_set
    return torch.stack([test_set[index][0] for index in range(min(count, len(test_set)))])


def batch_dimension() -> dict[int, Any]:
    return {0: torch.export.Dim("batch", min=1, max=65536)}


def export_program(model: nn.Module, images: torch.Tensor, path: Path) -> None:
    # Traced on 2 images (a size of 1 would be specialised), checked on other sizes: the batch is dynamic.
    program = torch.export.export(model, (images[:2],), dynamic_shapes=(batch_dimension(),))
    torch.export.save(program, path)


def export_onnx(model: nn.Module, images: torch.Tensor, path: Path) -> int:
    """The dynamo exporter (torch.export, then onnxscript); one file (no external weights). Returns the opset."""
    import onnx

    for name in ("onnxscript", "onnx_ir"):  # their progress messages, at INFO, would fill export.log
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.onnx.export(
        model,
        (images[:2],),
        str(path),
        dynamo=True,
        dynamic_shapes=(batch_dimension(),),
        input_names=[INPUT],
        output_names=[OUTPUT],
        external_data=False,
        verbose=False,
    )
    onnx.checker.check_model(str(path))
    return next(entry.version for entry in onnx.load(str(path)).opset_import if entry.domain in ("", "ai.onnx"))


def load_exported(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """An exported file as a function of a float32 NCHW batch, returning its logits (predict.py and serve.py use it
    too): the .pt2 through torch.export.load, the .onnx in ONNX Runtime on the CPU."""
    if path.suffix == ".onnx":
        require_onnx(f"the ONNX file {path}")
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda batch: session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
    program = torch.export.load(path).module()

    @torch.no_grad()
    def run(batch: np.ndarray) -> np.ndarray:
        return program(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()

    return run


def check_export(
    kind: str, run: Callable[[np.ndarray], np.ndarray], model: nn.Module, images: torch.Tensor, tolerance: float
) -> dict[str, Any]:
    """The exported file against the PyTorch model, on the test images and on a single one (other batch sizes than
    the export traced): the largest logit difference, and the same predicted class for every image."""
    worst = 0.0
    for batch in (images, images[:1]):
        with torch.no_grad():
            expected = model(batch).numpy()
        got = run(batch.numpy())
        if got.shape != expected.shape:
            raise UserError(
                f"the {kind} export gives logits of shape {got.shape} for a batch of {len(batch)}, the "
                f"model {expected.shape}: not kept"
            )
        difference = float(np.abs(got - expected).max())
        same = bool((got.argmax(1) == expected.argmax(1)).all())
        if not difference <= tolerance or not same:
            raise UserError(
                f"the {kind} export differs from the PyTorch model on {len(batch)} test images (max "
                f"|logit difference| {difference:.3g}, check.tolerance={tolerance:g}; predicted classes "
                f"{'the same' if same else 'differ'}): not kept, nothing written"
            )
        worst = max(worst, difference)
    return {"max_abs_diff": worst, "same_classes": True, "samples": len(images), "tolerance": tolerance}
