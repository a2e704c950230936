"""The datasets: a registry with one entry per dataset, each a `DatasetSpec` in its own module of this package.

An entry holds everything the project knows of a dataset: how its splits load (files, download, file checks), its
normalisation, its class names and its input shape. configs/data/<name>.yaml holds the settings a run may change
(root, batch size, loader, fractions, augmentation). Nothing outside this package asks a dataset's name: the data
pipeline, the tensor loader, export's model card and the figures ask the entry, `get(cfg.data.name)`.

A new dataset is one module here and one config (README: "Add your own dataset"): every module of this package
whose name does not start with "_" is imported when the package is, and registers its entry with @register.
"""

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

from ..errors import UserError

OFFLINE_FALLBACK = "digits"  # the dataset that needs no download: what an offline error suggests instead


class DatasetSpec:
    """One dataset. A subclass sets the class attributes and `load`; @register adds it to the registry.

    `load(root, train, download)` returns a split as a Dataset of (image, int label), the image a float32 (C, H, W)
    tensor normalised as the model takes it. Without a test split of its own (`has_test_split = False`), train=True is
    the one pool of images, from which data.val_fraction and data.test_fraction cut validation and test; with one,
    train=False is the official test split and data.val_fraction is cut from the training split.
    """

    name: str
    mean: tuple[float, ...]  # per channel, of the pixels scaled to [0, 1]
    std: tuple[float, ...]
    input_shape: tuple[int, int, int]  # channels, height, width of one image as the model takes it
    input_dtype = torch.float32  # of the model's input (an image file is converted to it by `transform`)
    class_names: tuple[str, ...]  # index -> name, as the labels count
    has_test_split = False
    downloads = False  # True: prepare() fetches files (once per machine, before any process reads them)

    def load(self, root: str, train: bool, download: bool) -> Dataset:
        raise NotImplementedError(f"{type(self).__name__}.load")

    def prepare(self, root: str, download: bool) -> None:
        """Download and check the files, on one process per machine (both engines: local rank 0)."""

    def arrays(self, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """data.loader=tensor: the images of a split `load` returned as one (N, C, H, W) tensor, uint8 pixels (the
        tensor loader scales and normalises them on the device) or float32 inputs normalised already, and int64
        labels; read from the dataset's arrays, not through a per-sample transform."""
        if isinstance(dataset, TensorDataset):
            images, labels = dataset.tensors
            return images, labels.to(torch.int64)
        raise NotImplementedError(f"{type(self).__name__}.arrays for a {type(dataset).__name__}")

    def missing_files(self, root: str) -> list[str]:
        """The files that `load` needs under root and does not find (no download): none for generated data."""
        return []

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) floats in [0, 1] as the model takes them: per channel (x - mean) / std."""
        mean = torch.tensor(self.mean, dtype=images.dtype).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype).view(-1, 1, 1)
        return (images - mean) / std

    def transform(self) -> Callable[[Any], torch.Tensor]:
        """An image file's preprocessing: training's, for {% if cookiecutter.include_deployment %}predict.py and serve.py (and {% endif %}the torchvision datasets{% if cookiecutter.include_deployment %}){% endif %}."""
        return image_transform(self.mean, self.std)


REGISTRY: dict[str, DatasetSpec] = {}


def register(spec_class: type[DatasetSpec]) -> type[DatasetSpec]:
    """Class decorator: adds an instance of `spec_class` to the registry under its `name`."""
    spec = spec_class()
    for key in ("name", "mean", "std", "input_shape", "class_names"):
        if not hasattr(spec, key):
            raise TypeError(f"{spec_class.__name__} does not set {key}")
    if spec.input_shape[1] != spec.input_shape[2]:  # configs/data and the models know one image_size
        raise TypeError(f"{spec_class.__name__}: input_shape {spec.input_shape} is not square")
    if len(spec.mean) != spec.input_shape[0] or len(spec.std) != spec.input_shape[0]:
        raise TypeError(f"{spec_class.__name__}: mean and std need one value per channel ({spec.input_shape[0]})")
    if spec.name in REGISTRY and type(REGISTRY[spec.name]) is not spec_class:
        raise TypeError(f"two datasets are named {spec.name!r}: {type(REGISTRY[spec.name]).__name__}, {spec_class}")
    REGISTRY[spec.name] = spec
    return spec_class


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str) -> DatasetSpec:
    if name not in REGISTRY:
        raise UserError(f"data.name={name!r} is not a known dataset: use one of {', '.join(names())}")
    return REGISTRY[name]


def check_config(cfg: Any) -> DatasetSpec:
    """The entry of configs/data/<name>.yaml (`cfg`: its node), refusing a config that does not fit it."""
    spec = get(cfg.name)
    channels, height, width = spec.input_shape
    for key, value, expected in (
        ("channels", cfg.channels, channels),
        ("image_size", cfg.image_size, height),
        ("num_classes", cfg.num_classes, len(spec.class_names)),
    ):
        if value != expected:
            raise UserError(
                f"data.{key}={value} is not valid for data={spec.name}: its images are {channels}x{height}x{width} "
                f"in {len(spec.class_names)} classes, so data.{key}={expected}"
            )
    if not spec.has_test_split and cfg.get("test_fraction") is None:
        raise UserError(
            f"data.test_fraction is not set for data={spec.name}: it has no test split of its own, so one is cut "
            "from its images; set a fraction in (0.0, 1.0)"
        )
    return spec


def image_transform(mean: tuple[float, ...], std: tuple[float, ...]) -> Callable[[Any], torch.Tensor]:
    """An image (PIL, uint8 tensor, or an H x W x C array: uint8 0-255 or floats in [0, 1]) as the model's input: the
    preprocessing of training, written once (the torchvision datasets{% if cookiecutter.include_deployment %}, predict.py and serve.py{% endif %} use it)."""
    from torchvision.transforms import v2

    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


for _module in pkgutil.iter_modules(__path__):  # every dataset module registers its entry on import
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
