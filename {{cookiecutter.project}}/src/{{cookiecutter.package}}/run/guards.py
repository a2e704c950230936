"""Checks both engines run inside the training loop."""

import contextlib
import signal
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..core.errors import UserError


class NonFiniteLossGuard:
    """Notice a NaN/Inf loss without waiting for the device at every step.

    `record` keeps each step's loss and whether its inputs were finite, on the device (two small ops a step);
    `check` looks at those since the last check (one sync) at the logging cadence and before every checkpoint
    write, and stops the run with an error that names the epoch and step of the first non-finite loss.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []  # (epoch, step, loss, inputs finite)

    def record(self, loss: torch.Tensor, inputs: torch.Tensor, epoch: int, step: int) -> None:
        """Device-side only: no host sync and no host-to-device copy in the training loop."""
        self.pending.append((epoch, step, loss.detach(), torch.isfinite(inputs).all()))

    def check(self, model: nn.Module) -> None:
        if not self.pending:
            return
        finite = torch.isfinite(torch.stack([loss for _, _, loss, _ in self.pending]))
        if finite.all():  # the sync
            self.pending.clear()
            return
        epoch, step, _, inputs_finite = self.pending[int((~finite).nonzero()[0])]
        inputs_finite = bool(inputs_finite)
        params_finite = all(torch.isfinite(p).all() for p in model.parameters())
        cause = (
            "the inputs of that batch were not finite: check the data"
            if not inputs_finite
            else "the inputs were finite; the parameters are now "
            + ("finite" if params_finite else "not finite")
            + ": the update diverged (lower optimizer.lr, set trainer.gradient_clip_val, or debug=anomaly "
            "to name the operation)"
        )
        raise UserError(
            f"the training loss became non-finite at epoch {epoch}, step {step}: {cause}. "
            "checkpoints/last.ckpt keeps the last good state"
        )


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Callable[[], int | None]]:
    """SIGTERM and SIGINT (Ctrl-C) ask the loop to stop after the current step (and its validation) instead of
    killing the run. Yields a function that returns the signal received, or None. A second Ctrl-C stops at once.
    """
    received: list[int] = []

    def handler(signum, frame):
        if received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield lambda: received[0] if received else None
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
