"""engine=minimal: the training loop a learner writes{% if cookiecutter.include_tour %} after the tour{% endif %}, on this project's task, data, model and configs.

Forward, loss, backward, optimizer step, zero_grad and the scheduler; a validation pass per epoch; best.ckpt and
last.ckpt; TensorBoard scalars; the test with the best weights; a resume from its own last.ckpt. Nothing else: a
setting of configs/ it leaves out is refused by name before any work (IMPLEMENTED_KEYS).

The ladder, each rung training the default run to the same numbers (tests/engines/test_ladder.py):
{% if cookiecutter.include_tour %}tour/05_training_loop.py (the five steps on toy data) -> {% endif %}this file -> engines/fabric.py (this loop under Lightning
Fabric: `diff engines/minimal.py engines/fabric.py` is Fabric's conversion and nothing else) -> engines/raw.py
(everything lightning.Trainer does, by hand) -> engines/lightning.py (the Trainer itself).
"""

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from ..core import task
from ..core.data import DataPipeline
from ..run import console
from ..run.checkpoint import (
    get_rng_state,
    initial_model,
    load_checkpoint,
    load_for_resume,
    model_state_dict,
    save_checkpoint,
    set_rng_state,
)
from ..run.config_rules import check_rung
from ..run.device import apply as apply_device_settings
from ..run.device import on_cuda, recorded
from ..watching import loggers, summaries

ENGINE = "minimal"
# What this rung implements of the settings configs/ may change (run/config_rules.py NEUTRAL; besides the trainer's
# accelerator, max_epochs, log_every_n_steps and enable_progress_bar): any other is refused by name.
IMPLEMENTED_KEYS = {"trainer.devices", "trainer.benchmark", "matmul_precision", "compile", "data.loader"}
IMPLEMENTED_TRAINER_KEYS = {key.removeprefix("trainer.") for key in IMPLEMENTED_KEYS if key.startswith("trainer.")}
# What the next rung, engine=fabric, adds: named first in their refusals here.
FABRIC_ADDS = {"trainer.precision", "trainer.strategy", "trainer.num_nodes"}


def check_config(cfg: DictConfig) -> None:
    check_rung(cfg, ENGINE, IMPLEMENTED_KEYS, instead=dict.fromkeys(FABRIC_ADDS, "fabric"))


