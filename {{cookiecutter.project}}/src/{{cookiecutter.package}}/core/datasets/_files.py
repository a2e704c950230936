"""Why torchvision's dataset files do not load: the first damaged or missing file, named with its fix.

_torchvision.py calls `files_error` when building a torchvision dataset fails, with the files of its layout
(`mnist_files`, `cifar_files`), and `check_mnist_contents` after an MNIST-style dataset loaded (what torchvision does
not check).
"""

import os
import struct
from math import prod
from pathlib import Path

from torch.utils.data import Dataset

from ..errors import UserError
from . import OFFLINE_FALLBACK

# Damaged or missing torchvision files. What torchvision 0.29 raises for them names neither the file nor the fix:
# a damaged MNIST file gives a ValueError, AssertionError or RuntimeError while the dataset is built (or, for label
# values out of range, an error in the loss later), a missing one "Dataset not found"; any CIFAR-10 file whose md5
# is not torchvision's gives "Dataset not found or corrupted". So when a dataset fails, its files are examined here
# and the first bad one is named. None of this runs when the dataset loads, apart from check_mnist_contents (a few
# microseconds). CIFAR-10's batches are pickles, and unpickling runs code: torchvision compares every batch's md5
# with its own list before it unpickles any, and nothing here unpickles a file.
RETRY = "put torchvision's file there, or set data.download=true on a machine with internet"
BUNDLED = f"train on the bundled data with data={OFFLINE_FALLBACK}"
GZIP_MAGIC = b"\x1f\x8b"
# (file, its md5 or None, the function that finds its problem, (the archive it is extracted from, that one's md5))
Files = list[tuple[Path, str | None, object, tuple[Path, str]]]


def cifar_files(dataset_class: type, root: str) -> tuple[Path, Files]:
    """The folder and files of a CIFAR-style dataset: one archive holds every batch file."""
    root_path = Path(os.path.expanduser(root)).absolute()  # torchvision expands ~ too
    folder = root_path / dataset_class.base_folder
    archive = (root_path / dataset_class.filename, dataset_class.tgz_md5)
    batches = [*dataset_class.train_list, *dataset_class.test_list]
    return folder, [
        (folder / file, md5, _pickle_problem, archive)
        for file, md5 in [*batches, (dataset_class.meta["filename"], dataset_class.meta["md5"])]
    ]


def mnist_files(dataset_class: type, root: str) -> tuple[Path, Files]:
    """The folder and files of an MNIST-style dataset (MNIST, FashionMNIST): one .gz per file, which torchvision
    extracts next to it."""
    folder = Path(os.path.expanduser(root)).absolute() / dataset_class.__name__ / "raw"
    return folder, [
        (folder / gz.removesuffix(".gz"), None, _idx_problem, (folder / gz, md5)) for gz, md5 in dataset_class.resources
    ]


def legacy_mnist_error(name: str, dataset_class: type, root: str, train: bool, err: Exception) -> UserError | None:
    """The processed/*.pt an old torchvision left, which torchvision read instead of the raw files and failed on."""
    images, labels = mnist_split_files(dataset_class, root, train)
    if images != labels:
        return None
    folder = Path(os.path.expanduser(root)).absolute() / dataset_class.__name__ / "raw"
    return UserError(
        f"data={name}: {images} is not a dataset torch.load can read ({_one_line(err)}): "
        f"delete {images.parent}, and torchvision reads the files of {folder} instead"
    )


