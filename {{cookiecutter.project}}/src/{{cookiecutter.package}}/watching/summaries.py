"""TensorBoard artefacts beyond the scalars, written the same way by both engines.

Each function takes a `torch.utils.tensorboard.SummaryWriter` (Lightning's `TensorBoardLogger.experiment`
is one) and does nothing when its switch in configs/logger/tensorboard.yaml is off. `Summaries` calls them at
the points of a run where both engines write them: its methods are named after the Lightning hooks, and each
engine calls each of them in one line (engines/raw.py from its loop, engines/lightning.py from a callback).
The tags are the same in both engines:

    inputs/train              IMAGES     a grid of training images, once at the start
    (graph)                   GRAPHS     the model's graph, traced once at the start
    weights/<parameter>       HISTOGRAMS every n-th epoch, at its first optimizer step
    gradients/<parameter>     HISTOGRAMS the gradients of that step, before they are zeroed
    test/misclassified        IMAGES     test examples the model gets wrong, titled "3 (true 8)"
    test/confusion_matrix     IMAGES     true class x predicted class counts on the test set
    (hparams)                 HPARAMS    the run's settings next to test/acc, test/loss and val/acc

Nothing here runs per training step except the histograms, on their epochs. No function draws from the
global random generators, so logging does not change what the model learns.
This module must not import lightning.
"""

import math
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from ..core.errors import UserError
from ..run.distributed import reduce_sum

INPUTS_TAG = "inputs/train"
MISCLASSIFIED_TAG = "test/misclassified"
CONFUSION_MATRIX_TAG = "test/confusion_matrix"
# The metric columns of the HPARAMS tab: TensorBoard reads their values from the run's scalars of these tags.
HPARAM_METRICS = ("test/acc", "test/loss", "val/acc")
MIN_IMAGE_PIXELS = 28  # smaller images (8x8 digits) are enlarged, pixel by pixel, to be visible