def fit(cfg: DictConfig, run_dir: Path, ckpt_path: Path | None = None) -> dict[str, Any]:
    """Train with a validation pass per epoch, then test with the best weights. Returns the final metrics."""
    check_config(cfg)
    trainer, checkpoints = cfg.trainer, run_dir / "checkpoints"
    monitor, mode = cfg.callbacks.model_checkpoint.monitor, cfg.callbacks.model_checkpoint.mode

    # The device trainer.accelerator names, and its speed settings (run/device.py).
    mps = trainer.accelerator == "mps" or (trainer.accelerator == "auto" and torch.backends.mps.is_available())
    device = torch.device("cuda" if on_cuda(trainer.accelerator) else "mps" if mps else "cpu")
    settings = apply_device_settings(cfg, device.type == "cuda")
    if settings.benchmark is not None:
        torch.backends.cudnn.benchmark = settings.benchmark

    # The data (core/data.py): the seeded split; each epoch's order a function of (seed, epoch).
    data = DataPipeline(cfg.data, seed=cfg.seed, batch_limits=trainer, device=device)
    data.prepare_data()
    data.setup("fit")
    train_loader, val_loader = data.train_dataloader(), data.val_dataloader()

    # The model, its optimizer and its schedule: the same in every engine (core/task.py).
    model = initial_model(cfg).to(device)
    total_steps = trainer.max_epochs * len(train_loader)
    optimizer, schedule = task.configure_optimizers(cfg, model, total_steps)

    # Where the run stands: from the start, or where its last.ckpt left it.
    first_epoch, global_step, best_score = 0, 0, None
    if ckpt_path is not None:
        state = load_for_resume(ckpt_path, ENGINE, model)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if schedule:
            task.check_resumable(state["scheduler"], total_steps)
            schedule.scheduler.load_state_dict(state["scheduler"])
        first_epoch, global_step, best_score = (
            state["progress"][key] for key in ("epoch", "global_step", "best_score")
        )
        set_rng_state(state["rng"])  # the dropout masks the uninterrupted run draws
    tensorboard = loggers.tensorboard_dir(cfg, run_dir)
    writer = SummaryWriter(tensorboard, purge_step=global_step or None) if tensorboard else summaries.NullWriter()
    config_yaml = OmegaConf.to_yaml(cfg)  # in every checkpoint: evaluate.py and the other tools read it
    loss, val, epoch_times = torch.tensor(float("nan")), {}, []

    # Plain values for what every step reads (a config lookup costs a thousand times an attribute's).
    label_smoothing, log_every_n_steps = cfg.loss.label_smoothing, trainer.log_every_n_steps
    train_started_at = time.perf_counter()
    for epoch in range(first_epoch, trainer.max_epochs):
        epoch_started = time.perf_counter()
        train_loader.sampler.set_epoch(epoch)
        model.train()
        quiet = not console.progress_bar_enabled(trainer)  # a progress bar on a terminal only
        for inputs, targets in tqdm(train_loader, desc=f"Epoch {epoch}", leave=False, disable=quiet):
            inputs, targets = inputs.to(device), targets.to(device)
            loss = task.training_step(model, (inputs, targets), label_smoothing)  # forward, loss
            loss.backward()  # backward
            lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
            optimizer.step()  # step
            optimizer.zero_grad(set_to_none=True)  # zero_grad
            if schedule and schedule.interval == "step":
                schedule.scheduler.step()
            global_step += 1
            if global_step % log_every_n_steps == 0:
                log(writer, {"train/loss": loss.item(), "lr": lr, "epoch": epoch}, global_step - 1)

        val = evaluate(model, val_loader, device)
        log(writer, {"val/loss": val["loss"], "val/acc": val["acc"], "epoch": epoch}, global_step - 1)
        if schedule and schedule.interval == "epoch":  # after validation
            if isinstance(schedule.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                schedule.scheduler.step(val[schedule.monitor.removeprefix("val/")])  # it reads a validation metric
            else:
                schedule.scheduler.step()
        epoch_times.append(time.perf_counter() - epoch_started)

        # best.ckpt: the weights of the best epoch by `monitor`; last.ckpt: everything a resume needs.
        score = val[monitor.removeprefix("val/")]
        if best_score is None or (score > best_score if mode == "max" else score < best_score):
            best_score = score
            best = {"engine": ENGINE, "model": model.state_dict(), "config": config_yaml, "epoch": epoch}
            save_checkpoint(best | {"global_step": global_step, monitor: score}, checkpoints / "best.ckpt")
        last = {
            "engine": ENGINE,
            "model": model.state_dict(),
            "config": config_yaml,
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.scheduler.state_dict() if schedule else None,
            "progress": {"epoch": epoch + 1, "global_step": global_step, "best_score": best_score},
            "rng": get_rng_state(),
        }
        save_checkpoint(last, checkpoints / "last.ckpt")
        console.print_epoch(epoch, {"train/loss": loss.item(), "val/loss": val["loss"], "val/acc": val["acc"]})

    # The test set, with the best weights.
    if (checkpoints / "best.ckpt").is_file():
        model.load_state_dict(model_state_dict(load_checkpoint(checkpoints / "best.ckpt")))
    data.setup("test")
    test = evaluate(model, data.test_dataloader(), device)
    log(writer, {"test/loss": test["loss"], "test/acc": test["acc"], "epoch": trainer.max_epochs}, global_step)
    writer.close()
    return {
        "device": str(device),
        "epochs": trainer.max_epochs,
        "global_step": global_step,
        "train/loss": loss.item(),
        **{f"val/{key}": value for key, value in val.items()},
        "best_score": best_score,
        "monitor": monitor,
        **{f"test/{key}": value for key, value in test.items()},
        "epoch_times_s": [round(seconds, 4) for seconds in epoch_times],
        "train_started_at": train_started_at,
        **recorded(settings, train_loader),
    }


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Any, device: torch.device) -> dict[str, float]:
    """The mean loss over the samples and the accuracy, in eval mode (dropout off, batch-norm running statistics)."""
    model.eval()
    loss_sum, correct, count = (torch.zeros((), device=device) for _ in range(3))
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), targets.to(device)
        batch_loss_sum, logits = task.evaluation_step(model, (inputs, targets))
        loss_sum += batch_loss_sum
        correct += task.count_correct(logits, targets)
        count += len(targets)
    return {"loss": (loss_sum / count).item(), "acc": (correct / count).item()}


def log(writer: SummaryWriter, metrics: dict[str, float], step: int) -> None:
    """TensorBoard scalars, under the tags and steps of every engine."""
    for tag, value in metrics.items():
        writer.add_scalar(tag, value, step)
