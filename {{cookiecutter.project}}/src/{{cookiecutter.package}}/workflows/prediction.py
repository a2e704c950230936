"""predict.py's logic, and what serve.py serves: a model (an exported model.pt2 or model.onnx with its model.json, or
a checkpoint of either engine) given images with exactly the preprocessing of training (datasets.image_transform).

An input is an image file (8-bit grayscale or RGB, the model's size: nothing is resized, as training resized
nothing) or an array of pixel values channels last, as in an image file: integers 0-255 or floats in [0, 1], one
image (H, W) or (H, W, C), or a stack (N, H, W) or (N, H, W, C). An input that is none of these is refused with one
line naming it (BadInput); the others are still predicted.
"""

import csv
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from ..core.datasets import image_transform
from ..core.errors import UserError, foreign_reason
from ..run.config_rules import BOOLEAN, WHOLE_1, shown
from .exporting import CARD, FILES, load_exported, load_trained

OUTPUT_FORMATS = (".json", ".csv")
MODES = {"L": 1, "RGB": 3}  # the Pillow modes an input image may have: 8-bit grayscale or colour


class BadInput(ValueError):
    """One input that cannot be predicted; the message says why (the caller names the input)."""


@dataclass
class Model:
    """A model to predict with, whatever its file: `logits` maps a float32 (N, C, H, W) batch to its logits."""

    path: Path
    card: dict[str, Any]  # model.json's contents (for a checkpoint: as export.py would write them)
    logits: Callable[[np.ndarray], np.ndarray]

    def __post_init__(self) -> None:
        _, self.channels, self.image_size, _ = self.card["input"]["shape"]
        self.classes: list[str] = self.card["classes"]
        normalization = self.card["normalization"]
        self.transform = image_transform(tuple(normalization["mean"]), tuple(normalization["std"]))

    def probabilities(self, images: list[torch.Tensor], batch_size: int = 256) -> np.ndarray:
        """Softmax of the logits, one row per image, in batches of at most `batch_size`."""
        rows = [
            self.logits(torch.stack(images[start : start + batch_size]).numpy())
            for start in range(0, len(images), batch_size)
        ]
        return torch.softmax(torch.from_numpy(np.concatenate(rows)).double(), dim=1).numpy()

    def result(self, name: str, probabilities: np.ndarray) -> dict[str, Any]:
        """What predict.py writes and serve.py answers for one input."""
        index = int(probabilities.argmax())
        return {
            "input": name,
            "class": index,
            "label": self.classes[index],
            "probability": float(probabilities[index]),
            "probabilities": {label: float(p) for label, p in zip(self.classes, probabilities, strict=True)},
        }


def load_model(value: Any, key: str = "model_path", trust_archive: Any = False) -> Model:
    """model_path=<file>: an exported model.pt2 or model.onnx (model.json beside it), its export folder, or a checkpoint
    of either engine (last.ckpt or best.ckpt, where its training run's config can be read). A model.pt2 is checked
    before loading (exporting.check_archive) unless `trust_archive` (configs/predict.yaml says why)."""
    if not BOOLEAN.test(trust_archive):
        raise UserError(f"trust_archive={shown(trust_archive)} is not valid: {BOOLEAN.accepted}")
    if value in (None, "", "null", "None"):
        raise UserError(
            f"{key} is required: {key}=<export folder>/model.pt2 or model.onnx (python export.py), or a "
            "checkpoint (<run>/checkpoints/best.ckpt)"
        )
    path = Path(str(value)).expanduser()
    if path.is_dir():
        path = next((path / name for name in FILES.values() if (path / name).is_file()), path)
    if not path.is_file():
        problem = (
            f"a folder without {' or '.join(FILES.values())}"
            if path.is_dir()
            else "not a regular file"
            if path.exists()
            else "no such file"
        )
        raise UserError(
            f"{key}={value}: {problem}; give an exported model.pt2 or model.onnx "
            "(logs/export/<run>/), or a checkpoint file (logs/train/<engine>/<run>/checkpoints/best.ckpt)"
        )
    path = path.resolve()
    if path.suffix not in (".pt2", ".onnx"):
        model, _, card = load_trained(path)

        @torch.no_grad()
        def logits(batch: np.ndarray) -> np.ndarray:
            return model(torch.from_numpy(batch)).numpy()

        return Model(path, card, logits)
    card_path = path.with_name(CARD)
    if not card_path.is_file():
        raise UserError(
            f"{key}={path}: no {CARD} beside it, which says the model's input and classes: keep the "
            "files export.py wrote together"
        )
    try:
        card = json.loads(card_path.read_text())
        run = load_exported(path, trust_archive, key)
    except UserError:
        raise
    except Exception as err:  # a truncated or foreign file
        raise UserError(
            f"{key}={path} cannot be loaded ({foreign_reason(err)}): not a complete file written by export.py"
        ) from None
    return Model(path, card, run)