@dataclass(frozen=True)
class Settings:
    """The switches of configs/logger/tensorboard.yaml, checked once before the run starts. A figure switch left
    null is on: engine=raw and engine=lightning write the figures; engine=minimal and engine=fabric write the
    scalars only and refuse a switch set on (run/config_rules.py check_rung)."""

    images: bool = True
    num_samples: int = 32
    graph: bool = True
    histogram_every_n_epochs: int = 5  # 0: no histograms
    confusion_matrix: bool = True
    hparams: bool = True

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "Settings":
        values = {field.name: cfg.get(field.name, field.default) for field in fields(cls)}
        values = {name: field_default(cls, name) if value is None else value for name, value in values.items()}
        for field in fields(cls):
            if field.type is bool and not isinstance(values[field.name], bool):
                raise UserError(
                    f"logger.tensorboard.{field.name}={values[field.name]!r} is not valid: use true, false or null"
                )
        for name, least in (("num_samples", 1), ("histogram_every_n_epochs", 0)):
            value = values[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise UserError(
                    f"logger.tensorboard.{name}={value!r} is not valid: use a whole number of at least {least}"
                )
        return cls(**values)


def field_default(cls: type, name: str) -> Any:
    return next(field.default for field in fields(cls) if field.name == name)


OFF = Settings(images=False, graph=False, histogram_every_n_epochs=0, confusion_matrix=False, hparams=False)


def write_hparams(cfg: DictConfig, tensorboard_dir: Path) -> None:
    """The composed config beside the TensorBoard events, in both engines (Lightning keeps an existing file)."""
    try:
        tensorboard_dir.mkdir(parents=True, exist_ok=True)
        (tensorboard_dir / "hparams.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    except OSError as err:
        raise UserError(
            f"TensorBoard logs cannot be written to {tensorboard_dir} ({err.strerror or err}): make it a "
            "writable folder (logger.tensorboard.subdir), or choose another paths.log_dir"
        ) from None


class NullWriter:
    """What ranks > 0 get instead of a SummaryWriter: the same methods, writing nothing (rank 0 alone logs)."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


class Summaries:
    """The artefacts below, hook by hook, for one run: the same calls from both engines."""

    def __init__(self, cfg: DictConfig) -> None:
        tensorboard = (cfg.get("logger") or {}).get("tensorboard")  # None: TensorBoard is not among the loggers
        self.cfg, self.settings = cfg, Settings.from_config(tensorboard) if tensorboard is not None else OFF
        self.mistakes: Mistakes | None = None

    def on_train_start(self, writer: SummaryWriter, model: nn.Module, train_set: Dataset, global_step: int) -> None:
        """What the model sees, and its graph, once per run (a resumed run has them already)."""
        if global_step == 0:
            add_input_images(writer, self.settings, train_set)
            add_graph(writer, self.settings, model, train_set)

    def on_before_optimizer_step(
        self, writer: SummaryWriter, model: nn.Module, epoch: int, batch_idx: int, accumulate: int, global_step: int
    ) -> None:
        """After backward and unscaling, before clipping and zero_grad: the histograms, on their epochs."""
        if histograms_due(self.settings, epoch, batch_idx, accumulate):
            add_histograms(writer, model, global_step)

    def on_test_start(self, device: torch.device) -> None:
        self.mistakes = Mistakes(self.settings, self.cfg.data.num_classes, device)

    def on_test_batch_end(self, inputs: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.mistakes.update(inputs, logits, targets)

    def on_test_end(self, writer: SummaryWriter | None, global_step: int) -> None:
        """The confusion matrix (on every rank: it syncs under DDP), the misclassified examples and the hparams,
        written where `writer` is not None."""
        self.mistakes.write(writer, global_step)
        if writer is not None:
            add_hparams(writer, self.settings, self.cfg)


def first_examples(dataset: Dataset, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` (image, label) pairs. The split already shuffled them with the seed: no random draw."""
    pairs = [dataset[i] for i in range(min(count, len(dataset)))]
    return torch.stack([image for image, _ in pairs]), torch.tensor([int(label) for _, label in pairs])


def viewable(images: torch.Tensor) -> torch.Tensor:
    """Normalised images back to [0, 1] for display: each channel stretched over the batch's own range
    (the inverse of the normalisation up to contrast), and small images enlarged."""
    images = torch.nan_to_num(images.detach().float().cpu(), nan=0.0, posinf=0.0, neginf=0.0)
    low = images.amin(dim=(0, 2, 3), keepdim=True)
    high = images.amax(dim=(0, 2, 3), keepdim=True)
    images = (images - low) / (high - low).clamp_min(1e-8)
    scale = math.ceil(MIN_IMAGE_PIXELS / min(images.shape[-2:]))
    return F.interpolate(images, scale_factor=scale, mode="nearest") if scale > 1 else images


def add_input_images(writer: SummaryWriter, settings: Settings, dataset: Dataset) -> None:
    """IMAGES tab: what the model sees, once at the start (step 0)."""
    if settings.images:
        images, _ = first_examples(dataset, settings.num_samples)
        # A white frame around each image: add_images tiles them edge to edge.
        writer.add_images(INPUTS_TAG, F.pad(viewable(images), (1, 1, 1, 1), value=1.0), 0)


def add_graph(writer: SummaryWriter, settings: Settings, model: nn.Module, dataset: Dataset) -> None:
    """GRAPHS tab: the model's layers and tensor shapes, traced once on a batch of training images.

    The trace runs in eval mode (add_graph switches it), so batch-norm statistics and dropout's random
    draws are untouched. A compiled model (compile=true) cannot be traced: it gets no graph.
    """
    if not settings.graph:
        return
    if getattr(model, "_compiled_call_impl", None) is not None:  # set by nn.Module.compile()
        print("tensorboard: no model graph for a compiled model (compile=true)", flush=True)
        return
    parameter = next(model.parameters())
    images, _ = first_examples(dataset, settings.num_samples)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # add_graph uses the deprecated torch.jit tracer
        writer.add_graph(model, images.to(parameter.device, parameter.dtype))


def histograms_due(settings: Settings, epoch: int, batch_idx: int, accumulate: int) -> bool:
    """True at the first optimizer step of epochs 0, n, 2n, ... (n = histogram_every_n_epochs)."""
    every = settings.histogram_every_n_epochs
    return every > 0 and epoch % every == 0 and batch_idx < accumulate


def gradient_norm(model: nn.Module) -> torch.Tensor:
    """train/grad_norm: the 2-norm of all the model's gradients together (after unscaling, before clipping)."""
    return torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])


