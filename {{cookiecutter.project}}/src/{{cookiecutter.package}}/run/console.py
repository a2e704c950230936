"""What both engines print, so that their terminals read the same: a progress bar on terminals only, one line
per epoch with the same fields, none of Lightning's banners (launch.py prints the first line of a resumed run and the
final line of every run). Nothing here imports torch or lightning."""

import logging
import sys
import warnings
from collections.abc import Mapping

from omegaconf import DictConfig

EPOCH_FIELDS = ("train/loss", "val/loss", "val/acc")


def progress_bar_enabled(trainer: DictConfig) -> bool:
    """A progress bar only on a terminal: in CI logs and pipes it would print a line per refresh."""
    return bool(trainer.enable_progress_bar) and sys.stderr.isatty()


def print_epoch(epoch: int, metrics: Mapping[str, float]) -> None:
    """`epoch 3: train/loss 0.1234  val/loss 0.2345  val/acc 0.9500` (the latest value of each)."""
    print(
        f"epoch {epoch}: "
        + "  ".join(f"{name} {float(metrics[name]):.4f}" for name in EPOCH_FIELDS if name in metrics),
        flush=True,
    )


def quiet_lightning() -> None:
    """engine=lightning: keep Lightning's banners and advice off the terminal (engine=raw prints none); real
    warnings still show."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)
    # Lightning's own use of a torch API that torch has deprecated: nothing the user can act on.
    warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
    # A mid-epoch resume is exact: the DataModule's state (engines/lightning.py) tells the sampler where to start.
    warnings.filterwarnings("ignore", ".*resuming from a checkpoint that ended before the epoch ended.*")
    # A resumed run writes into its own checkpoints/ folder on purpose.
    warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")
    # Advice for large datasets: the bundled data is a tensor in memory, where workers only cost start-up.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