def files_error(
    name: str, dataset_class: type, folder: Path, files: Files, download: bool, err: Exception
) -> UserError | None:
    """The UserError for `data=<name>`, whose torchvision dataset failed with `err`: the first damaged file of
    `files`, else the missing ones (data.download=false) or the failed download. None when no file explains `err`."""
    archive_problems: dict[Path, tuple[str, str] | None] = {}

    def archive_problem(path: Path, md5: str) -> tuple[str, str] | None:  # hashed once, and only when needed
        if path not in archive_problems:
            archive_problems[path] = _examine(path, md5, _archive_problem) if path.exists() else ("missing", "")
        return archive_problems[path]

    for path, md5, problem_of, (archive_path, archive_md5) in files:
        if path.exists() and (problem := _examine(path, md5, problem_of)):
            fix = (
                RETRY
                if archive_problem(archive_path, archive_md5)
                else f"set data.download=true, which extracts it again from {archive_path} without the network"
            )
            return UserError(f"data={name}: {path} is {problem[0]} ({problem[1]}): delete it and {fix}")
    missing = [(path, archive) for path, _, _, archive in files if not path.exists()]
    if not missing:
        return None
    for archive_path, archive_md5 in dict.fromkeys(archive for _, archive in missing):
        if (problem := archive_problem(archive_path, archive_md5)) and problem[0] != "missing":
            return UserError(f"data={name}: {archive_path} is {problem[0]} ({problem[1]}): delete it and {RETRY}")
    extractable = not any(archive_problem(*archive) for _, archive in missing)
    if download:
        what = "extracting" if extractable else "downloading"
        return UserError(
            f"data={name}: {what} the {dataset_class.__name__} files into {folder} failed "
            f"({_one_line(err)}): run on a machine with internet, put torchvision's files there "
            f"yourself, or {BUNDLED}"
        )
    if len(missing) == len(files):
        where = f"the {dataset_class.__name__} files are not in {folder}"
    elif len(missing) == 1:
        where = f"{missing[0][0]} is missing"
    else:
        where = f"{', '.join(path.name for path, _ in missing)} are missing from {folder}"
    if extractable:
        archives = ", ".join(dict.fromkeys(str(archive_path) for _, (archive_path, _) in missing))
        fix = (
            f"set data.download=true, which extracts {'it' if len(missing) == 1 else 'them'} from {archives} "
            f"without the network"
        )
    else:
        fix = f"put torchvision's files there, set data.download=true on a machine with internet, or {BUNDLED}"
    return UserError(f"data={name}: {where} and data.download=false: {fix}")


def mnist_split_files(dataset_class: type, root: str, train: bool) -> tuple[Path, Path]:
    """The (images, labels) files torchvision's MNIST-style `dataset_class` reads for a split: the raw IDX files,
    or one processed/*.pt file for both when an old torchvision left them (torchvision then reads those)."""
    base = Path(os.path.expanduser(root)).absolute() / dataset_class.__name__
    legacy = [base / "processed" / dataset_class.training_file, base / "processed" / dataset_class.test_file]
    if all(path.is_file() for path in legacy):
        return legacy[not train], legacy[not train]
    prefix = "train" if train else "t10k"
    return base / "raw" / f"{prefix}-images-idx3-ubyte", base / "raw" / f"{prefix}-labels-idx1-ubyte"


def check_mnist_contents(name: str, dataset: Dataset, images: Path, labels: Path, size: tuple[int, int]) -> None:
    """What torchvision does not check in MNIST-style files it loaded: images of `size` (height, width), one label per
    image, labels that name a class (otherwise the first batch fails, in the model or in the loss)."""
    data, targets, classes = dataset.data, dataset.targets, len(dataset.classes)
    if tuple(data.shape[1:]) != tuple(size):
        raise UserError(
            f"data={name}: {images} is not {'x'.join(map(str, size))} images (its images are "
            f"{'x'.join(map(str, data.shape[1:]))}): delete it and {RETRY}"
        )
    if len(targets) != len(data):
        raise UserError(
            f"data={name}: {labels} is not the label file of {images} ({len(targets)} labels for "
            f"{len(data)} images): delete both and {RETRY.replace('file', 'files')}"
        )
    if len(targets) and int(targets.max()) >= classes:
        index = int((targets >= classes).nonzero()[0])
        raise UserError(
            f"data={name}: {labels} is damaged (label {int(targets[index])} at position {index}, "
            f"expected 0-{classes - 1}): delete it and {RETRY}"
        )


