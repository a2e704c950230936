"""engine=raw and engine=lightning are the same training written two ways: proven number for number.

CPU, float32, deterministic. Lightning's own parity suite compares only the last loss to 5 decimals on GPU;
here every logged step, the final weights and the accuracies are compared.
"""

import json
import re
import signal
import subprocess
import sys

import lightning as L
import pytest
import torch
from conftest import PROJECT_ROOT, assert_same_curves, compose_train, run_dirs, scalars
from in_process import BASE, ENGINES, train, weights
from torch.optim.optimizer import register_optimizer_step_pre_hook

from {{ cookiecutter.package }}.core.data import DataPipeline
from {{ cookiecutter.package }}.core.errors import TrainingStopped, UserError
from {{ cookiecutter.package }}.core.models import build_model
from {{ cookiecutter.package }}.engines import lightning as lightning_engine
from {{ cookiecutter.package }}.engines import raw as raw_engine
from {{ cookiecutter.package }}.run.checkpoint import load_checkpoint

CASES = {
    "sgd-none": ["optimizer=sgd", "scheduler=none"],
    "sgd-onecycle": ["optimizer=sgd", "scheduler=onecycle"],
    "adam-none": ["optimizer=adam", "scheduler=none"],
    "adam-onecycle": ["optimizer=adam", "scheduler=onecycle"],
    "sgd-cosine-clip-accumulate": [
        "optimizer=sgd",
        "scheduler=cosine",
        "trainer.gradient_clip_val=0.5",
        "trainer.accumulate_grad_batches=4",
    ],
    # Logged every third step, stopped by max_steps in the middle of the second epoch.
    "adam-log-every-3-max-steps": [
        "optimizer=adam",
        "scheduler=none",
        "trainer.log_every_n_steps=3",
        "trainer.max_steps=10",
    ],
}


@pytest.mark.parametrize("case", CASES)
def test_engines_agree_step_by_step(tmp_path, case):
    results = {engine: train(engine, tmp_path / engine, CASES[case])[1] for engine in ENGINES}
    raw, lit = scalars(tmp_path / "raw"), scalars(tmp_path / "lightning")
    assert set(raw) == set(lit)
    assert_same_curves(raw, lit, ("train/loss", "lr", "train/grad_norm", "val/loss", "val/acc", "test/acc", "epoch"))
    assert len(raw["train/loss"]) >= 2 * 6 // 4  # two epochs of steps, also with accumulation
    raw_weights, lit_weights = weights(tmp_path / "raw"), weights(tmp_path / "lightning")
    assert all(torch.allclose(raw_weights[k], lit_weights[k], atol=1e-6) for k in raw_weights)
    for key in ("val/acc", "test/acc", "global_step", "epochs"):
        assert results["raw"][key] == results["lightning"][key], key
    assert set(results["raw"]) == set(results["lightning"])


def stopped_and_resumed(engine, tmp_path, common, stopped_epochs, epochs) -> dict:
    """`epochs` straight into tmp_path/straight; `stopped_epochs`, then resumed to `epochs`, into tmp_path/resumed.
    Returns the resumed run's metrics."""
    train(engine, tmp_path / "straight", [*common, f"trainer.max_epochs={epochs}"])
    train(engine, tmp_path / "resumed", [*common, f"trainer.max_epochs={stopped_epochs}"])
    return train(
        engine,
        tmp_path / "resumed",
        [*common, f"trainer.max_epochs={epochs}"],
        ckpt_path=tmp_path / "resumed" / "checkpoints" / "last.ckpt",
    )[1]


def differing_weights(tmp_path) -> list[str]:
    """The tensors whose last.ckpt values differ between tmp_path/straight and tmp_path/resumed."""
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    return [k for k in straight if not torch.equal(straight[k], resumed[k])]


@pytest.mark.parametrize("engine", ENGINES)
def test_resume_is_exact(tmp_path, engine):
    """2 epochs, stop, resume to 4 == 4 straight (final weights, bitwise), with dropout and a scheduler."""
    common = ["model=mlp", "model.dropout=0.3", "scheduler=cosine", "scheduler.T_max=4"]
    metrics = stopped_and_resumed(engine, tmp_path, common, stopped_epochs=2, epochs=4)
    assert (metrics["epochs"], metrics["global_step"]) == (4, 24)
    assert differing_weights(tmp_path) == []


# Step 9 is batch 3 of epoch 1, step 12 its last: the run stops after the step's validation (val_check_interval=3
# has one after batch 3) and, at the epoch's last step, after the epoch's end (epoch 2 then).
STOPS = {
    "SIGTERM": (signal.SIGTERM, 9, 1, []),
    "SIGINT": (signal.SIGINT, 9, 1, []),
    "SIGTERM-before-validation": (signal.SIGTERM, 9, 1, ["trainer.val_check_interval=3"]),
    "SIGTERM-last-batch": (signal.SIGTERM, 12, 2, []),
}


