"""The base of the entries read by a torchvision.datasets class: download, file checks, the arrays they hold."""

from pathlib import Path

import torch
from torch.utils.data import Dataset

from . import DatasetSpec
from ._files import Files, files_error


class TorchvisionDataset(DatasetSpec):
    """A dataset of torchvision.datasets (`torchvision_class`, which takes root, train, download and transform),
    whose files `files(root)` lists for the checks that name a damaged or missing file with its fix."""

    torchvision_class: str
    downloads = True
    has_test_split = True  # torchvision's train=False

    def files(self, root: str) -> tuple[Path, Files]:
        raise NotImplementedError(f"{type(self).__name__}.files")

    def check_loaded(self, dataset: Dataset, root: str, train: bool) -> None:
        """What torchvision does not check in the files of a split it loaded (a UserError naming the file)."""

    def files_error(self, root: str, train: bool, download: bool, err: Exception) -> Exception | None:
        """Why loading failed with `err`, from the files; None when no file explains it."""
        folder, files = self.files(root)
        return files_error(self.name, self.dataset_class(), folder, files, download, err)

    def dataset_class(self) -> type:
        import torchvision  # imported here: the datasets that are not torchvision's do not need it

        return getattr(torchvision.datasets, self.torchvision_class)

    def prepare(self, root: str, download: bool) -> None:
        for train in (True, False):
            self.load(root, train, download)

    def load(self, root: str, train: bool, download: bool) -> Dataset:
        try:
            dataset = self.dataset_class()(root, train=train, download=download, transform=self.transform())
        except Exception as err:  # a damaged MNIST file raises ValueError, AssertionError, RuntimeError...
            error = self.files_error(root, train, download, err)
            if error is None:  # no file explains it: torchvision's own error, with its traceback
                raise
            raise error from err
        self.check_loaded(dataset, root, train)
        return dataset

    def missing_files(self, root: str) -> list[str]:
        return [str(path) for path, *_ in self.files(root)[1] if not path.is_file()]

    def arrays(self, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 pixels torchvision holds in `.data` (N, H, W or N, H, W, C) as (N, C, H, W), and `.targets`."""
        images = torch.as_tensor(dataset.data)
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
        return images.contiguous(), torch.as_tensor(dataset.targets, dtype=torch.int64)
