"""The data pipeline: a seeded split, a seeded epoch order, and torchvision datasets from files on disk."""

import struct

import pytest
import torch
from conftest import compose_train

from {{ cookiecutter.package }}.data import DataPipeline
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


def epoch_order(seed: int, epoch: int) -> list[int]:
    data = DataPipeline(compose_train(["data=digits"]).data, seed=seed)
    data.setup()
    loader = data.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return list(loader.sampler)


def test_epoch_order_depends_on_seed_and_epoch_only():
    epoch0, epoch1 = epoch_order(3, 0), epoch_order(3, 1)
    assert epoch0 != epoch1 and epoch_order(3, 1) == epoch1 and epoch_order(4, 1) != epoch1
    assert sorted(epoch1) == list(range(1257))  # every training sample once


def test_ranks_read_disjoint_shares_of_the_same_order():
    """Under DDP each rank takes every world_size-th sample of the epoch's order (DistributedSampler)."""
    from torch.utils.data import DistributedSampler

    data = DataPipeline(compose_train(["data=digits"]).data, seed=3)
    data.setup()
    shares = []
    for rank in (0, 1):
        sampler = DistributedSampler(data.train_set, num_replicas=2, rank=rank, shuffle=True, seed=3)
        sampler.set_epoch(1)
        shares.append(list(sampler))
    whole = epoch_order(3, 1)
    assert shares[0] == whole[0::2] and shares[1] == (whole + whole[:1])[1::2]  # padded to equal shares
    assert len(shares[0]) == len(shares[1]) == 629


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