def image_from_bytes(data: bytes, model: Model) -> torch.Tensor:
    """An image file's bytes as the model's input; BadInput when it is not an image the model takes."""
    from PIL import Image  # pillow, which summaries.py draws the figures with

    try:
        with Image.open(io.BytesIO(data)) as image:
            size = model.image_size
            if image.size != (size, size):  # checked before decoding: a small file may hold a huge image
                raise BadInput(
                    f"is {image.width}x{image.height} pixels: the model takes {size}x{size} (predictions "
                    "resize nothing, as training did not)"
                )
            image.load()
            if image.mode in ("1", "P"):  # 1-bit and palette images: their 8-bit equivalent
                image = image.convert("L" if image.mode == "1" else "RGB")
            channels = len(image.getbands())
            if image.mode not in MODES or MODES[image.mode] != model.channels:
                expected = "8-bit grayscale (mode L)" if model.channels == 1 else "8-bit RGB"
                raise BadInput(
                    f"has {channels} channel{'s' * (channels != 1)} (mode {image.mode}): the model takes "
                    f"{model.channels}, {expected}"
                )
            return model.transform(image)
    except BadInput:
        raise
    except Exception:  # UnidentifiedImageError, DecompressionBombError, a truncated or corrupt file: anything
        raise BadInput("is not an image file that Pillow can read (PNG, JPEG, BMP, ...)") from None


def image_shapes(model: Model) -> list[tuple[int, ...]]:
    """The shapes of an array that holds one image (channels last, as in an image file)."""
    size, channels = model.image_size, model.channels
    return [(size, size, channels)] + ([(size, size)] if channels == 1 else [])


def images_from_array(array: np.ndarray, model: Model) -> list[torch.Tensor]:
    """An array of pixel values, channels last (one image or a stack), as the model's inputs; BadInput otherwise."""
    one = image_shapes(model)
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise BadInput(f"holds {array.dtype} values: give pixel values, integers 0-255 or floats in [0, 1]")
    if array.shape in one:
        stack = array[None]
    elif array.ndim >= 3 and array.shape[1:] in one and len(array):
        stack = array
    else:
        shapes = " or ".join(str(shape) for shape in one)
        raise BadInput(
            f"has shape {tuple(array.shape)}: the model takes one image of shape {shapes} (channels last, "
            "as in an image file) or a stack of them, (N, ...)"
        )
    if np.issubdtype(stack.dtype, np.integer):
        if stack.min() < 0 or stack.max() > 255:
            raise BadInput("holds integers outside 0-255: give 8-bit pixel values, or floats in [0, 1]")
        stack = stack.astype(np.uint8)
    else:
        if not np.isfinite(stack).all() or stack.min() < 0 or stack.max() > 1:
            raise BadInput("holds floats outside [0, 1] (or NaN/Inf): give pixel values in [0, 1], or integers 0-255")
        stack = stack.astype(np.float32)
    return [model.transform(image) for image in stack]


