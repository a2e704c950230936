"""The debug presets of configs/debug/ (Lightning's Trainer debugging flags), the same in both engines.

debug=fdr (fast_dev_run), debug=limit (limit_*_batches), debug=overfit (overfit_batches) and val_check_interval:
engine=lightning passes them to lightning.Trainer, engine=raw implements them by hand (init_debugging_flags,
resolve_overfit_batches, val_check_batch); in-process, as tests/test_parity.py, number for number.
"""

import contextlib
import io
import json

import pytest
import torch
from conftest import assert_same_curves, compose_train, scalars

from {{ cookiecutter.package }}.core import task
from {{ cookiecutter.package }}.core.data import DataPipeline
from {{ cookiecutter.package }}.core.errors import UserError
from {{ cookiecutter.package }}.engines import lightning as lightning_engine
from {{ cookiecutter.package }}.engines import raw as raw_engine
from {{ cookiecutter.package }}.run.checkpoint import load_checkpoint, model_state_dict
from {{ cookiecutter.package }}.run.config_rules import validate
from {{ cookiecutter.package }}.workflows.launch import seed_everything

ENGINES = {"raw": raw_engine.fit, "lightning": lightning_engine.fit}
FAST = ["trainer.deterministic=true", "trainer.enable_progress_bar=false", "model=mlp"]


def train(engine, run_dir, overrides, base=()):
    keys = {override.split("=")[0] for override in overrides}
    cfg = compose_train([f"engine={engine}", *(o for o in (*FAST, *base) if o.split("=")[0] not in keys), *overrides])
    validate(cfg)
    seed_everything(cfg.seed)  # what launch.train does before either engine
    with contextlib.redirect_stdout(io.StringIO()):
        return ENGINES[engine](cfg, run_dir)


def weights(run_dir, name="last.ckpt"):
    return model_state_dict(load_checkpoint(run_dir / "checkpoints" / name))


@pytest.mark.parametrize("preset", ["fdr", "limit", "overfit", "profiler", "anomaly", "none"])
def test_each_debug_preset_composes_passes_validation_and_both_engines_accept_it(preset):
    cfg = compose_train([f"debug={preset}"])
    validate(cfg)
    raw_engine.check_trainer_keys(cfg.trainer)  # raw implements every key the presets set
    assert cfg.debug.detect_anomaly is (preset == "anomaly")
    assert lightning_engine.trainer_arguments(cfg)["fast_dev_run"] == (1 if preset == "fdr" else False)


def test_fast_dev_run_takes_one_step_the_same_in_both_engines_and_writes_nothing(tmp_path):
    results = {engine: train(engine, tmp_path / engine, ["debug=fdr"]) for engine in ENGINES}
    for engine, result in results.items():
        assert (result["epochs"], result["global_step"], result["best_score"]) == (1, 1, None), engine
        files = [p.relative_to(tmp_path).as_posix() for p in (tmp_path / engine).rglob("*") if p.is_file()]
        assert files == [], f"{engine} wrote {files}"  # no TensorBoard events, no checkpoints
    raw, lit = results["raw"], results["lightning"]
    for key in ("train/loss", "val/loss", "val/acc", "test/loss", "test/acc"):  # after the one step
        assert raw[key] == pytest.approx(lit[key], abs=1e-6), key


def test_fast_dev_run_n_runs_n_batches_of_each_split(tmp_path, monkeypatch):
    seen = {"train": 0, "eval": 0}
    training_step, evaluation_step = task.training_step, task.evaluation_step
    monkeypatch.setattr(
        task, "training_step", lambda *a: (seen.__setitem__("train", seen["train"] + 1), training_step(*a))[1]
    )
    monkeypatch.setattr(
        task, "evaluation_step", lambda *a: (seen.__setitem__("eval", seen["eval"] + 1), evaluation_step(*a))[1]
    )
    result = train("raw", tmp_path, ["trainer.fast_dev_run=3", "trainer.max_epochs=5", "trainer.limit_val_batches=1"])
    assert (result["epochs"], result["global_step"], seen) == (1, 3, {"train": 3, "eval": 6})  # 3 val, 3 test