def _examine(path: Path, md5: str | None, problem_of) -> tuple[str, str] | None:
    """`problem_of(path, md5)`, for a path that exists: a folder or an unreadable file is a problem too."""
    if not path.is_file():
        return "not a file", "a folder or a special file"
    try:
        return problem_of(path, md5)
    except OSError as err:
        return "unreadable", err.strerror or str(err)


def _idx_problem(path: Path, md5: None = None) -> tuple[str, str] | None:
    """(what is wrong, detail) with an MNIST IDX file of uint8 images (ndim 3) or labels (ndim 1), from its header
    and size; None when they are right."""
    ndim = 3 if "-images-" in path.name else 1
    size = path.stat().st_size
    if size == 0:
        return "empty", "0 bytes"
    with path.open("rb") as file:
        head = file.read(4 + 4 * ndim)
    if head.startswith(GZIP_MAGIC):
        return "still gzip-compressed", f"the contents of {path.name}.gz, not the file extracted from it"
    expected_magic = 0x800 + ndim
    if len(head) < 4:
        return "truncated", f"{size} bytes, less than its 4-byte magic number"
    if (magic := int.from_bytes(head[:4], "big")) != expected_magic:
        kind = "image" if ndim == 3 else "label"
        return (
            f"not an IDX {kind} file",
            f"magic number 0x{magic:08X}, expected 0x{expected_magic:08X}; {_describe_start(head)}",
        )
    if len(head) < 4 + 4 * ndim:
        return "truncated", f"{size} bytes, less than its {4 + 4 * ndim}-byte header"
    expected = 4 + 4 * ndim + prod(struct.unpack(f">{ndim}I", head[4:]))
    if size < expected:
        return "truncated", f"{size} of the {expected} bytes its header announces"
    if size > expected:
        return "longer than its header announces", f"{size} bytes, expected {expected}"
    return None


def _pickle_problem(path: Path, md5: str) -> tuple[str, str] | None:
    """(what is wrong, detail) with a CIFAR-10 batch file whose md5 is not torchvision's; None when it is. The
    file is never unpickled: a pickle can run any code."""
    from torchvision.datasets.utils import calculate_md5

    if (found := calculate_md5(path)) == md5:
        return None
    size = path.stat().st_size
    if size == 0:
        return "empty", "0 bytes"
    with path.open("rb") as file:
        head = file.read(16)
        file.seek(-1, os.SEEK_END)
        last = file.read(1)
    if not (len(head) > 1 and head[0] == 0x80 and head[1] <= 5):  # a pickle starts with opcode PROTO, version
        kind = "text, not" if _is_text(head) else "gzip data, not" if head.startswith(GZIP_MAGIC) else "not"
        return f"{kind} a CIFAR-10 batch", _describe_start(head)
    if last != b".":  # a pickle ends with opcode STOP
        return "truncated", f"{size} bytes, a pickle that stops before its end"
    return "not torchvision's file", f"md5 {found}, expected {md5}; it was not unpickled, since a pickle can run code"


def _archive_problem(path: Path, md5: str) -> tuple[str, str] | None:
    """(what is wrong, detail) with a downloaded .gz / .tar.gz whose md5 is not torchvision's; None when it is."""
    from torchvision.datasets.utils import calculate_md5

    if (found := calculate_md5(path)) == md5:
        return None
    with path.open("rb") as file:
        head = file.read(16)
    if not head:
        return "empty", "0 bytes"
    if not head.startswith(GZIP_MAGIC):
        return "not a gzip file", _describe_start(head)
    return "not torchvision's download", f"md5 {found}, expected {md5}: truncated or another file"


def _is_text(head: bytes) -> bool:
    try:
        return all(char.isprintable() or char.isspace() for char in head.decode("utf-8"))
    except UnicodeDecodeError:
        return False


def _describe_start(head: bytes) -> str:
    if _is_text(head[:12]):
        return f"it starts with {head[:12].decode()!r}"
    return f"it starts with bytes {head[:8].hex(' ')}"


def _one_line(err: Exception) -> str:
    """`err` in one line: MNIST's download error spans lines ("Error downloading ...:", then each mirror's)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(dict.fromkeys([lines[0], lines[-1]])) if lines else type(err).__name__