def read_inputs(value: Any, model: Model) -> tuple[list[tuple[str, torch.Tensor]], list[tuple[str, str]]]:
    """inputs=<image file, .npy file or folder of them>: the inputs, named (a stack's images as file.npy[i]), and
    the (file, reason) of each one refused. An empty folder or a missing path is a UserError."""
    if value in (None, "", "null", "None"):
        raise UserError("inputs is required: inputs=<an image file, a folder of images, or a .npy file>")
    path = Path(str(value)).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise UserError(f"inputs={value}: the folder holds no files; give a folder of images or .npy files")
    elif path.is_file():
        files = [path]
    else:
        raise UserError(f"inputs={value}: no such file or folder")
    inputs, refused = [], []
    for file in files:
        try:
            if file.suffix.lower() == ".npy":
                try:
                    array = np.load(file, allow_pickle=False)
                except (ValueError, OSError, EOFError):
                    raise BadInput("is not a NumPy .npy file of numbers") from None
                images = images_from_array(array, model)
                names = (
                    [str(file)]
                    if array.shape in image_shapes(model)
                    else [f"{file}[{index}]" for index in range(len(images))]
                )
                inputs += zip(names, images, strict=True)
            else:
                inputs.append((str(file), image_from_bytes(file.read_bytes(), model)))
        except BadInput as err:
            refused.append((str(file), str(err)))
    return inputs, refused


def predict(cfg: DictConfig, run_dir: Path) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Predict cfg.inputs with cfg.model_path; print one line per input and write cfg.output (default: run_dir/
    predictions.json). Returns the results and the refused inputs (each printed as one line naming it)."""
    output = Path(cfg.output) if cfg.get("output") not in (None, "", "null", "None") else run_dir / "predictions.json"
    if output.suffix.lower() not in OUTPUT_FORMATS:
        raise UserError(f"output={cfg.output} is not valid: a file name ending in .json or .csv")
    if not WHOLE_1.test(cfg.batch_size):
        raise UserError(f"batch_size={shown(cfg.batch_size)} is not valid: {WHOLE_1.accepted}")
    model = load_model(cfg.model_path, trust_archive=cfg.get("trust_archive", False))
    inputs, refused = read_inputs(cfg.inputs, model)
    for name, reason in refused:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if not inputs:
        raise UserError(f"inputs={cfg.inputs}: none of its {len(refused)} files could be predicted (each named above)")
    probabilities = model.probabilities([image for _, image in inputs], cfg.batch_size)
    results = [model.result(name, row) for (name, _), row in zip(inputs, probabilities, strict=True)]
    for result in results:
        top = sorted(result["probabilities"].items(), key=lambda item: -item[1])[:3]
        print(
            f"{result['input']}: {result['label']} ({result['probability']:.4f}; "
            + ", ".join(f"{label} {p:.4f}" for label, p in top)
            + ")"
        )
    write_results(results, refused, model, output)
    print(
        f"{len(results)} prediction{'s' * (len(results) != 1)} of {model.path} written to {output}"
        + (f"; {len(refused)} input{'s' * (len(refused) != 1)} skipped" if refused else "")
    )
    return results, refused


def write_results(results: list[dict[str, Any]], refused: list[tuple[str, str]], model: Model, output: Path) -> None:
    """JSON: the model, the results and the refused inputs; CSV: one row per result, a column per class."""
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".json":
        output.write_text(
            json.dumps(
                {
                    "model": str(model.path),
                    "classes": model.classes,
                    "predictions": results,
                    "skipped": [{"input": name, "error": reason} for name, reason in refused],
                },
                indent=2,
            )
            + "\n"
        )
        return
    with output.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["input", "class", "label", "probability", *(f"p_{label}" for label in model.classes)])
        for result in results:
            writer.writerow(
                [
                    result["input"],
                    result["class"],
                    result["label"],
                    result["probability"],
                    *result["probabilities"].values(),
                ]
            )