@pytest.mark.parametrize(("signum", "step", "epoch", "overrides"), STOPS.values(), ids=STOPS)
@pytest.mark.parametrize("engine", ENGINES)
def test_a_signal_during_an_epoch_resumes_exactly(tmp_path, engine, signum, step, epoch, overrides):
    """SIGTERM or Ctrl-C in a step: the run stops after that step, and resuming its last.ckpt ends with the
    straight run's weights, bitwise (the same batches, dropout masks, batch-norm counts and schedule) and its
    validations, none lost or repeated."""
    common = ["model.dropout=0.3", "scheduler=onecycle", "trainer.max_epochs=3", *overrides]
    train(engine, tmp_path / "straight", common)
    steps = []

    def signal_in_the_step(optimizer, args, kwargs):  # inside the step: the engines stop after it
        steps.append(1)
        if len(steps) == step:
            signal.raise_signal(signum)

    hook = register_optimizer_step_pre_hook(signal_in_the_step)
    try:
        name = signal.Signals(signum).name
        with pytest.raises(TrainingStopped, match=f"stopped by {name} at epoch {epoch}, step {step};"):
            train(engine, tmp_path / "resumed", common)
    finally:
        hook.remove()
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last).get("progress", load_checkpoint(last))["global_step"] == step
    _, metrics = train(engine, tmp_path / "resumed", common, ckpt_path=last)
    assert (metrics["epochs"], metrics["global_step"]) == (3, 18)
    assert differing_weights(tmp_path) == []
    assert scalars(tmp_path / "resumed")["val/acc"] == scalars(tmp_path / "straight")["val/acc"]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_resume_from_the_validation_at_an_epochs_last_batch_trains_every_later_batch(tmp_path, engine):
    """val_check_interval=0.5 saves last.ckpt after the epoch's last batch, inside the epoch: resuming it runs
    that epoch's end and then the next epochs in full (limit_train_batches=6 of 20: the order's first batches)."""
    common = ["model.dropout=0.3", "scheduler=none", "trainer.val_check_interval=0.5"]
    metrics = stopped_and_resumed(engine, tmp_path, common, stopped_epochs=2, epochs=3)
    assert (metrics["epochs"], metrics["global_step"]) == (3, 18)
    assert differing_weights(tmp_path) == []


def test_weights_are_interchangeable(tmp_path):
    """Each engine's best.ckpt, tested by the other engine, gives the same test accuracy."""
    results = {engine: train(engine, tmp_path / engine, [])[1] for engine in ENGINES}
    cfg = compose_train([*BASE])
    data = DataPipeline(cfg.data, seed=cfg.seed)
    data.setup()

    lightning_weights_in_raw = build_model(cfg.model)
    lightning_weights_in_raw.load_state_dict(weights(tmp_path / "lightning", "best.ckpt"))
    tested = raw_engine.evaluation_loop(
        lightning_weights_in_raw, data.test_dataloader(), 2, torch.device("cpu"), raw_engine.PRECISIONS["32-true"]
    )
    assert tested["acc"] == results["lightning"]["test/acc"]

    raw_weights_in_lightning = lightning_engine.Classifier(build_model(cfg.model), cfg)
    raw_weights_in_lightning.model.load_state_dict(weights(tmp_path / "raw", "best.ckpt"))
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, limit_test_batches=2)
    [tested] = trainer.test(
        raw_weights_in_lightning, datamodule=lightning_engine.DataModule(cfg.data, cfg.seed), verbose=False
    )
    assert tested["test/acc"] == results["raw"]["test/acc"]


@pytest.mark.slow
def test_output_layout_is_the_same_in_both_engines(log_dir):
    layouts, tags, keys = {}, {}, {}
    for engine in ENGINES:
        result = subprocess.run(
            [sys.executable, "train.py", f"paths.log_dir={log_dir}", f"engine={engine}", *BASE],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        [run_dir] = run_dirs(log_dir, engine)
        # TensorBoard writes one events file per writer; Lightning opens a second one for trainer.test.
        layouts[engine] = {
            re.sub(r"events\.out\.tfevents\..*", "events.out.tfevents.*", p.relative_to(run_dir).as_posix())
            for p in run_dir.rglob("*")
            if p.is_file()
        }
        tags[engine] = set(scalars(run_dir))
        keys[engine] = set(json.loads((run_dir / "metrics.json").read_text()))
    assert layouts["raw"] == layouts["lightning"]
    assert tags["raw"] == tags["lightning"] and keys["raw"] == keys["lightning"]


@pytest.mark.parametrize("engine", ENGINES)
def test_non_finite_loss_stops_both_engines_with_the_same_message(tmp_path, monkeypatch, engine):
    from {{ cookiecutter.package }}.core.datasets import digits as data_module

    real = data_module.load_digits_tensors
    monkeypatch.setattr(
        data_module, "load_digits_tensors", lambda: (torch.full_like(real()[0], float("nan")), real()[1])
    )
    with pytest.raises(UserError, match=r"non-finite at epoch 0, step 0: the inputs of that batch were not finite"):
        train(engine, tmp_path, [])
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()  # nothing broken was saved