def test_debug_limit_is_a_short_run_with_its_outputs_in_both_engines(tmp_path):
    results = {engine: train(engine, tmp_path / engine, ["debug=limit"]) for engine in ENGINES}
    raw, lit = scalars(tmp_path / "raw"), scalars(tmp_path / "lightning")
    assert_same_curves(raw, lit, ("train/loss", "val/loss", "val/acc", "test/acc"))
    assert [step for step, _ in raw["val/loss"]] == [4, 9]  # 2 epochs of 5 batches
    for engine, result in results.items():
        assert (result["epochs"], result["global_step"]) == (2, 10), engine
        assert (tmp_path / engine / "checkpoints" / "last.ckpt").is_file()


def record_training_targets(monkeypatch) -> list[torch.Tensor]:
    targets = []
    training_step = task.training_step

    def recording(model, batch, *args):
        targets.append(batch[1].clone())
        return training_step(model, batch, *args)

    monkeypatch.setattr(task, "training_step", recording)  # both engines call task.training_step
    return targets


@pytest.mark.parametrize("engine", ENGINES)
def test_overfit_batches_trains_on_the_same_first_batches_every_epoch(tmp_path, monkeypatch, engine):
    targets = record_training_targets(monkeypatch)
    train(engine, tmp_path, ["debug=overfit", "trainer.max_epochs=3"])
    cfg = compose_train([])
    data = DataPipeline(cfg.data, seed=cfg.seed)
    data.setup()
    first = torch.stack([data.train_set[i][1] for i in range(2 * cfg.data.batch_size)])  # in order: no shuffling
    assert len(targets) == 6
    assert all(torch.equal(torch.cat(targets[epoch * 2 : epoch * 2 + 2]), first) for epoch in range(3))


def test_overfit_batches_gives_the_same_per_step_losses_in_both_engines(tmp_path):
    results = {
        engine: train(engine, tmp_path / engine, ["debug=overfit", "trainer.max_epochs=4"]) for engine in ENGINES
    }
    raw, lit = scalars(tmp_path / "raw"), scalars(tmp_path / "lightning")
    assert_same_curves(raw, lit, ("train/loss", "lr", "val/loss", "val/acc", "test/acc"))
    assert len(raw["train/loss"]) == 8 and [step for step, _ in raw["val/loss"]] == [1, 3, 5, 7]
    raw_weights, lit_weights = weights(tmp_path / "raw"), weights(tmp_path / "lightning")
    assert all(torch.allclose(raw_weights[k], lit_weights[k], atol=1e-6) for k in raw_weights)
    assert results["raw"]["global_step"] == results["lightning"]["global_step"] == 8


def test_debug_overfit_drives_the_training_loss_near_zero(tmp_path):
    """30 steps on the same 2 batches (the preset's 60 epochs under OneCycle get to about 0.002; a constant rate
    gets there sooner)."""
    train("raw", tmp_path, ["debug=overfit", "trainer.max_epochs=15", "scheduler=none"])
    losses = [value for _, value in scalars(tmp_path)["train/loss"]]
    assert losses[0] > 2 and losses[-1] < 0.05, (losses[0], losses[-1])


VAL_CHECK_CASES = {
    "every-3-batches": ["trainer.val_check_interval=3"],
    "half-an-epoch-of-5": ["trainer.val_check_interval=0.5", "trainer.limit_train_batches=5"],  # after 2 and 4
    "every-4-accumulating-2": ["trainer.val_check_interval=4", "trainer.accumulate_grad_batches=2"],
}


@pytest.mark.parametrize("case", VAL_CHECK_CASES)
def test_val_check_interval_validates_at_the_same_steps_in_both_engines(tmp_path, case):
    base = [
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=6",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        "trainer.log_every_n_steps=1",
    ]
    results = {engine: train(engine, tmp_path / engine, VAL_CHECK_CASES[case], base) for engine in ENGINES}
    raw, lit = scalars(tmp_path / "raw"), scalars(tmp_path / "lightning")
    assert set(raw) == set(lit)
    assert_same_curves(raw, lit, ("train/loss", "val/loss", "val/acc", "test/acc", "epoch"))
    expected = {"every-3-batches": [2, 5, 8, 11], "half-an-epoch-of-5": [1, 3, 6, 8], "every-4-accumulating-2": [1, 4]}[
        case
    ]
    assert [step for step, _ in raw["val/loss"]] == expected
    for name in ("last.ckpt", "best.ckpt"):  # written after the validations, as Lightning's ModelCheckpoint
        raw_weights, lit_weights = weights(tmp_path / "raw", name), weights(tmp_path / "lightning", name)
        assert all(torch.allclose(raw_weights[k], lit_weights[k], atol=1e-6) for k in raw_weights), name
    for key in ("val/acc", "test/acc", "global_step", "epochs", "best_score"):
        assert results["raw"][key] == pytest.approx(results["lightning"][key], abs=1e-6), key


