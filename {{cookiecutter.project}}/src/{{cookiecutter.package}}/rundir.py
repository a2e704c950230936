"""Where a run writes: a new folder, or the folder of the run it resumes.

train.py registers `run_dir` as an OmegaConf resolver before Hydra composes the config, so that
`hydra.run.dir` can depend on `ckpt_path`: with `ckpt_path=last` or a checkpoint file, the run continues in
the folder that holds the checkpoint, with its TensorBoard run, instead of starting a new folder.
Kept free of torch so that `python train.py --help` stays fast.
"""

import os
import shutil
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from .errors import UserError

RUN_NAME_FORMAT = "%Y-%m-%d_%H-%M-%S_%f"  # microseconds: two runs started in the same second differ


def find_checkpoint(ckpt_path: str | None, engine_dir: str | Path) -> Path | None:
    """The checkpoint to resume: None for a new run, the newest run's last.ckpt for 'last', else the file."""
    if ckpt_path in (None, "", "null", "None"):
        return None
    if ckpt_path == "last":
        runs = sorted(Path(engine_dir).glob("*/checkpoints/last.ckpt"), key=lambda p: p.parent.parent.name)
        if not runs:
            raise UserError(f"ckpt_path=last: no run under {engine_dir} has checkpoints/last.ckpt to resume; "
                            "train once without ckpt_path, or give ckpt_path=<file>")
        return runs[-1]
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise UserError(f"ckpt_path={ckpt_path}: no such checkpoint file; use ckpt_path=last or the path of a "
                        ".ckpt file (logs/train/<engine>/<run>/checkpoints/last.ckpt)")
    return path.resolve()


def run_dir(ckpt_path: str | None, engine_dir: str) -> str:
    """hydra.run.dir: the resumed run's folder, or a new timestamped folder under `engine_dir`."""
    try:
        checkpoint = find_checkpoint(ckpt_path, engine_dir)
    except UserError:
        checkpoint = None  # launch.train reports the problem as one line, after Hydra has started
    if checkpoint is not None and checkpoint.parent.name == "checkpoints":
        return str(checkpoint.parent.parent)
    return f"{engine_dir}/{(launcher_start_time() or datetime.now()).strftime(RUN_NAME_FORMAT)}"


def launcher_start_time() -> datetime | None:
    """Under torchrun or srun every worker runs train.py and composes hydra.run.dir itself: name the run
    after the start of the process that launched them all (their parent), so that they agree on one folder.
    None when not launched that way, or where /proc is missing (not Linux: each worker gets its own folder).
    """
    from .distributed import started_by_launcher  # here: importing this module must not import torch

    if started_by_launcher() is None:
        return None
    try:
        stat = Path(f"/proc/{os.getppid()}/stat").read_text()
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime, in clock ticks after boot
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return datetime.fromtimestamp(boot + start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def remove_refused_run(run_dir: Path, log_dir: Path) -> None:
    """A run refused before it trained leaves nothing behind: its folder, if it holds nothing of a run (no
    checkpoints, events or metrics.json: only what Hydra and launch.py wrote first), goes, and so do the folders
    above it that this leaves empty, up to paths.log_dir. A resumed run's folder always holds checkpoints: kept."""
    if not run_dir.is_dir() or (run_dir / "checkpoints").exists() or (run_dir / "metrics.json").exists() \
            or any(run_dir.glob("tensorboard/events.out.tfevents.*")):
        return
    shutil.rmtree(run_dir)
    log_dir = log_dir.resolve()
    for parent in run_dir.resolve().parents:
        if not (parent == log_dir or log_dir in parent.parents) or any(parent.iterdir()):
            break
        parent.rmdir()


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_dir"):
        # Cached: Hydra reads hydra.run.dir more than once, and a new folder must not get a new time stamp.
        OmegaConf.register_new_resolver("run_dir", run_dir, use_cache=True)