def add_histograms(writer: SummaryWriter, model: nn.Module, step: int) -> None:
    """HISTOGRAMS tab: every parameter and its gradient. Call it after backward (and after unscaling under
    float16), before the optimizer zeroes the gradients."""
    for name, parameter in model.named_parameters():
        for kind, values in (("weights", parameter.detach()), ("gradients", parameter.grad)):
            # A histogram cannot bin NaN or inf: such a step is left out (guards.py stops the run on it).
            if values is not None and bool(values.isfinite().all()):
                writer.add_histogram(f"{kind}/{name}", values, step)


class Mistakes:
    """The test set's confusion matrix and its first misclassified examples, gathered batch by batch."""

    def __init__(self, settings: Settings, num_classes: int, device: torch.device) -> None:
        self.settings = settings
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)  # true x predicted
        self.images: list[torch.Tensor] = []
        self.predicted: list[torch.Tensor] = []
        self.true: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, inputs: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        predicted = logits.argmax(dim=1)
        if self.settings.confusion_matrix:
            classes = len(self.confusion)
            pairs = targets * classes + predicted  # one bin per (true, predicted) class
            self.confusion += torch.bincount(pairs, minlength=classes**2).view_as(self.confusion)
        missing = self.settings.num_samples - sum(len(batch) for batch in self.true)
        if self.settings.images and missing > 0:
            wrong = (predicted != targets).nonzero().squeeze(1)[:missing]
            self.images.append(inputs[wrong].cpu())
            self.predicted.append(predicted[wrong].cpu())
            self.true.append(targets[wrong].cpu())

    def write(self, writer: SummaryWriter | None, step: int) -> None:
        """Compute (on every rank) and write the figures (where `writer` is not None)."""
        if self.settings.confusion_matrix:
            matrix = self.confusion.clone()
            reduce_sum(matrix)  # under DDP: every rank's counts (so every rank must call write)
            matrix = matrix.cpu()
            if writer is not None:
                writer.add_image(CONFUSION_MATRIX_TAG, confusion_matrix_figure(matrix), step, dataformats="HWC")
        if self.settings.images and writer is not None:
            figure = (
                misclassified_figure(torch.cat(self.images), torch.cat(self.predicted), torch.cat(self.true))
                if self.images
                else misclassified_figure(torch.empty(0), torch.empty(0), torch.empty(0))
            )
            writer.add_image(MISCLASSIFIED_TAG, figure, step, dataformats="HWC")


# The figures are drawn with Pillow: matplotlib took over a second of every run to import and lay them out.
BLUES = ((247, 251, 255), (8, 48, 107))  # the two ends of matplotlib's "Blues" colour map
MISTAKE_RED = (214, 39, 40)


def confusion_matrix_figure(matrix: torch.Tensor) -> np.ndarray:
    """An RGB image (H, W, 3) of the counts: rows are the true classes, columns the predicted ones; the darker a
    cell, the larger its count."""
    from PIL import Image, ImageDraw

    font, classes, peak = label_font(), len(matrix), max(int(matrix.max()), 1)
    cell = max(36, text_size(font, str(peak))[0] + 10)  # room for the largest count
    left, top = 26 + text_size(font, str(classes - 1))[0], 8  # room for the axis title and the class numbers
    image = Image.new("RGB", (left + classes * cell + 8, top + classes * cell + 44), "white")
    draw = ImageDraw.Draw(image)
    for true, row in enumerate(matrix.tolist()):
        for predicted, count in enumerate(row):
            shade = count / peak
            x, y = left + predicted * cell, top + true * cell
            draw.rectangle(
                (x, y, x + cell - 1, y + cell - 1),
                fill=tuple(round(a + (b - a) * shade) for a, b in zip(*BLUES, strict=True)),
            )
            centred_text(draw, (x + cell / 2, y + cell / 2), str(count), font, "white" if shade > 0.5 else "black")
    for index in range(classes):
        number_width = text_size(font, str(index))[0]
        centred_text(draw, (left - 4 - number_width / 2, top + (index + 0.5) * cell), str(index), font)
        centred_text(draw, (left + (index + 0.5) * cell, top + classes * cell + 10), str(index), font)
    centred_text(draw, (left + classes * cell / 2, image.height - 12), "predicted class", font)
    title = Image.new("RGB", (classes * cell, 18), "white")  # the vertical axis title: drawn across, then turned
    centred_text(ImageDraw.Draw(title), (title.width / 2, title.height / 2), "true class", font)
    image.paste(title.rotate(90, expand=True), (2, top))
    return np.asarray(image)


