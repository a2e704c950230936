"""Tiny datasets in their real on-disk formats (torchvision's MNIST and CIFAR-10 layouts), for the tests that load
them: nothing is downloaded."""

import pickle
import struct
from pathlib import Path

import torch
import torchvision
from torchvision.datasets.utils import calculate_md5

from {{ cookiecutter.package }}.core import datasets
from {{ cookiecutter.package }}.core.datasets.cifar10 import Cifar10
from {{ cookiecutter.package }}.core.datasets.mnist import MnistLayout


def write_idx(path, array: torch.Tensor) -> None:
    """The IDX format of the MNIST files: magic (dtype ubyte, ndim), big-endian sizes, raw bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    path.write_bytes(header + array.to(torch.uint8).numpy().tobytes())


def make_mnist(root: Path, folder: str = "MNIST") -> Path:
    """A valid tiny MNIST-style set in torchvision's layout (40 training and 12 test images); its raw folder."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 40), ("t10k", 12)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", torch.randint(0, 256, (n, 28, 28), generator=generator))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", torch.arange(n) % 10)
    return raw


def make_cifar(root: Path, monkeypatch, trusted: tuple[str, ...] = ()) -> Path:
    """A valid tiny CIFAR-10 set (5 x 10 training images, 10 test ones) in cifar-10-batches-py, as protocol-2
    pickles like torchvision's; its folder. torchvision trusts only the md5 of its own files, so its lists are
    patched with these files' md5, except for the files named in `trusted`, which keep torchvision's md5."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    cifar, generator = torchvision.datasets.CIFAR10, torch.Generator().manual_seed(0)
    for name, _ in cifar.train_list + cifar.test_list:
        batch = {
            "data": torch.randint(0, 256, (10, 3072), generator=generator, dtype=torch.uint8).numpy(),
            "labels": list(range(10)),
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class {i}" for i in range(10)]}, protocol=2))

    def own(entries):
        return [[name, md5 if name in trusted else calculate_md5(folder / name)] for name, md5 in entries]

    monkeypatch.setattr(cifar, "train_list", own(cifar.train_list))
    monkeypatch.setattr(cifar, "test_list", own(cifar.test_list))
    monkeypatch.setattr(cifar, "meta", {**cifar.meta, "md5": calculate_md5(folder / "batches.meta")})
    return folder


def make_files(name: str, root: Path, monkeypatch) -> None:
    """Tiny files in the real format of data=<name> under root, where its registry entry reads them (none for the
    entries that read no files)."""
    spec = datasets.get(name)
    if isinstance(spec, MnistLayout):
        make_mnist(root, spec.torchvision_class)
    elif isinstance(spec, Cifar10):
        make_cifar(root, monkeypatch)
    elif spec.missing_files(str(root)):
        raise NotImplementedError(f"no tiny files for data={name}: add them here")
