"""Chapter 4: feeding data with torch.utils.data and torchvision transforms.

Map-style and iterable-style datasets, the DataLoader arguments that matter (batch_size,
shuffle, num_workers, pin_memory, collate_fn) and composed torchvision v2 transforms.
All data is generated on the spot: nothing is downloaded.
"""

# %% [markdown]
# # Data Loading and Processing: torch.utils.data
#
# A `Dataset` says how to get one sample; a `DataLoader` turns a dataset into batches,
# optionally shuffled and loaded by background worker processes.

# %% Datasets (torch.utils.data.Dataset)
import multiprocessing
import sys

import torch
import torchvision
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset, get_worker_info
from torchvision.transforms import v2

torch.manual_seed(0)


class NoisySquares(Dataset):
    """Map-style: random access by index, so it needs __len__ and __getitem__."""

    def __init__(self, n: int):
        self.x = torch.linspace(-1, 1, n).unsqueeze(1)
        self.y = self.x**2 + 0.01 * torch.randn(n, 1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return self.x[index], self.y[index]


squares = NoisySquares(100)
x0, y0 = squares[0]
print("len:", len(squares), "| first sample:", x0.tolist(), y0.tolist())
assert len(squares) == 100 and x0.item() == -1.0

# For tensors you already have, TensorDataset saves writing the class.
pairs = TensorDataset(squares.x, squares.y)
assert torch.equal(pairs[5][0], squares[5][0])


# %% Map-style vs Iterable-style Datasets
class CountingStream(IterableDataset):
    """Iterable-style: yields samples in order, e.g. from a file, a socket or a generator.

    There is no index, so every worker would replay the whole stream; the usual fix is to
    let each worker take every k-th item, using get_worker_info().
    """

    def __init__(self, end: int):
        self.end = end

    def __iter__(self):
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        yield from range(worker_id, self.end, num_workers)


class UnshardedStream(IterableDataset):
    """The same stream without the get_worker_info() logic, for comparison."""

    def __iter__(self):
        yield from range(8)


stream = CountingStream(10)
assert list(stream) == list(range(10))
print("an iterable dataset is consumed by iteration:", list(stream))
try:
    stream[3]
    raise AssertionError("an iterable dataset has no random access")
except (NotImplementedError, TypeError):
    print("...and has no random access: stream[3] is not supported")

# %% Built-in Datasets
# torchvision.datasets has MNIST, CIFAR10, ImageNet, ImageFolder, ... Real ones download
# files (MNIST(root, download=True)); the tour stays offline, so it uses FakeData, which
# builds random images on request with the same interface: (image, label) pairs.
to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])  # PIL image -> float tensor
fake = torchvision.datasets.FakeData(size=20, image_size=(3, 32, 32), num_classes=4, transform=to_tensor)
image, label = fake[0]
print("FakeData sample:", type(image).__name__, tuple(image.shape), image.dtype, "label", label)
assert image.shape == (3, 32, 32) and 0 <= label < 4 and 0.0 <= image.min() <= image.max() <= 1.0

# %% [markdown]
# ## DataLoaders (torch.utils.data.DataLoader)
#
# The loader asks a *sampler* for indices, fetches the samples, and merges them into a
# batch with `collate_fn`. With `num_workers > 0` the fetching happens in worker
# processes while the main process trains.

# %% Key Arguments
# batch_size: the last batch is smaller unless drop_last=True.
loader = DataLoader(squares, batch_size=32)
sizes = [len(xb) for xb, _ in loader]
print("batch sizes:", sizes)
assert sizes == [32, 32, 32, 4] and len(loader) == 4
assert [len(xb) for xb, _ in DataLoader(squares, batch_size=32, drop_last=True)] == [32, 32, 32]

# shuffle: a new permutation every epoch; each sample still appears exactly once.
gen = torch.Generator().manual_seed(0)  # seed it for a reproducible order
shuffled = DataLoader(TensorDataset(torch.arange(10)), batch_size=5, shuffle=True, generator=gen)
epoch1 = torch.cat([b for (b,) in shuffled]).tolist()
epoch2 = torch.cat([b for (b,) in shuffled]).tolist()
print("epoch 1 order:", epoch1, "| epoch 2 order:", epoch2)
assert sorted(epoch1) == sorted(epoch2) == list(range(10)) and epoch1 != epoch2

# collate_fn: how a list of samples becomes a batch. The default stacks tensors, which
# fails for variable-length sequences; padding them is the textbook custom collate.
sentences = [torch.tensor([1, 2, 3]), torch.tensor([4]), torch.tensor([5, 6])]


def pad_collate(batch):
    lengths = torch.tensor([len(s) for s in batch])
    return pad_sequence(batch, batch_first=True, padding_value=0), lengths


