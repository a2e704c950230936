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

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

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
        # What is there, said as it is: a folder or a FIFO named by mistake is not "missing".
        problem = (
            "is a directory, not a checkpoint file"
            if path.is_dir()
            else "is not a regular file"
            if path.exists()
            else "no such checkpoint file"
        )
        raise UserError(
            f"{key}={ckpt_path}: {problem}; use {key}=last or the path of a .ckpt file "
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
        remember_run_folder(checkpoint.parent.parent)  # before Hydra rewrites its .hydra/ files
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


# Folders that existed before Hydra wrote this command's .hydra/ and log (and a sweep's multirun.yaml) into them:
# the state of the folder's last.ckpt then, those files as they were, and the names the folder held. A resumed
# run's folder (the run_dir resolver), or any folder named by hydra.run.dir or inside hydra.sweep.dir
# (KeepExistingRuns).
REMEMBERED: dict[Path, tuple[tuple[int, int] | None, dict[Path, bytes], set[str]]] = {}


def last_checkpoint_stamp(folder: Path) -> tuple[int, int] | None:
    last = folder / "checkpoints" / "last.ckpt"
    return (last.stat().st_mtime_ns, last.stat().st_size) if last.is_file() else None


def remember_run_folder(folder: Path, *extra: Path) -> None:
    if folder.is_dir():
        files = [*(folder / ".hydra").glob("*.yaml"), *(path for path in extra if path.is_file())]
        REMEMBERED[folder.resolve()] = (
            last_checkpoint_stamp(folder),
            {path: path.read_bytes() for path in files},
            {path.name for path in folder.iterdir()},
        )


class KeepExistingRuns(Callback):
    """Hydra writes .hydra/ into the run folder before train.py (or evaluate.py, ...) runs: this callback, run by
    Hydra just before that (configs/hydra/default.yaml), remembers what an existing folder held, so that a run
    refused there (check_new_run_folder) leaves the old run's config as it was."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        remember_run_folder(Path(config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        # Each job's folder is hydra.sweep.subdir under it (one level by default; two are allowed for).
        for hydra_dir in (*sweep.glob("*/.hydra"), *sweep.glob("*/*/.hydra")):
            remember_run_folder(hydra_dir.parent, sweep / "multirun.yaml")


@contextmanager
def resumed_config_kept_on_failure(run_dir: Path) -> Iterator[None]:
    """A run that fails before it saves a checkpoint (refused, stopped, crashed) in a folder that existed before
    (a resume, or a new run refused there) leaves that folder's .hydra/ config as it was: Hydra rewrote it at the
    start with this attempt's overrides, which the folder's checkpoints do not reflect. The log Hydra started for
    this command there (evaluate.log in a training run's folder) goes too."""
    try:
        yield
    except BaseException:
        checkpoint, files, names = REMEMBERED.get(run_dir.resolve(), (None, None, set()))
        if files is not None and last_checkpoint_stamp(run_dir) == checkpoint:
            for path, content in files.items():
                path.write_bytes(content)
            for log in run_dir.glob("*.log"):
                if log.name not in names:
                    log.unlink()
        raise


# What a run of any of the tools leaves that another must not write over: train.py's checkpoints, the results
# file of train.py and evaluate.py (metrics.json){% if cookiecutter.include_deployment %}, export.py (model.json) and predict.py (predictions.json){% endif %}, and
# logged TensorBoard events. Not Hydra's .hydra/ and log, nor the empty folders a run prepares: in a DDP run,
# every process checks its folder before the processes meet, and none of these is written before they do.
RESULT_FILES = ("metrics.json", "model.json", "predictions.json")


def run_results(folder: Path) -> list[str]:
    """What of a run `folder` holds, as paths relative to it ([] for a new folder)."""
    held = [path for path in sorted(folder.glob("checkpoints/*.ckpt")) if path.is_file()]
    held += [folder / name for name in RESULT_FILES if (folder / name).exists()]
    events = sorted(folder.glob("*/events.out.tfevents.*"))
    held += [path for path in events if holds_summaries(path)][:1]
    return [str(path.relative_to(folder)) for path in held]


def check_new_run_folder(run_dir: Path, script: str, checkpoint: Path | None = None) -> None:
    """A new run needs a folder of its own: refuse one that holds a run already (hydra.run.dir, or a job's folder
    under hydra.sweep.dir, named so; symlinks resolved), unless `checkpoint` (ckpt_path) continues that very run."""
    folder = run_dir.resolve()
    if checkpoint is not None and checkpoint.resolve().parent == folder / "checkpoints":
        return
    held = run_results(folder)
    if not held:
        return
    key = (
        "hydra.sweep.dir"
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
        else ("hydra.run.dir")
    )
    where = str(run_dir) if folder == run_dir.absolute() else f"{run_dir} (the folder {folder})"
    shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
    if script == "train.py":
        last = folder / "checkpoints" / "last.ckpt"
        resume = f"ckpt_path={last}" if last.is_file() else "ckpt_path=<one of its checkpoints>"
        hint = f"; to continue that run, give {resume}"
    else:
        hint = ""
    raise UserError(
        f"{key}: {where} already holds a run ({shown}): a new {script} run writes a folder of its own, so leave "
        f"{key} out or name a new folder{hint}"
    )


def remove_refused_run(run_dir: Path, log_dir: Path) -> None:
    """A run refused before it trained leaves nothing behind: its folder, if it holds nothing of a run (no
    checkpoint, logged events or metrics.json: only what Hydra, launch.py and a logger wrote first), goes, and so do
    the folders above it that this leaves empty, up to paths.log_dir. A resumed run's folder holds checkpoints: kept."""
    if (
        not run_dir.is_dir()
        or any(run_dir.glob("checkpoints/*.ckpt"))
        or (run_dir / "metrics.json").exists()
        or any(run_dir.glob("rank*.log"))  # a failed DDP run: its error line names the failed rank's log
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
