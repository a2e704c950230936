"""Exceptions that end a run with one line instead of a traceback (train.py prints them)."""

import signal
from pathlib import Path


class UserError(Exception):
    """A config value, file or dataset the user can fix: the message names it and what would be accepted."""


class TrainingStopped(Exception):
    """The run was asked to stop (SIGTERM, Ctrl-C) and saved last.ckpt first. Exits with 128 + signal number."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    @classmethod
    def by_signal(cls, signum: int, epoch: int, global_step: int, checkpoint_dir: Path,
                  engine: str) -> "TrainingStopped":
        name = signal.Signals(signum).name
        return cls(f"stopped by {name} at epoch {epoch}, step {global_step}; {checkpoint_dir / 'last.ckpt'} saved. "
                   f"Resume with: python train.py engine={engine} ckpt_path=last", 128 + signum)
