"""The CUDA speed settings, resolved from the config once and applied alike by every engine.

matmul_precision (torch.set_float32_matmul_precision), trainer.benchmark (cudnn's autotuner) and channels_last
(the models' and batches' memory format) are worth having on a GPU and mean nothing, or get in the way, elsewhere:
`resolve` turns their config values (null: the default for the device) into what a run on its device applies,
and metrics.json records the result (`recorded`). Lightning leaves the matmul precision and the memory format to
its user and sets cudnn.benchmark from Trainer(benchmark=...): engines/lightning.py passes it the resolved value,
engines/raw.py sets it as Lightning's _set_torch_flags does (raw.set_deterministic).
"""

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from ..core.errors import UserError

MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's
CUDA_MATMUL_PRECISION = "high"  # TF32 on tensor cores: float32 runs several times faster, to about 1e-3 relative


@dataclass(frozen=True)
class DeviceSettings:
    matmul_precision: str | None  # None: torch's setting left as it is
    benchmark: bool | None  # Trainer(benchmark=...): None leaves cudnn.benchmark as it is
    channels_last: bool  # models and 4-d input batches in channels_last memory format


def on_cuda(accelerator: str) -> bool:
    """Whether trainer.accelerator trains on a CUDA GPU (the device both engines pick for it)."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def resolve(cfg: DictConfig, cuda: bool) -> DeviceSettings:
    """The settings a run of `cfg` applies, on a CUDA GPU (`cuda`) or another device. Raises UserError for
    trainer.benchmark=true with trainer.deterministic: cudnn's autotuner picks kernels by timing them, and PyTorch
    then ignores cudnn.deterministic (Lightning only warns; both engines refuse, so a run asked to be deterministic
    is)."""
    trainer = cfg.trainer
    benchmark, deterministic = trainer.get("benchmark"), trainer.get("deterministic", False)
    if benchmark and deterministic:
        raise UserError(
            f"trainer.benchmark=true with trainer.deterministic={str(deterministic).lower()} is not valid: cudnn's "
            "autotuner times kernels to pick them, and PyTorch then ignores deterministic; set "
            "trainer.benchmark=null (on unless deterministic) or false"
        )
    if benchmark is None:
        # Lightning's rule for benchmark=None with deterministic (off); on CUDA otherwise on, where the
        # convolutions' shapes stay the same from batch to batch and the autotuner pays for itself.
        benchmark = False if deterministic else (True if cuda else None)
    matmul_precision = cfg.get("matmul_precision")
    if matmul_precision is None and cuda:
        matmul_precision = CUDA_MATMUL_PRECISION
    return DeviceSettings(matmul_precision, benchmark, bool(cfg.get("channels_last")) and cuda)


def apply(cfg: DictConfig, cuda: bool) -> DeviceSettings:
    """`resolve`, then set what Lightning leaves to its user (the matmul precision), before the model is built; the
    engines pass `benchmark` on (Trainer(benchmark), raw.set_deterministic) and the model is built channels_last by
    run/checkpoint.initial_model."""
    settings = resolve(cfg, cuda)
    apply_matmul_precision(settings)
    return settings


def apply_matmul_precision(settings: DeviceSettings) -> None:
    """What Lightning leaves to its user, set here for both engines before the model is built."""
    if settings.matmul_precision is not None:
        torch.set_float32_matmul_precision(settings.matmul_precision)


def recorded(settings: DeviceSettings, loader: Any) -> dict[str, Any]:
    """metrics.json's record of the settings the run trained under (`loader`: its training batches' loader)."""
    return {
        "matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "channels_last": settings.channels_last,
        "pin_memory": bool(getattr(loader, "pin_memory", False)),  # with non-blocking copies to the GPU
    }