padded, lengths = next(iter(DataLoader(sentences, batch_size=3, collate_fn=pad_collate)))
print("padded batch:\n", padded, "\nlengths:", lengths.tolist())
assert padded.shape == (3, 3) and lengths.tolist() == [3, 1, 2] and padded[1].tolist() == [4, 0, 0]
try:
    next(iter(DataLoader(sentences, batch_size=3)))
    raise AssertionError("the default collate cannot stack different lengths")
except RuntimeError as err:
    print("default collate:", str(err).splitlines()[0])

# pin_memory: page-locked host memory makes copies to a CUDA GPU faster (and lets them run
# asynchronously with .to(device, non_blocking=True)). It only helps with CUDA, so ask for
# it only then; on a CPU-only machine it would do nothing useful.
pin = torch.cuda.is_available()
pinned_batch, _ = next(iter(DataLoader(squares, batch_size=8, pin_memory=pin)))
print("pin_memory:", pin, "| batch is pinned:", pinned_batch.is_pinned())
assert pinned_batch.is_pinned() == pin

# num_workers: worker processes load batches in parallel. Workers are separate processes,
# so on Windows and macOS (spawn start method) the dataset must live in an importable
# module and the script needs an `if __name__ == "__main__":` guard. This cell uses the
# fork start method where it is the safe choice (Linux) and explains itself elsewhere.
if sys.platform.startswith("linux"):
    context = multiprocessing.get_context("fork")
    parallel = DataLoader(CountingStream(20), batch_size=4, num_workers=2, multiprocessing_context=context)
    seen = torch.cat(list(parallel)).tolist()
    print("2 workers, sharded stream:", seen)
    assert sorted(seen) == list(range(20))  # each item exactly once, thanks to the sharding
    unsharded = DataLoader(UnshardedStream(), batch_size=4, num_workers=2, multiprocessing_context=context)
    doubled = torch.cat(list(unsharded)).tolist()
    print("2 workers, unsharded stream:", doubled)
    assert sorted(doubled) == sorted(list(range(8)) * 2)  # every item twice: one copy per worker
    # Map-style datasets need no such care: the sampler hands each index to one worker.
    map_style = DataLoader(
        TensorDataset(torch.arange(20)), batch_size=4, num_workers=2, multiprocessing_context=context
    )
    assert sorted(torch.cat([b for (b,) in map_style]).tolist()) == list(range(20))
else:
    print("num_workers demo skipped on", sys.platform, "(spawn needs an importable dataset module)")

# %% Data Transforms (torchvision.transforms)
# The v2 API accepts tensors, PIL images and also boxes/masks; images are (C, H, W).
raw = torch.zeros(3, 40, 60, dtype=torch.uint8)
raw[0, :, :30] = 255  # left half red
print("raw image:", tuple(raw.shape), raw.dtype)
to_float = v2.ToDtype(torch.float32, scale=True)  # uint8 0..255 -> float 0..1
assert to_float(raw).max().item() == 1.0 and to_float(raw).dtype == torch.float32
flipped = v2.RandomHorizontalFlip(p=1.0)(raw)  # p=1 so the effect is certain
assert flipped[0, 0, -1] == 255 and flipped[0, 0, 0] == 0  # red moved to the right
assert v2.Resize(20)(raw).shape == (3, 20, 30)  # the shorter side becomes 20

# %% Composing Transforms
mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
train_transform = v2.Compose(
    [
        v2.ToImage(),
        v2.RandomResizedCrop(32, scale=(0.5, 1.0), antialias=True),  # augmentation
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ]
)
eval_transform = v2.Compose(
    [
        v2.ToImage(),
        v2.Resize(32, antialias=True),
        v2.CenterCrop(32),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ]
)
augmented = train_transform(raw)
evaluated = eval_transform(raw)
print(
    "composed:",
    tuple(augmented.shape),
    augmented.dtype,
    f"range [{evaluated.min().item():.1f}, {evaluated.max().item():.1f}]",
)
assert augmented.shape == evaluated.shape == (3, 32, 32)
assert evaluated.min().item() == -2.0 and evaluated.max().item() == 2.0  # (0 - .5)/.25, (1 - .5)/.25

# The same pipeline plugs into a dataset, and the loader batches the results.
images = torchvision.datasets.FakeData(size=10, image_size=(3, 48, 48), num_classes=2, transform=train_transform)
batch_images, batch_labels = next(iter(DataLoader(images, batch_size=5)))
assert batch_images.shape == (5, 3, 32, 32) and batch_labels.shape == (5,)
print("a batch of transformed FakeData:", tuple(batch_images.shape))
