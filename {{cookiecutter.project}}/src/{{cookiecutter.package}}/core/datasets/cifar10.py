"""torchvision's CIFAR-10: 32x32 colour images of 10 object classes, pickled batches in one archive."""

from pathlib import Path

from . import register
from ._files import Files, cifar_files
from ._torchvision import TorchvisionDataset


@register
class Cifar10(TorchvisionDataset):
    name = "cifar10"
    torchvision_class = "CIFAR10"
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    input_shape = (3, 32, 32)
    class_names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

    def files(self, root: str) -> tuple[Path, Files]:
        return cifar_files(self.dataset_class(), root)  # torchvision checks their md5 before it unpickles any