def profiled(trace) -> tuple[set[str], int]:
    """What a Chrome trace recorded: torch.profiler's ProfilerStep#N markers, and the training steps (backward
    passes through the model's first Linear layer)."""
    names = [event.get("name", "") for event in json.loads(trace.read_text())["traceEvents"]]
    backward = sum(name == "autograd::engine::evaluate_function: AddmmBackward0" for name in names)
    return {name for name in names if name.startswith("ProfilerStep#")}, backward // 3  # model=mlp: 3 Linear


def test_debug_profiler_writes_a_trace_of_the_same_training_steps_in_both_engines(tmp_path):
    """The same schedule (warm up in step 1, record steps 2 to 4, counted as Lightning counts), a Chrome trace of
    the training steps in <run>/tensorboard/ from each engine. Lightning's sanity-check validation runs on the same
    profiler before training and keeps it recording through the warm-up step: one more step in its trace."""
    recorded = {}
    for engine in ENGINES:
        train(engine, tmp_path / engine, ["debug=profiler", "trainer.limit_train_batches=6"])
        [trace] = (tmp_path / engine / "tensorboard").glob("fit*training_step.*.pt.trace.json")
        recorded[engine] = profiled(trace)
    (raw_markers, raw_steps), (lightning_markers, lightning_steps) = recorded["raw"], recorded["lightning"]
    assert raw_steps == 3 and lightning_steps in (3, 4), recorded
    assert raw_markers == {"ProfilerStep#1", "ProfilerStep#2", "ProfilerStep#3"} <= lightning_markers, recorded


def test_raw_refuses_the_lightning_only_profilers(tmp_path):
    with pytest.raises(UserError, match="trainer.profiler=simple is not implemented by engine=raw"):
        train(
            "raw",
            tmp_path,
            [
                "trainer.profiler=simple",
                "trainer.max_epochs=1",
                "trainer.limit_train_batches=1",
                "trainer.limit_val_batches=1",
                "trainer.limit_test_batches=1",
            ],
        )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["trainer.val_check_interval=7", "trainer.limit_train_batches=6"],
            "trainer.val_check_interval=7 is not valid here: it must be at most the number of training batches (6)",
        ),
        (
            ["trainer.val_check_interval=3", "trainer.accumulate_grad_batches=2", "trainer.limit_train_batches=6"],
            "trainer.val_check_interval=3 (every 3 batches) with trainer.accumulate_grad_batches=2 is not implemented",
        ),
    ],
)
def test_raw_refuses_a_val_check_interval_it_cannot_follow(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train("raw", tmp_path, overrides)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.fast_dev_run=-1", "trainer.fast_dev_run=-1 is not valid: false, true (1 batch) or a whole number"),
        ("trainer.fast_dev_run=0.5", "trainer.fast_dev_run=0.5 is not valid"),
        ("trainer.overfit_batches=-1", "trainer.overfit_batches=-1 is not valid: 0 (off), a whole number of batches"),
        ("trainer.overfit_batches=1.5", "trainer.overfit_batches=1.5 is not valid"),
        ("trainer.val_check_interval=0", "trainer.val_check_interval=0 is not valid: null (at the end of each epoch)"),
        ("trainer.val_check_interval=1.5", "trainer.val_check_interval=1.5 is not valid"),
        ("trainer.profiler=fast", "trainer.profiler=fast is not valid: null (off), pytorch"),
    ],
)
def test_a_bad_debugging_value_is_one_line(override, message):
    with pytest.raises(UserError) as refused:
        validate(compose_train([override]))
    assert str(refused.value).startswith(message), str(refused.value)
