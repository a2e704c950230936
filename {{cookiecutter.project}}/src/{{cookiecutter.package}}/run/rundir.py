"""Where a run writes: a new folder, or the folder of the run it resumes.

train.py registers `run_dir` as an OmegaConf resolver before Hydra composes the config, so that
`hydra.run.dir` can depend on `ckpt_path`: with `ckpt_path=last` or a checkpoint file, the run continues in
the folder that holds the checkpoint, with its TensorBoard run, instead of starting a new folder.
Kept free of torch so that `python train.py --help` stays fast.
"""

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..core.errors import UserError

RUN_NAME_FORMAT = "%Y-%m-%d_%H-%M-%S_%f"  # microseconds: two runs started in the same second differ


def find_checkpoint(ckpt_path: str | None, engine_dir: str | Path, key: str = "ckpt_path") -> Path | None:
    """The checkpoint `key` (ckpt_path, weights_from) names: None if unset, the newest run's last.ckpt for 'last',
    else the file."""
    if ckpt_path in (None, "", "null", "None"):
        return None
    if ckpt_path == "last":
        runs = sorted(Path(engine_dir).glob("*/checkpoints/last.ckpt"), key=lambda p: p.parent.parent.name)
        if not runs:
            raise UserError(
                f"{key}=last: no run under {engine_dir} has checkpoints/last.ckpt; train once without "
                f"{key}, or give {key}=<file>"
            )
        return runs[-1]
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise UserError(
            f"{key}={ckpt_path}: no such checkpoint file; use {key}=last or the path of a .ckpt file "
            "(logs/train/<engine>/<run>/checkpoints/last.ckpt)"
        )
    return path.resolve()


def run_dir(ckpt_path: str | None, engine_dir: str) -> str:
    """hydra.run.dir: the resumed run's folder, or a new timestamped folder under `engine_dir`."""
    try:
        checkpoint = find_checkpoint(ckpt_path, engine_dir)
    except UserError:
        checkpoint = None  # launch.train reports the problem as one line, after Hydra has started
    if checkpoint is not None and checkpoint.parent.name == "checkpoints":
        remember_resumed_run(checkpoint.parent.parent)  # before Hydra rewrites its .hydra/ files
        return str(checkpoint.parent.parent)
    check_creatable(Path(engine_dir))
    return f"{engine_dir}/{(launcher_start_time() or datetime.now()).strftime(RUN_NAME_FORMAT)}"


def check_creatable(folder: Path) -> None:
    """Hydra creates the run folder before train.py runs, with a traceback if it cannot: one line instead. The
    resolver runs while Hydra composes the config, so this exits by itself (Hydra would wrap an exception)."""
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    problem = (
        "is a file, not a folder"
        if not existing.is_dir()
        else "is not writable"
        if not os.access(existing, os.W_OK | os.X_OK)
        else None
    )
    if problem:
        sys.exit(
            f"error: paths.log_dir: run folders go under {folder}, but {existing} {problem}: choose another "
            "paths.log_dir or fix that path"
        )


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
        boot = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime ")
        )
        return datetime.fromtimestamp(boot + start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None


# The resumed run's .hydra/*.yaml as they were before Hydra wrote this attempt's config over them, and the
# state of its last.ckpt then.
RESUMED: dict[str, Any] = {}


def last_checkpoint_stamp(folder: Path) -> tuple[int, int] | None:
    last = folder / "checkpoints" / "last.ckpt"
    return (last.stat().st_mtime_ns, last.stat().st_size) if last.is_file() else None


def remember_resumed_run(folder: Path) -> None:
    RESUMED.update(
        folder=folder.resolve(),
        checkpoint=last_checkpoint_stamp(folder),
        files={path: path.read_bytes() for path in (folder / ".hydra").glob("*.yaml")},
    )


@contextmanager
def resumed_config_kept_on_failure(run_dir: Path) -> Iterator[None]:
    """A resume that fails before it saves a checkpoint (refused, stopped, crashed) leaves its run's .hydra/ config
    as it was: Hydra rewrote it at the start with this attempt's overrides, which the checkpoint does not reflect."""
    try:
        yield
    except BaseException:
        if RESUMED.get("folder") == run_dir.resolve() and last_checkpoint_stamp(run_dir) == RESUMED["checkpoint"]:
            for path, content in RESUMED["files"].items():
                path.write_bytes(content)
        raise


def remove_refused_run(run_dir: Path, log_dir: Path) -> None:
    """A run refused before it trained leaves nothing behind: its folder, if it holds nothing of a run (no
    checkpoint, logged events or metrics.json: only what Hydra, launch.py and a logger wrote first), goes, and so do
    the folders above it that this leaves empty, up to paths.log_dir. A resumed run's folder holds checkpoints: kept."""
    if (
        not run_dir.is_dir()
        or any(run_dir.glob("checkpoints/*.ckpt"))
        or (run_dir / "metrics.json").exists()
        or any(holds_summaries(events) for events in run_dir.glob("tensorboard/events.out.tfevents.*"))
    ):
        return
    shutil.rmtree(run_dir)
    log_dir = log_dir.resolve()
    for parent in run_dir.resolve().parents:
        if not (parent == log_dir or log_dir in parent.parents):
            break
        try:
            parent.rmdir()  # only when empty: atomic, as another refused run may be removing the same folders
        except FileNotFoundError:
            continue  # that other run removed it
        except OSError:
            break  # not empty: a run of its own lives there


def holds_summaries(events_file: Path) -> bool:
    """Whether a TensorBoard events file holds anything logged (Lightning's logger creates the file, with only its
    header, before a run is refused)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader  # on this error path only

    try:
        return any(event.HasField("summary") for event in EventFileLoader(str(events_file)).Load())
    except Exception:  # unreadable: keep it
        return True


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_dir"):
        # Cached: Hydra reads hydra.run.dir more than once, and a new folder must not get a new time stamp.
        OmegaConf.register_new_resolver("run_dir", run_dir, use_cache=True)
