"""Checks both engines run inside the training loop."""

import contextlib
import signal
from collections.abc import Callable, Iterator

import torch
from torch import nn

from .errors import UserError


class NonFiniteLossGuard:
    """Notice a NaN/Inf loss without waiting for the device at every step.

    `record` keeps, on the device, the first step whose loss was not finite and whether its inputs were;
    `check` reads that back (one sync) at the logging cadence and before every checkpoint write, and stops
    the run with an error that names the epoch and step.
    """

    def __init__(self, device: torch.device) -> None:
        # The first bad step's epoch and step (-1: none yet) and whether its inputs were finite.
        self.epoch = torch.tensor(-1, device=device)
        self.step = torch.tensor(-1, device=device)
        self.inputs_finite = torch.tensor(True, device=device)

    def record(self, loss: torch.Tensor, inputs: torch.Tensor, epoch: int, step: int) -> None:
        """Device-side only: no host sync and no host-to-device copy in the training loop."""
        first_time = (self.step < 0) & ~torch.isfinite(loss.detach())
        self.epoch = torch.where(first_time, epoch, self.epoch)
        self.step = torch.where(first_time, step, self.step)
        self.inputs_finite = torch.where(first_time, torch.isfinite(inputs).all(), self.inputs_finite)

    def check(self, model: nn.Module) -> None:
        step = self.step.item()
        if step < 0:
            return
        epoch, inputs_finite = self.epoch.item(), self.inputs_finite.item()
        params_finite = all(torch.isfinite(p).all() for p in model.parameters())
        cause = ("the inputs of that batch were not finite: check the data" if not inputs_finite else
                 "the inputs were finite; the parameters are now " + ("finite" if params_finite else "not finite")
                 + ": the update diverged (lower optimizer.lr, set trainer.gradient_clip_val, or debug=anomaly "
                 "to name the operation)")
        raise UserError(f"the training loss became non-finite at epoch {epoch}, step {step}: {cause}. "
                        "checkpoints/last.ckpt keeps the last good state")


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
