"""torchvision's MNIST (28x28 handwritten digits) and Fashion-MNIST (28x28 Zalando clothing): one file layout."""

from pathlib import Path

from torch.utils.data import Dataset

from . import register
from ._files import Files, check_mnist_contents, legacy_mnist_error, mnist_files, mnist_split_files
from ._torchvision import TorchvisionDataset


class MnistLayout(TorchvisionDataset):
    """Four IDX files (training and test images and labels), each downloaded as a .gz and extracted beside it."""

    input_shape = (1, 28, 28)

    def files(self, root: str) -> tuple[Path, Files]:
        return mnist_files(self.dataset_class(), root)

    def files_error(self, root: str, train: bool, download: bool, err: Exception) -> Exception | None:
        legacy = legacy_mnist_error(self.name, self.dataset_class(), root, train, err)
        return legacy or super().files_error(root, train, download, err)

    def check_loaded(self, dataset: Dataset, root: str, train: bool) -> None:
        images, labels = mnist_split_files(self.dataset_class(), root, train)
        check_mnist_contents(self.name, dataset, images, labels, self.input_shape[1:])


@register
class Mnist(MnistLayout):
    name = "mnist"
    torchvision_class = "MNIST"
    mean, std = (0.1307,), (0.3081,)
    class_names = tuple(str(digit) for digit in range(10))


@register
class FashionMnist(MnistLayout):
    name = "fashion_mnist"
    torchvision_class = "FashionMNIST"
    mean, std = (0.2860,), (0.3530,)
    class_names = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )
