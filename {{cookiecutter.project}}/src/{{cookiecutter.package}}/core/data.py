"""One data pipeline for both engines: datasets, transforms, the seeded split and the loaders.

engine=raw calls `prepare_data()`, `setup()` and the `*_dataloader()` methods itself; engine=lightning
wraps this same class in a LightningDataModule and lets the Trainer call them. What is particular to a dataset
(its files, splits, normalisation, shape) is its entry in the registry, datasets/: this module asks the entry.
"""

import multiprocessing.util
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, DistributedSampler, random_split

from . import datasets
from .errors import UserError
from .tensor_loader import TensorLoader, TensorSplit, decode

LOADERS = ("dataloader", "tensor")  # configs/data/*.yaml `loader`: torch's DataLoader, or tensor_loader.py
# DataLoader workers hand each batch over by file descriptor (torch's file_descriptor strategy, Linux), through an
# AF_UNIX socket that multiprocessing makes at <its temp dir under TMPDIR>/listener-XXXXXXXX. Linux allows such a
# path 107 characters; over that, the worker drops the batch and the loader waits for ever (no error).
SOCKET_PATH_MAX = 107
SOCKET_NAME = "listener-XXXXXXXX"


def check_worker_socket(cfg: DictConfig) -> None:
    """data.num_workers > 0: refuse a TMPDIR too long for the workers' socket (measured: a TMPDIR of 75
    characters works, 76 hangs), instead of a run that waits for ever."""
    if cfg.get("loader", "dataloader") != "dataloader" or not cfg.num_workers:
        return
    if torch.multiprocessing.get_sharing_strategy() != "file_descriptor":
        return  # macOS: file_system, no socket
    socket_dir = multiprocessing.util.get_temp_dir()  # the folder the workers' socket is made in, under TMPDIR
    socket_path, tmpdir = os.path.join(socket_dir, SOCKET_NAME), os.path.dirname(socket_dir)
    if len(socket_path) > SOCKET_PATH_MAX:
        longest = len(tmpdir) - (len(socket_path) - SOCKET_PATH_MAX)
        raise UserError(
            f"data.num_workers={cfg.num_workers} is not valid with TMPDIR={tmpdir} ({len(tmpdir)} characters): "
            "the DataLoader workers' socket would be "
            f"{len(socket_path)} characters, over the {SOCKET_PATH_MAX} a socket path may have; set TMPDIR to a "
            f"folder of at most {longest} characters, or data.num_workers=0"
        )


def limit_batches(num_batches: int, limit: int | float | None, key: str = "limit_*_batches") -> int:
    """Batches used per epoch under Lightning's `limit_*_batches`: an int counts batches, a float is a fraction
    (one that leaves no batch of the split is refused, as Lightning refuses it)."""
    if limit is None:
        return num_batches
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 0:
        raise UserError(f"limit_*_batches={limit!r} is not valid: use a batch count (int) or a fraction (float)")
    if isinstance(limit, int):
        return min(num_batches, limit)
    if limit > 1.0:
        raise UserError(f"limit_*_batches={limit} is a fraction above 1.0: use at most 1.0, or an int batch count")
    if int(num_batches * limit) == 0 and num_batches > 0 and limit > 0:
        raise UserError(
            f"{key}={limit} is not valid here: {limit} of the {num_batches} batches is none; use at least "
            f"{1 / num_batches:.3g}, or a whole number of batches"
        )
    return int(num_batches * limit)


class ResumableSampler(DistributedSampler):
    """DistributedSampler whose next pass can start part-way: after the samples of the batches a mid-epoch
    checkpoint had already trained (its order is still the function of seed and epoch)."""

    skip = 0  # samples of this rank's share to leave out, in the next pass only

    def start_after(self, samples: int) -> None:
        self.skip = samples

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())[self.skip :]
        self.skip = 0
        return iter(indices)


class EpochSampler(ResumableSampler):
    """The same order, each index given as `epoch * len(dataset) + index`: the epoch reaches the dataset (also in
    persistent worker processes, which never see set_epoch), so that Augmented draws from (seed, epoch, index)."""

    def __iter__(self) -> Iterator[int]:
        return (self.epoch * len(self.dataset) + index for index in super().__iter__())


class Augmented(Dataset):
    """The training split with random crops and flips (configs/data/*.yaml `augment`); validation and test never.

    Each draw comes from a generator seeded by (seed, epoch, index): no global RNG is used, so both engines, any
    num_workers and a resumed run augment every sample identically (EpochSampler passes the epoch).
    """

    def __init__(self, dataset: Dataset, seed: int, crop_padding: int, horizontal_flip: bool) -> None:
        self.dataset, self.seed, self.crop_padding, self.horizontal_flip = dataset, seed, crop_padding, horizontal_flip

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = divmod(key, len(self.dataset))
        image, label = self.dataset[index]
        generator = torch.Generator().manual_seed(((self.seed * 1_000_003 + epoch) * 1_000_003 + index) % 2**63)
        if self.crop_padding:  # pad with zeros (after normalisation: the mean colour), cut a random window back
            pad, (height, width) = self.crop_padding, image.shape[-2:]
            top, left = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
            image = torch.nn.functional.pad(image, (pad, pad, pad, pad))[..., top : top + height, left : left + width]
        if self.horizontal_flip and torch.rand((), generator=generator) < 0.5:
            image = image.flip(-1)
        return image, label


def memory_format(inputs: torch.Tensor, channels_last: bool) -> torch.memory_format:
    """The memory format of a batch of inputs on the device: channels_last (NHWC) for images when asked."""
    return torch.channels_last if channels_last and inputs.dim() == 4 else torch.preserve_format


