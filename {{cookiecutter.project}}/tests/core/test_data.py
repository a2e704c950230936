"""The data pipeline: a seeded split, a seeded epoch order, and torchvision datasets from files on disk."""

import gzip
import os
import pickle
import random
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import compose_train, run_train
from datasets_on_disk import make_cifar, make_mnist, write_idx
from torchvision.datasets.utils import calculate_md5

from {{ cookiecutter.package }}.core.data import DataPipeline
from {{ cookiecutter.package }}.core.datasets.digits import Digits, load_digits_tensors
from {{ cookiecutter.package }}.core.errors import UserError


def split_indices(seed: int) -> list[list[int]]:
    data = DataPipeline(compose_train(["data=digits"]).data, seed=seed)
    data.setup()
    return [list(subset.indices) for subset in (data.train_set, data.val_set, data.test_set)]


def test_digits_are_scikit_learns_read_without_importing_it():
    code = (
        "import sys\n"
        "from {{ cookiecutter.package }}.core.datasets.digits import load_digits_tensors\n"
        "images, labels = load_digits_tensors()\n"
        "print('sklearn' in sys.modules, tuple(images.shape), labels.dtype)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "(1797,", "1,", "8,", "8)", "torch.int64"]
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = load_digits_tensors()
    (mean,), (std,) = Digits.mean, Digits.std
    expected = (torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0 - mean) / std
    assert torch.equal(images, expected) and torch.equal(labels, torch.tensor(digits.target))


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


def loaded(name: str, root: Path, download: bool = False) -> DataPipeline:
    """prepare_data() and setup() of data=<name> from root, as both engines call them."""
    cfg = compose_train(
        [f"data={name}", f"data.root={root}", f"data.download={str(download).lower()}", "data.num_workers=0"]
    ).data
    data = DataPipeline(cfg, seed=0)
    data.prepare_data()
    data.setup()
    return data


def error(name: str, root: Path, download: bool = False) -> str:
    """The one-line UserError that loading data=<name> from root ends with."""
    with pytest.raises(UserError) as raised:
        loaded(name, root, download)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"data={name}: ")
    return message


