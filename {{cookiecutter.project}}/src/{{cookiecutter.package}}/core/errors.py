"""Exceptions that end a run with one line instead of a traceback (train.py prints them)."""

import re
import signal
from pathlib import Path

# Terminal escapes (colours, cursor moves) and other control characters: torch and Lightning colour some messages,
# and an `error:` line that quotes them must print as text.
TERMINAL_ESCAPE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]"
)


def plain_text(text: str) -> str:
    """`text` without terminal escapes or control characters (tabs and newlines kept)."""
    return TERMINAL_ESCAPE.sub("", text)


def foreign_reason(err: BaseException, limit: int = 200) -> str:
    """A library's exception as the reason an `error:` line quotes: its type and first line, as plain text."""
    lines = plain_text(str(err)).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:limit]}" if lines else type(err).__name__


class UserError(Exception):
    """A config value, file or dataset the user can fix: the message names it and what would be accepted. Printed
    as one `error:` line: terminal escapes a quoted message carried are removed."""

    def __init__(self, message: str = "", *args: object) -> None:
        super().__init__(plain_text(str(message)), *args)


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
