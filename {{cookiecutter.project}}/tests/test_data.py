"""The data pipeline: a seeded split, a seeded epoch order, and torchvision datasets from files on disk."""

import struct

import pytest
import torch
from conftest import compose_train

from {{ cookiecutter.package }}.data import DataPipeline, EpochSeededSampler
from {{ cookiecutter.package }}.errors import UserError


def split_indices(seed: int) -> list[list[int]]:
    data = DataPipeline(compose_train(["data=digits"]).data, seed=seed)
    data.setup()
    return [list(subset.indices) for subset in (data.train_set, data.val_set, data.test_set)]


def test_digits_split_is_deterministic_from_the_seed():
    first = split_indices(0)
    assert split_indices(0) == first
    assert split_indices(1) != first
    flat = [i for part in first for i in part]
    assert sorted(flat) == list(range(1797))  # disjoint and complete
    assert [len(part) for part in first] == [1257, 270, 270]


def test_epoch_order_depends_on_seed_and_epoch_only():
    sampler = EpochSeededSampler(100, seed=3)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    again = EpochSeededSampler(100, seed=3)
    again.set_epoch(1)
    assert epoch0 != epoch1 and list(again) == epoch1
    assert sorted(epoch1) == list(range(100))


def write_idx(path, array: torch.Tensor) -> None:
    """The IDX format of the MNIST files: magic (dtype ubyte, ndim), big-endian sizes, raw bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    path.write_bytes(header + array.to(torch.uint8).numpy().tobytes())


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_style_datasets_load_from_their_files(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 40), ("t10k", 12)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", torch.randint(0, 256, (n, 28, 28), generator=generator))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", torch.arange(n) % 10)
    cfg = compose_train([f"data={name}", f"data.root={tmp_path}", "data.download=false", "data.num_workers=0"]).data
    data = DataPipeline(cfg, seed=0)
    data.prepare_data()
    data.setup()
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (36, 4, 12)
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape[1:] == (1, 28, 28) and images.dtype == torch.float32
    assert labels.dtype == torch.int64


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw"),
                                              ("cifar10", "cifar-10-batches-py")])
def test_missing_dataset_offline_says_where_and_suggests_digits(tmp_path, name, folder):
    cfg = compose_train([f"data={name}", f"data.root={tmp_path}", "data.download=false"]).data
    with pytest.raises(UserError) as error:
        DataPipeline(cfg, seed=0).prepare_data()
    assert f"{tmp_path}/{folder}" in str(error.value) and "data=digits" in str(error.value)


def test_unknown_dataset_is_named():
    with pytest.raises(UserError, match="data.name='imagenet'"):
        DataPipeline(compose_train(["data.name=imagenet"]).data, seed=0)
