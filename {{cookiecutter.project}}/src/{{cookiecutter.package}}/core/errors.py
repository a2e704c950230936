"""Exceptions that end a run with one line instead of a traceback (train.py prints them)."""

import signal
from pathlib import Path


class UserError(Exception):
    """A config value, file or dataset the user can fix: the message names it and what would be accepted."""


class TrainingStopped(Exception):
    """The run was asked to stop (SIGTERM, Ctrl-C) and saved last.ckpt first. Exits with 128 + signal number;
    train.py adds the command that resumes it, with the run's own overrides."""

    def __init__(self, message: str, exit_code: int, checkpoint: Path) -> None:
        super().__init__(message)
        self.exit_code, self.checkpoint = exit_code, checkpoint

    @classmethod
    def by_signal(cls, signum: int | None, epoch: int, global_step: int, checkpoint_dir: Path) -> "TrainingStopped":
        signum = signum or signal.SIGTERM  # None: another DDP rank's signal (a launcher sends SIGTERM)
        name, checkpoint = signal.Signals(signum).name, checkpoint_dir / "last.ckpt"
        return cls(
            f"stopped by {name} at epoch {epoch}, step {global_step}; saved {checkpoint}", 128 + signum, checkpoint
        )
