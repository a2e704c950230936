"""scikit-learn's bundled 8x8 handwritten digits (1,797 images): no download, trains in seconds."""

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from . import DatasetSpec, register


@register
class Digits(DatasetSpec):
    name = "digits"
    mean, std = (0.3,), (0.38,)  # approximately those of the digits' pixels in [0, 1]
    input_shape = (1, 8, 8)
    class_names = tuple(str(digit) for digit in range(10))
    has_test_split = False  # one pool of images: data.test_fraction cuts the test split from it

    def load(self, root: str, train: bool, download: bool) -> Dataset:
        return TensorDataset(*load_digits_tensors())  # looked up when called: tests replace it


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits as (N, 1, 8, 8) float images in [0, 1] (its pixels count 0-16), normalised, and int64
    labels. Read from the file scikit-learn ships, as its load_digits reads it, without importing scikit-learn: that
    import (scipy with it) would add about a second to the start-up{% if cookiecutter.include_benchmarks %} (benchmarks/README.md){% endif %}."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    path = Path(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz") if spec else None
    if path is None or not path.is_file():  # not installed (its error says so), or another layout
        from sklearn.datasets import load_digits

        digits = load_digits()
        flat, labels = digits.data, digits.target
    else:
        with gzip.open(path, "rt", encoding="utf-8") as file:
            table = np.loadtxt(file, delimiter=",")  # 64 pixels and the label per row
        flat, labels = table[:, :-1], table[:, -1].astype(int)
    images = torch.tensor(flat.reshape(-1, 8, 8), dtype=torch.float32).unsqueeze(1) / 16.0
    (mean,), (std,) = Digits.mean, Digits.std
    images = (images - mean) / std  # as image_transform normalises an image file of a digit
    return images, torch.tensor(labels, dtype=torch.int64)