def misclassified_figure(images: torch.Tensor, predicted: torch.Tensor, true: torch.Tensor) -> np.ndarray:
    """An RGB image (H, W, 3): each wrong example titled with its predicted class, then its true one."""
    from PIL import Image, ImageDraw

    font, columns = label_font(), 8
    if len(images) == 0:
        image = Image.new("RGB", (columns * 96, 96), "white")
        centred_text(ImageDraw.Draw(image), (image.width / 2, image.height / 2), "no misclassified test examples", font)
        return np.asarray(image)
    pictures = viewable(images)
    scale = math.ceil(64 / min(pictures.shape[-2:]))  # at least 64 pixels a side, pixel by pixel
    pictures = F.interpolate(pictures, scale_factor=scale, mode="nearest") if scale > 1 else pictures
    pictures = (pictures * 255).round().to(torch.uint8)
    pictures = pictures.expand(-1, 3, -1, -1) if pictures.shape[1] == 1 else pictures
    titles = [f"{guess} (true {label})" for guess, label in zip(predicted.tolist(), true.tolist(), strict=True)]
    count, _, height, width = pictures.shape
    cell_width = max(width, *(text_size(font, title)[0] for title in titles)) + 8
    cell_height = height + 22  # the title above the picture
    sheet = Image.new("RGB", (columns * cell_width, math.ceil(count / columns) * cell_height), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (picture, title) in enumerate(zip(pictures, titles, strict=True)):
        x, y = index % columns * cell_width, index // columns * cell_height
        sheet.paste(Image.fromarray(picture.permute(1, 2, 0).numpy()), (x + (cell_width - width) // 2, y + 20))
        centred_text(draw, (x + cell_width / 2, y + 10), title, font, MISTAKE_RED)
    return np.asarray(sheet)


def label_font() -> Any:
    """Pillow's own font at 12 px (a bitmap font where Pillow has no FreeType)."""
    from PIL import ImageFont

    return ImageFont.load_default(size=12)


def text_size(font: Any, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return right - left, bottom - top


def centred_text(draw: Any, centre: tuple[float, float], text: str, font: Any, fill: Any = "black") -> None:
    """Text centred on a point, measured rather than anchored (a bitmap font takes no anchor)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((centre[0] - (left + right) / 2, centre[1] - (top + bottom) / 2), text, font=font, fill=fill)


def hparam_values(cfg: DictConfig) -> dict[str, str | int | float | bool]:
    """The settings that tell runs apart, as flat scalars (the HPARAMS tab shows one column each)."""
    values = {
        "engine": cfg.engine.name,
        "data": cfg.data.name,
        "model": str(cfg.model._target_).rsplit(".", 1)[-1],
        "optimizer": str(cfg.optimizer._target_).rsplit(".", 1)[-1],
        "optimizer.lr": cfg.optimizer.lr,
        "optimizer.weight_decay": cfg.optimizer.get("weight_decay"),
        "scheduler": str(cfg.scheduler._target_).rsplit(".", 1)[-1] if cfg.scheduler._target_ else "none",
        "data.batch_size": cfg.data.batch_size,
        "trainer.max_epochs": cfg.trainer.max_epochs,
        "trainer.precision": str(cfg.trainer.precision),
        "trainer.accumulate_grad_batches": cfg.trainer.accumulate_grad_batches,
        "trainer.gradient_clip_val": cfg.trainer.gradient_clip_val,
        "seed": cfg.seed,
    }
    return {name: value for name, value in values.items() if value is not None}  # null: no column


def add_hparams(writer: SummaryWriter, settings: Settings, cfg: DictConfig) -> None:
    """HPARAMS tab: this run's settings next to its final test/acc, test/loss and val/acc.

    Written into the run's own event file, after the test: TensorBoard takes each metric's value from the
    run's scalar of that tag. (SummaryWriter.add_hparams would open a second run folder instead.)
    """
    if not settings.hparams:
        return
    file_writer = writer._get_file_writer()  # no public call writes a raw summary; Lightning uses this one too
    if file_writer is None:  # a writer that writes nothing (ranks > 0 under DDP)
        return
    for summary in hparams(hparam_values(cfg), dict.fromkeys(HPARAM_METRICS)):
        file_writer.add_summary(summary)
