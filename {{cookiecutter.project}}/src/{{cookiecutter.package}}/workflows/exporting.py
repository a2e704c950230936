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
import io
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..core import datasets
from ..core.data import DataPipeline
from ..core.errors import UserError, foreign_reason
from ..core.models import build_model
from ..run.checkpoint import check_weights_fit, model_state_dict
from ..run.config_rules import POSITIVE, WHOLE_1, one_of, shown, validate
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
            card["checks"][kind] = check_export(
                kind, load_exported(path, key=f"the {kind} export"), model, images, cfg.check.tolerance
            )
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
    validate(trained)  # the checkpoint's values obey the rules typed ones do (the model's: build_model)
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


# What torch.export.save writes for one program named "model", under the archive's folder: the only entries a
# model.pt2 may hold unless trust_archive=true.
PT2_ENTRIES = re.compile(
    r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|models/model\.json"
    r"|data/(weights/model_weights_config\.json|weights/weight_\d+|constants/model_constants_config\.json"
    r"|constants/tensor_\d+|sample_inputs/model\.pt)"
)
# Graph calls a .pt2 may make: ATen operators (except from_file, which maps a file) and the symbolic-size arithmetic
# of a dynamic batch. torch.export.load resolves any dotted name under torch, operator or math that the file gives.
PT2_OPERATOR = re.compile(
    r"torch\.ops\.aten\.(?!from_file\b)\w+\.\w+|_operator\.(getitem|add|sub|mul|floordiv|truediv|mod|neg|eq|ne|lt|le|gt|ge)"
    r"|torch\.sym_(int|float|max|min|not|sqrt|ite)|math\.(floor|ceil|trunc)"
)
# Symbolic sizes, which torch parses with sympy.sympify (an eval): "Symbol('s77', positive=True, integer=True)".
SYMBOL_EXPRESSION = re.compile(r"[\w\s'+\-*/%(),.=<>!]*")
SYMBOL_NAMES = re.compile(
    r"[su]\d+|\d+(\.\d+)?|Symbol|Integer|positive|integer|True|False|Max|Min|Mod|FloorDiv|PythonMod|CeilToInt|FloorToInt|TruncToInt|oo|int_oo"
)
TRUST_ARCHIVE = "trust_archive=true"


def check_archive(path: Path, key: str) -> None:
    """A model.pt2 is checked before torch.export.load reads it, which would run what the archive holds: pickles
    (the sample inputs, pickled weights, constants and objects, with weights_only=False), compiled AOTInductor
    libraries, guard code (exec), symbolic sizes (sympify) and any function its graph names. Accepted: export.py's
    entries only, tensors stored raw, sample inputs that load with weights_only=True (torch tries that first and
    then never falls back), ATen operators, no guard code, plain symbolic sizes. One line for anything else."""

    def refuse(what: str) -> UserError:
        return UserError(
            f"{key}={path} {what}: export.py never writes that, and torch.export.load would run it; load only "
            f"archives you made or trust, with {TRUST_ARCHIVE}"
        )

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            roots = {name.split("/", 1)[0] for name in names}
            if len(roots) != 1 or any("/" not in name for name in names):
                raise refuse(f"holds entries outside one archive folder ({', '.join(sorted(roots)[:3])})")
            root = roots.pop()
            for name in names:
                if not PT2_ENTRIES.fullmatch(name.removeprefix(f"{root}/")):
                    raise refuse(f"holds the entry {name!r}")

            def read_json(entry: str) -> Any:
                return json.loads(archive.read(f"{root}/{entry}")) if f"{root}/{entry}" in names else None

            for entry in ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json"):
                for name, payload in ((read_json(entry) or {}).get("config") or {}).items():
                    if payload.get("use_pickle") or not re.fullmatch(r"(weight|tensor)_\d+", payload["path_name"]):
                        raise refuse(f"stores {name!r} as a pickle, not as raw tensor bytes")
            if f"{root}/data/sample_inputs/model.pt" in names:
                try:
                    torch.load(io.BytesIO(archive.read(f"{root}/data/sample_inputs/model.pt")), weights_only=True)
                except Exception:
                    raise refuse("holds sample inputs that are not plain tensors (a pickle)") from None
            program = read_json("models/model.json")
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise UserError(
            f"{key}={path} cannot be loaded ({foreign_reason(err)}): not a complete file written by export.py"
        ) from None
    if not isinstance(program, dict):
        raise refuse("holds no program (models/model.json)")
    if program.get("guards_code"):
        raise refuse("holds guard code (Python that loading runs)")
    for kind, value in program_strings(program):
        if kind == "target" and not PT2_OPERATOR.fullmatch(value):
            raise refuse(f"calls {value!r}, which is not an ATen operator")
        if kind == "expr_str" and not (
            SYMBOL_EXPRESSION.fullmatch(value)
            and all(SYMBOL_NAMES.fullmatch(word) for word in re.findall(r"[A-Za-z_]\w*|\d+(?:\.\d+)?", value))
            and "'" not in re.sub(r"'[su]\d+'", "", value)
        ):
            raise refuse(f"holds the symbolic size {value[:80]!r}, which is not plain arithmetic")


def program_strings(value: Any) -> Iterator[tuple[str, str]]:
    """("target", name) for every graph node of a serialized program, ("expr_str", text) for every symbolic size."""
    if isinstance(value, dict):
        if isinstance(value.get("target"), str) and "inputs" in value:
            yield "target", value["target"]
        if isinstance(value.get("expr_str"), str):
            yield "expr_str", value["expr_str"]
        for item in value.values():
            yield from program_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from program_strings(item)


@contextmanager
def torch_quiet() -> Iterator[None]:
    """torch.export.load logs a warning with a traceback for a file it cannot read, before it raises: the caller
    says it in one line instead."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def load_exported(
    path: Path, trust_archive: bool = False, key: str = "model_path"
) -> Callable[[np.ndarray], np.ndarray]:
    """An exported file as a function of a float32 NCHW batch, returning its logits (predict.py and serve.py use it
    too): the .pt2 through torch.export.load once check_archive has passed (not checked with `trust_archive`), the
    .onnx in ONNX Runtime on the CPU (which runs the graph's operators, no Python of the file)."""
    if path.suffix == ".onnx":
        require_onnx(f"the ONNX file {path}")
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda batch: session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0]
    with torch_quiet():
        if not trust_archive:
            check_archive(path, key)
        try:
            program = torch.export.load(path).module()
        except Exception as err:  # a truncated or foreign file
            raise UserError(
                f"{key}={path} cannot be loaded ({foreign_reason(err)}): not a complete file written by export.py"
            ) from None

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