@pytest.fixture
def offline(monkeypatch):
    """No network: every download torchvision tries fails as it does offline (URLError)."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


NOISE = "cd 07 2c d8 be 6f 9f 62"  # the first bytes of random.Random(0).randbytes(...)
RETRY = "delete it and put torchvision's file there, or set data.download=true on a machine with internet"


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_style_datasets_load_from_their_files(tmp_path, name, folder):
    make_mnist(tmp_path, folder)
    data = loaded(name, tmp_path)
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (36, 4, 12)
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape[1:] == (1, 28, 28) and images.dtype == torch.float32
    assert labels.dtype == torch.int64


def test_cifar10_loads_from_its_files(tmp_path, monkeypatch):
    make_cifar(tmp_path, monkeypatch)
    data = loaded("cifar10", tmp_path)
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (45, 5, 10)
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape[1:] == (3, 32, 32) and labels.dtype == torch.int64


@pytest.mark.parametrize(
    ("name", "folder"),
    [("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw"), ("cifar10", "cifar-10-batches-py")],
)
def test_missing_dataset_offline_says_where_and_suggests_digits(tmp_path, name, folder):
    cfg = compose_train([f"data={name}", f"data.root={tmp_path}", "data.download=false"]).data
    with pytest.raises(UserError) as error:
        DataPipeline(cfg, seed=0).prepare_data()
    assert str(error.value).startswith(f"data={name}: the ")
    assert f"files are not in {tmp_path}/{folder} and data.download=false" in str(error.value)
    assert "data.download=true on a machine with internet" in str(error.value) and "data=digits" in str(error.value)


def cut(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


# (damage done to a valid set, the file it names, what the message says about it). torchvision itself raises, for
# the first three: RuntimeError "Dataset not found", ValueError "invalid literal for int() with base 16", and
# RuntimeError "shape '[40, 28, 28]' is invalid"; AssertionError for the next three; nothing for the last two.
MNIST_DAMAGE = {
    "missing": (
        lambda raw: (raw / "t10k-labels-idx1-ubyte").unlink(),
        "t10k-labels-idx1-ubyte",
        "is missing and data.download=false: put torchvision's files there, set data.download=true on a "
        "machine with internet, or train on the bundled data with data=digits",
    ),
    "empty": (
        lambda raw: cut(raw / "train-images-idx3-ubyte", 0),
        "train-images-idx3-ubyte",
        f"is empty (0 bytes): {RETRY}",
    ),
    "truncated": (
        lambda raw: cut(raw / "t10k-images-idx3-ubyte", 1000),
        "t10k-images-idx3-ubyte",
        f"is truncated (1000 of the 9424 bytes its header announces): {RETRY}",
    ),
    "random bytes": (
        lambda raw: (raw / "train-labels-idx1-ubyte").write_bytes(random.Random(0).randbytes(48)),
        "train-labels-idx1-ubyte",
        "is not an IDX label file (magic number 0xCD072CD8, expected "
        f"0x00000801; it starts with bytes {NOISE}): {RETRY}",
    ),
    "wrong magic": (
        lambda raw: (raw / "train-images-idx3-ubyte").write_bytes((raw / "train-labels-idx1-ubyte").read_bytes()),
        "train-images-idx3-ubyte",
        "is not an IDX image file (magic number 0x00000801, expected 0x00000803; it starts with bytes 00 00 08 01 "
        f"00 00 00 28): {RETRY}",
    ),
    "still gzip": (
        lambda raw: (raw / "train-images-idx3-ubyte").write_bytes(
            gzip.compress((raw / "train-images-idx3-ubyte").read_bytes())
        ),
        "train-images-idx3-ubyte",
        f"is still gzip-compressed (the contents of train-images-idx3-ubyte.gz, not the file extracted from it): "
        f"{RETRY}",
    ),
    "labels out of range": (
        lambda raw: write_idx(raw / "train-labels-idx1-ubyte", torch.arange(40) * 7),
        "train-labels-idx1-ubyte",
        f"is damaged (label 14 at position 2, expected 0-9): {RETRY}",
    ),
    "labels of another set": (
        lambda raw: write_idx(raw / "t10k-labels-idx1-ubyte", torch.arange(10) % 10),
        "t10k-labels-idx1-ubyte",
        "is not the label file of {raw}/t10k-images-idx3-ubyte (10 "
        "labels for 12 images): delete both and put torchvision's files there, or set "
        "data.download=true on a machine with internet",
    ),
}


@pytest.mark.parametrize("damage", MNIST_DAMAGE)
def test_damaged_mnist_file_is_named_with_the_fix(tmp_path, damage):
    spoil, file, says = MNIST_DAMAGE[damage]
    raw = make_mnist(tmp_path)
    spoil(raw)
    assert error("mnist", tmp_path) == f"data=mnist: {raw / file} {says.replace('{raw}', str(raw))}"


def test_damaged_fashion_mnist_file_is_named(tmp_path):
    cut(make_mnist(tmp_path, "FashionMNIST") / "train-images-idx3-ubyte", 0)
    assert (
        error("fashion_mnist", tmp_path)
        == f"data=fashion_mnist: {tmp_path}/FashionMNIST/raw/train-images-idx3-ubyte is empty (0 bytes): {RETRY}"
    )


@pytest.mark.parametrize("download", [False, True])
def test_mnist_gz_that_is_not_gzip_is_named(tmp_path, download, offline):
    """torchvision reads a .gz only to extract a missing file, with data.download=true (and downloads it again
    when its md5 differs: offline, that fails)."""
    raw = make_mnist(tmp_path)
    (raw / "train-images-idx3-ubyte").unlink()
    (raw / "train-images-idx3-ubyte.gz").write_text("<html>Service unavailable</html>")
    assert error("mnist", tmp_path, download) == (
        f"data=mnist: {raw}/train-images-idx3-ubyte.gz is not a gzip file (it starts with '<html>Servic'): {RETRY}"
    )


def patch_mnist_md5(raw: Path, monkeypatch) -> None:
    """Writes the .gz of each raw file and gives torchvision their md5, as if they were the ones it downloads."""
    resources = []
    for file, _ in torchvision.datasets.MNIST.resources:
        (raw / file).write_bytes(gzip.compress((raw / file.removesuffix(".gz")).read_bytes(), mtime=0))
        resources.append((file, calculate_md5(raw / file)))
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources", resources)


def test_damaged_mnist_file_with_its_gz_there_is_extracted_again_offline(tmp_path, monkeypatch, offline):
    raw = make_mnist(tmp_path)
    patch_mnist_md5(raw, monkeypatch)
    cut(raw / "train-images-idx3-ubyte", 0)
    assert error("mnist", tmp_path, download=True) == (
        f"data=mnist: {raw}/train-images-idx3-ubyte is empty (0 bytes): delete it and set data.download=true, "
        f"which extracts it again from {raw}/train-images-idx3-ubyte.gz without the network"
    )
    (raw / "train-images-idx3-ubyte").unlink()
    assert error("mnist", tmp_path) == (
        f"data=mnist: {raw}/train-images-idx3-ubyte is missing and data.download=false: set data.download=true, "
        f"which extracts it from {raw}/train-images-idx3-ubyte.gz without the network"
    )
    assert len(loaded("mnist", tmp_path, download=True).train_set) == 36  # as the message says, offline


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py")])
def test_failed_download_is_not_called_missing_or_damaged(tmp_path, name, folder, offline):
    reason = (
        "Error downloading train-images-idx3-ubyte.gz: <urlopen error offline (test)>"
        if name == "mnist"
        else "<urlopen error offline (test)>"
    )
    class_name = "MNIST" if name == "mnist" else "CIFAR10"
    assert error(name, tmp_path, download=True) == (
        f"data={name}: downloading the {class_name} files into {tmp_path}/{folder} failed ({reason}): run on a "
        f"machine with internet, put torchvision's files there yourself, or train on the bundled data with data=digits"
    )


def test_mnist_processed_file_of_an_old_torchvision_is_named(tmp_path):
    raw = make_mnist(tmp_path)
    (raw.parent / "processed").mkdir()
    for file in ("training.pt", "test.pt"):
        (raw.parent / "processed" / file).write_bytes(b"not a torch file")
    assert error("mnist", tmp_path).startswith(
        f"data=mnist: {raw.parent}/processed/training.pt is not a dataset torch.load can read ("
    )
    assert error("mnist", tmp_path).endswith(
        f": delete {raw.parent}/processed, and torchvision reads the files of {raw} instead"
    )


class RunsCode:
    """Unpickling this creates `marker`: a pickle can run any code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def truncate_pickle(path: Path) -> None:
    content = path.read_bytes()
    size = next(n for n in range(len(content) // 2, 0, -1) if content[n - 1 : n] != b".")
    path.write_bytes(content[:size])


CIFAR_DAMAGE = {  # torchvision raises RuntimeError "Dataset not found or corrupted" for every one of them
    "missing": (
        lambda folder: (folder / "data_batch_3").unlink(),
        "data_batch_3",
        "is missing and data.download=false: put torchvision's files there, set data.download=true on a "
        "machine with internet, or train on the bundled data with data=digits",
    ),
    "empty": (lambda folder: cut(folder / "data_batch_2", 0), "data_batch_2", f"is empty (0 bytes): {RETRY}"),
    "truncated": (lambda folder: truncate_pickle(folder / "test_batch"), "test_batch", "is truncated ("),
    "random bytes": (
        lambda folder: (folder / "data_batch_5").write_bytes(random.Random(0).randbytes(4096)),
        "data_batch_5",
        f"is not a CIFAR-10 batch (it starts with bytes {NOISE}): {RETRY}",
    ),
    "text": (
        lambda folder: (folder / "data_batch_1").write_text("version https://git-lfs.github.com/spec/v1\n"),
        "data_batch_1",
        f"is text, not a CIFAR-10 batch (it starts with 'version http'): {RETRY}",
    ),
    "another pickle": (
        lambda folder: (folder / "data_batch_4").write_bytes(pickle.dumps({"data": []}, protocol=2)),
        "data_batch_4",
        "is not torchvision's file (md5 ",
    ),
    "metadata": (
        lambda folder: (folder / "batches.meta").write_text(""),
        "batches.meta",
        f"is empty (0 bytes): {RETRY}",
    ),
}


@pytest.mark.parametrize("damage", CIFAR_DAMAGE)
def test_damaged_cifar10_file_is_named_with_the_fix(tmp_path, monkeypatch, damage):
    spoil, file, says = CIFAR_DAMAGE[damage]
    folder = make_cifar(tmp_path, monkeypatch)
    spoil(folder)
    assert error("cifar10", tmp_path).startswith(f"data=cifar10: {folder / file} {says}")


def test_cifar10_batch_that_would_run_code_is_refused_before_unpickling(tmp_path, monkeypatch):
    """torchvision unpickles the batches, which runs whatever code a crafted one holds; it compares each batch's
    md5 with its own list first, and the project examines a refused batch without unpickling it."""
    marker = tmp_path / "code-ran"
    with pytest.raises(FileNotFoundError):  # unpickled, it runs os.mkdir: here in a folder that does not exist
        pickle.loads(pickle.dumps(RunsCode(tmp_path / "no" / "code-ran"), protocol=2))
    folder = make_cifar(tmp_path, monkeypatch, trusted=("data_batch_1",))  # its md5 stays torchvision's
    (folder / "data_batch_1").write_bytes(pickle.dumps(RunsCode(marker), protocol=2))
    message = error("cifar10", tmp_path)
    assert message.startswith(f"data=cifar10: {folder}/data_batch_1 is not torchvision's file (md5 ")
    assert "expected c99cafc152244af753f735de768cd75f; it was not unpickled, since a pickle can run code" in message
    assert not marker.exists()


@pytest.mark.parametrize("download", [False, True])
def test_cifar10_archive_that_is_not_gzip_is_named(tmp_path, monkeypatch, download, offline):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    assert (
        error("cifar10", tmp_path, download)
        == f"data=cifar10: {tmp_path}/cifar-10-python.tar.gz is empty (0 bytes): {RETRY}"
    )
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(random.Random(0).randbytes(64))
    assert error("cifar10", tmp_path, download) == (
        f"data=cifar10: {tmp_path}/cifar-10-python.tar.gz is not a gzip file (it starts with bytes {NOISE}): {RETRY}"
    )


@pytest.mark.slow
def test_train_py_prints_the_damaged_file_in_one_line(tmp_path):
    raw = make_mnist(tmp_path / "data")
    cut(raw / "t10k-images-idx3-ubyte", 100)
    result = run_train(tmp_path / "logs", "data=mnist", f"data.root={tmp_path / 'data'}", "data.download=false")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: data=mnist: {raw}/t10k-images-idx3-ubyte is truncated (100 of the 9424 bytes its header "
        f"announces): {RETRY}"
    )


def test_unknown_dataset_is_named():
    with pytest.raises(UserError, match="data.name='imagenet'"):
        DataPipeline(compose_train(["data.name=imagenet"]).data, seed=0)


def test_a_config_that_does_not_fit_its_registry_entry_is_refused():
    with pytest.raises(UserError, match=r"^data.image_size=28 is not valid for data=digits: its images are 1x8x8 "):
        DataPipeline(compose_train(["data=digits", "data.image_size=28"]).data, seed=0)
    with pytest.raises(UserError, match=r"^data.test_fraction is not set for data=digits: it has no test split"):
        DataPipeline(compose_train(["data=digits", "~data.test_fraction"]).data, seed=0)