class DataPipeline:
    """Datasets and loaders for `data=<name>`, split deterministically from the seed."""

    def __init__(
        self, cfg: DictConfig, seed: int, batch_limits: DictConfig | None = None, device: torch.device | str = "cpu"
    ) -> None:
        """`batch_limits`: the trainer config, whose limit_*_batches setup() checks against the split sizes;
        `device`: the training device, where data.loader=tensor keeps the splits."""
        self.dataset = datasets.check_config(cfg)  # the registry's entry of data=<name>
        check_worker_socket(cfg)  # train.py has checked it before any work; other callers have not
        super().__init__()  # lets Lightning's DataModule initialise itself when it is mixed in
        self.cfg, self.seed, self.batch_limits, self.device = cfg, seed, batch_limits, torch.device(device)
        self.tensor = cfg.get("loader", "dataloader") == "tensor"
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.resume_batches = 0  # set by resume(): batches of the current epoch a checkpoint had trained

    def prepare_data(self) -> None:
        """Download, once per machine: on local rank 0 only, in both engines (Lightning's default)."""
        self.dataset.prepare(self.cfg.root, self.cfg.download)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        split_generator = torch.Generator().manual_seed(self.seed)
        spec, root = self.dataset, self.cfg.root
        if not spec.has_test_split:  # one pool: the test split is cut from it too
            pool = spec.load(root, train=True, download=False)
            n_val = round(len(pool) * self.cfg.val_fraction)
            n_test = round(len(pool) * self.cfg.test_fraction)
            lengths = [len(pool) - n_val - n_test, n_val, n_test]
            self.train_set, self.val_set, self.test_set = random_split(pool, lengths, split_generator)
        else:
            full_train = spec.load(root, train=True, download=False)
            n_val = round(len(full_train) * self.cfg.val_fraction)
            self.train_set, self.val_set = random_split(full_train, [len(full_train) - n_val, n_val], split_generator)
            self.test_set = spec.load(root, train=False, download=False)
        augment = self.cfg.get("augment") or {}
        if self.tensor:  # decoded once, kept on the device; the loader augments whole batches there
            self._to_tensors()
        elif augment.get("crop_padding") or augment.get("horizontal_flip"):  # the training split only
            self.train_set = Augmented(
                self.train_set, self.seed, augment.get("crop_padding", 0), augment.get("horizontal_flip", False)
            )
        if self.batch_limits is not None:  # before any training, in both engines: a limit that leaves no batch
            for split in ("train", "val", "test"):
                key = f"limit_{split}_batches"
                limit_batches(len(getattr(self, f"{split}_dataloader")()), self.batch_limits.get(key), f"trainer.{key}")

    def train_dataloader(self) -> DataLoader:
        loader = self._loader(self.train_set, shuffle=True)
        loader.sampler.start_after(self.resume_batches * self.cfg.batch_size)  # the first pass only
        self.resume_batches = 0
        return loader

    channels_last = False  # the engines set it from run/device.py (channels_last=true, on CUDA)

    def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int = 0) -> tuple:
        """A batch on the training device as the model takes it: under channels_last, images in NHWC (Lightning calls
        this hook of its DataModule; engine=raw's batch_to_device applies the same memory_format)."""
        return batch[0].to(memory_format=memory_format(batch[0], self.channels_last)), *batch[1:]

    def resume(self, batches_done: int) -> None:
        """A checkpoint written `batches_done` batches into an epoch: the next train loader's first pass starts
        after them, so that the resumed run trains on the batches the uninterrupted run would."""
        self.resume_batches = batches_done

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a data loader")
        # DistributedSampler shuffles with a generator seeded by seed + epoch (set_epoch, which Lightning
        # calls by itself and engine=raw at the top of each epoch): the order depends on nothing else, so
        # both engines see the same batches and a resumed run replays the exact order. Under DDP each rank
        # reads every world_size-th sample of that order (padded to equal shares); in one process, all.
        ranks, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)
        sampler_class = EpochSampler if isinstance(dataset, Augmented) else ResumableSampler
        sampler = (
            sampler_class(dataset, num_replicas=ranks, rank=rank, shuffle=shuffle, seed=self.seed)
            if shuffle or ranks > 1
            else None
        )
        if self.tensor:  # the same sampler, the batches cut on the device (augmented: the training split)
            augment = (self.cfg.get("augment") or {}) if dataset is self.train_set else {}
            return TensorLoader(
                dataset,
                self.cfg.batch_size,
                sampler,
                self.seed,
                augment.get("crop_padding", 0),
                augment.get("horizontal_flip", False),
            )
        workers = self.cfg.num_workers
        return DataLoader(
            dataset,
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.cfg.pin_memory and self.device.type == "cuda",  # pinned pages help host-to-GPU copies only
            persistent_workers=workers > 0,
            # A private generator: creating a loader iterator must not draw from the global RNG, or the
            # engines' dropout masks would depend on how often each one builds iterators.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _to_tensors(self) -> None:
        """data.loader=tensor: each split as one tensor on the device, decoded from the arrays the datasets read
        from their files (tensor_loader.decode), not image by image through the transform."""
        if self.batch_limits is not None and self.batch_limits.get("overfit_batches"):
            raise UserError(
                f"trainer.overfit_batches={self.batch_limits.overfit_batches} with data.loader=tensor is "
                "not implemented (Lightning can only swap the sampler of a DataLoader): use "
                "data.loader=dataloader"
            )
        spec = self.dataset
        for name in ("train_set", "val_set", "test_set"):  # the seeded split's indices (Subset) kept
            setattr(
                self, name, TensorSplit(*decode(getattr(self, name), spec.arrays), spec.mean, spec.std, self.device)
            )
