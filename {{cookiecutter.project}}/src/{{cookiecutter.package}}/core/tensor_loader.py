"""data.loader=tensor: each split decoded once into one tensor on the training device, batches cut from it there.

The DataLoader path turns every image into a PIL image and back into a tensor, one sample at a time, in worker
processes: on a GPU that starves the device long before the model is the limit. Here the uint8 pixels of a split
sit on the device (CIFAR-10's training split: 150 MB) and each batch is indexed, converted, normalised and
augmented there in a few tensor operations, as airbench does.

The order of the samples is the DataLoader path's: the same sampler (data.py's ResumableSampler, a
DistributedSampler: seeded by (seed, epoch), each DDP rank its share, a mid-epoch resume starting after the
batches done), cut into batches of the same size. Without augmentation the batches are bitwise those of the
DataLoader path (tests/test_tensor_loader.py). The augmentation draws differ: the DataLoader path draws per sample
from (seed, epoch, index) (data.Augmented); here one generator per batch, seeded by (seed, epoch, rank, batch
index), draws the batch's crops and flips, which is as reproducible (both engines, a resumed run) but not the
same draws.
"""

import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler, Subset

Arrays = Callable[[Dataset], tuple[torch.Tensor, torch.Tensor]]


def decode(dataset: Dataset, arrays: Arrays) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of a split (a Subset of the seeded split, or a dataset as its registry entry loaded it) as one
    (N, C, H, W) tensor and int64 labels. `arrays`: the entry's (datasets.DatasetSpec.arrays), which reads the
    loaded dataset's own arrays (uint8 pixels as in their files, or inputs normalised already), not through its
    per-sample transform."""
    if isinstance(dataset, Subset):
        images, labels = decode(dataset.dataset, arrays)
        indices = torch.as_tensor(dataset.indices, dtype=torch.int64)
        return images[indices], labels[indices]
    return arrays(dataset)


class TensorSplit(Dataset):
    """One split on the device: its pixels and labels, and the conversion the torchvision transform does
    (data.image_transform: uint8 -> float32 * (1 / 255) -> (x - mean) / std, in the same operations, so the same
    bits). Indexed like the DataLoader path's dataset (an image and its label), for summaries.py."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device,
    ) -> None:
        self.images, self.labels = images.to(device), labels.to(device)
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs(self.images[index]), self.labels[index]

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """The model's inputs; float images (datasets.DatasetSpec.arrays) are stored normalised already."""
        if images.is_floating_point():
            return images
        return images.to(torch.float32).mul_(1.0 / 255).sub_(self.mean).div_(self.std)


def augment_generator(seed: int, epoch: int, rank: int, batch: int) -> torch.Generator:
    """The CPU generator of one batch's crops and flips: a function of (seed, epoch, rank, batch index) only, so
    that both engines and a resumed run draw the same, on any device."""
    key = ((seed * 1_000_003 + epoch) * 1_000_003 + rank) * 1_000_003 + batch
    return torch.Generator().manual_seed(key % 2**63)


def augment(images: torch.Tensor, generator: torch.Generator, crop_padding: int, horizontal_flip: bool) -> torch.Tensor:
    """data.Augmented for a whole batch of normalised images: each image padded with zeros (after normalisation:
    the mean colour) by `crop_padding` pixels, a random window of its size cut back, and mirrored half of the
    time. The draws come from `generator` (CPU) and move to the images' device."""
    count, channels, height, width = images.shape
    if crop_padding:
        pad = crop_padding
        top, left = torch.randint(0, 2 * pad + 1, (2, count, 1), generator=generator).to(images.device)
        padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
        rows = (top + torch.arange(height, device=images.device))[:, None, :, None]  # count, 1, H, 1
        cols = (left + torch.arange(width, device=images.device))[:, None, None, :]  # count, 1, 1, W
        batch = torch.arange(count, device=images.device)[:, None, None, None]
        images = padded[batch, torch.arange(channels, device=images.device)[None, :, None, None], rows, cols]
    if horizontal_flip:
        flip = (torch.rand(count, generator=generator) < 0.5).to(images.device)
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images


class TensorLoader:
    """What the engines use of a DataLoader (iteration, len, .dataset, .sampler, .batch_size), over a TensorSplit:
    batches of (float32 normalised inputs, int64 targets), already on the split's device. `sampler`: data.py's
    (None: in order, as the DataLoader's SequentialSampler). Lightning takes it as it takes any sized iterable:
    use_distributed_sampler=False leaves its sampler alone, the fit loop calls the sampler's set_epoch, and
    transfer_batch_to_device leaves tensors already on the device where they are."""

    batch_sampler = None  # what Lightning asks a loader before it warns about shuffled validation data

    def __init__(
        self,
        dataset: TensorSplit,
        batch_size: int,
        sampler: Sampler | None,
        seed: int,
        crop_padding: int = 0,
        horizontal_flip: bool = False,
    ) -> None:
        self.dataset, self.batch_size, self.sampler, self.seed = dataset, batch_size, sampler, seed
        self.crop_padding, self.horizontal_flip = crop_padding, horizontal_flip

    def __len__(self) -> int:
        return math.ceil(len(self.sampler if self.sampler is not None else self.dataset) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sampler, device = self.sampler, self.dataset.labels.device
        # A pass that starts after a mid-epoch checkpoint's batches (ResumableSampler.start_after) numbers its
        # batches from there: batch b is augmented as in the uninterrupted run.
        first = getattr(sampler, "skip", 0) // self.batch_size
        epoch, rank = getattr(sampler, "epoch", 0), getattr(sampler, "rank", 0)
        order = torch.as_tensor(
            list(sampler) if sampler is not None else range(len(self.dataset)), dtype=torch.int64
        ).to(device)
        for batch, start in enumerate(range(0, len(order), self.batch_size), first):
            indices = order[start : start + self.batch_size]
            inputs = self.dataset.inputs(self.dataset.images[indices])
            if self.crop_padding or self.horizontal_flip:
                generator = augment_generator(self.seed, epoch, rank, batch)
                inputs = augment(inputs, generator, self.crop_padding, self.horizontal_flip)
            yield inputs, self.dataset.labels[indices]
