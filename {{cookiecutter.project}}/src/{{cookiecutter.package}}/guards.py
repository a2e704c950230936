"""Checks both engines run inside the training loop."""

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
        self.first_bad = torch.full((3,), -1, dtype=torch.int64, device=device)  # epoch, step, inputs finite

    def record(self, loss: torch.Tensor, inputs: torch.Tensor, epoch: int, step: int) -> None:
        here = torch.stack([torch.tensor(epoch, device=loss.device), torch.tensor(step, device=loss.device),
                            torch.isfinite(inputs).all().long()])
        first_time = (self.first_bad[0] < 0) & ~torch.isfinite(loss.detach())
        self.first_bad = torch.where(first_time, here, self.first_bad)

    def check(self, model: nn.Module) -> None:
        epoch, step, inputs_finite = self.first_bad.tolist()
        if epoch < 0:
            return
        params_finite = all(torch.isfinite(p).all() for p in model.parameters())
        cause = ("the inputs of that batch were not finite: check the data" if not inputs_finite else
                 "the inputs were finite; the parameters are now " + ("finite" if params_finite else "not finite")
                 + ": the update diverged (lower optimizer.lr, set trainer.gradient_clip_val, or debug=anomaly "
                 "to name the operation)")
        raise UserError(f"the training loss became non-finite at epoch {epoch}, step {step}: {cause}. "
                        "checkpoints/last.ckpt keeps the last good state")
