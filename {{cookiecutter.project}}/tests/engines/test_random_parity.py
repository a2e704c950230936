"""Random trainer settings, both engines: the same numbers, or the same refusal.

Each combination is drawn from the seed of the draw (RANDOM_PARITY_SEED, default 2026) and its own index, so one
failing combination replays alone (its failure prints the seed and the index):
RANDOM_PARITY_SEED=<seed> pytest tests/engines/test_random_parity.py -k 'agree[<index>]'. RANDOM_PARITY_SEED=random
draws a fresh seed to look for the next hole. Both engines run in this process (in_process.train); every TensorBoard
scalar agrees within 1e-6 and the checkpoints' weights within 1e-6, or both engines refuse the combination with the
same UserError. engine=raw may also refuse, by name, a setting it documents as not implemented (a rung refuses what
it does not do); Lightning then runs it, and nothing is compared.
"""

import os
import random

import pytest
import torch
from conftest import assert_same_curves, scalars
from in_process import ENGINES, train, weights

from {{ cookiecutter.package }}.core.errors import UserError
from {{ cookiecutter.package }}.run.checkpoint import load_checkpoint

SEED_OF_THE_DRAW = (
    random.SystemRandom().randrange(10**6)
    if os.environ.get("RANDOM_PARITY_SEED") == "random"
    else int(os.environ.get("RANDOM_PARITY_SEED", "2026"))
)
QUICK, SLOW = 3, 12
MODELS = {
    "cnn": ["model=cnn", "model.channels=[8,16]"],
    "mlp": ["model=mlp", "model.hidden=[32]"],
    "resnet": ["model=resnet", "model.channels=[8,8,16,16]"],
}
CLIPPING = {
    "none": ["trainer.gradient_clip_val=null"],
    "norm": ["trainer.gradient_clip_val=0.5", "trainer.gradient_clip_algorithm=norm"],
    "value": ["trainer.gradient_clip_val=0.05", "trainer.gradient_clip_algorithm=value"],
}


def draw(index: int) -> list[str]:
    """The overrides of combination `index` of this draw."""
    pick = random.Random(f"{SEED_OF_THE_DRAW}-{index}").choice
    max_epochs = pick([2, 3])
    scheduler = pick(["none", "onecycle", "cosine", "step", "plateau"])
    overrides = [
        f"optimizer={pick(['sgd', 'adam', 'adamw', 'rmsprop'])}",
        f"scheduler={scheduler}",
        *MODELS[pick(sorted(MODELS))],
        f"trainer.max_epochs={max_epochs}",
        f"trainer.max_steps={pick([-1, -1, 7])}",
        f"trainer.accumulate_grad_batches={pick([1, 1, 2, 3])}",
        *CLIPPING[pick(sorted(CLIPPING))],
        f"trainer.limit_train_batches={pick([4, 6, 0.2])}",
        f"trainer.limit_val_batches={pick([1, 2])}",
        f"trainer.val_check_interval={pick(['null', 'null', 0.5, 2, 3])}",
        f"trainer.check_val_every_n_epoch={pick([1, 1, 2])}",
        f"trainer.precision={pick(['32-true', '64-true', 'bf16-mixed'])}",
        f"data.batch_size={pick([16, 32, 64])}",
        f"loss.label_smoothing={pick([0.0, 0.1])}",
        f"seed={pick(range(1000))}",
    ]
    if scheduler == "step":
        overrides.append("scheduler.step_size=1")
    if scheduler == "plateau":
        overrides += [f"scheduler.patience={pick([0, 1])}", f"scheduler.monitor={pick(['val/loss', 'val/acc'])}"]
        overrides.append(f"scheduler.mode={'min' if overrides[-1].endswith('loss') else 'max'}")
    if pick([False, True]):
        overrides += ["callbacks=early_stopping", "callbacks.early_stopping.patience=0"]
    return overrides


def outcome(engine: str, run_dir, overrides: list[str]) -> dict | UserError:
    try:
        return train(engine, run_dir, overrides)[1]
    except UserError as refusal:
        return refusal


def check_combination(tmp_path, index: int) -> None:
    overrides = draw(index)
    replay = f"RANDOM_PARITY_SEED={SEED_OF_THE_DRAW}, combination {index}: {' '.join(overrides)}"
    print(replay)
    results = {engine: outcome(engine, tmp_path / engine, overrides) for engine in ENGINES}
    raw, lit = results["raw"], results["lightning"]
    if isinstance(raw, UserError) and "not implemented by engine=raw" in str(raw):
        assert "=" in str(raw).split()[0], f"{replay}: the refusal names no key: {raw}"
        return
    if isinstance(raw, UserError) or isinstance(lit, UserError):
        assert str(raw) == str(lit), f"{replay}: raw: {raw!r}, lightning: {lit!r}"
        return
    raw_curves, lit_curves = scalars(tmp_path / "raw"), scalars(tmp_path / "lightning")
    assert set(raw_curves) == set(lit_curves), replay
    try:
        assert_same_curves(raw_curves, lit_curves, tuple(sorted(raw_curves)))
    except AssertionError as error:
        raise AssertionError(f"{replay}: {error}") from error
    # A run that never validates (max_steps before the first check_val_every_n_epoch) saves no checkpoint.
    saved = {engine: sorted(p.name for p in (tmp_path / engine / "checkpoints").glob("*.ckpt")) for engine in ENGINES}
    assert saved["raw"] == saved["lightning"], f"{replay}: {saved}"
    for name in saved["raw"]:
        raw_weights, lit_weights = weights(tmp_path / "raw", name), weights(tmp_path / "lightning", name)
        differing = [k for k in raw_weights if not torch.allclose(raw_weights[k], lit_weights[k], atol=1e-6)]
        assert differing == [], f"{replay}: {name}'s weights differ: {differing}"
    assert set(raw) == set(lit), replay  # no val/acc in either when no validation ran
    for key in ("val/acc", "test/acc", "global_step", "epochs"):
        assert raw.get(key) == lit.get(key), f"{replay}: {key}"


@pytest.mark.parametrize("index", range(QUICK))
def test_random_trainer_settings_agree(tmp_path, index):
    check_combination(tmp_path, index)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(QUICK, QUICK + SLOW))
def test_more_random_trainer_settings_agree(tmp_path, index):
    check_combination(tmp_path, index)


def plateau_steps_taken(run_dir) -> int:
    """How many times the run's ReduceLROnPlateau stepped (its last_epoch), from last.ckpt of either engine."""
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    [state] = checkpoint["lr_schedulers"] if "lr_schedulers" in checkpoint else [checkpoint["scheduler"]]
    return state["last_epoch"]


@pytest.mark.parametrize("engine", ENGINES)
def test_plateau_steps_only_after_the_epochs_that_validate(tmp_path, engine):
    """ReduceLROnPlateau with validation every 2nd epoch steps after the epochs that validate, in both engines.
    last.ckpt is written by epoch 3's validation, before that epoch's scheduler step: it holds one step, after
    epoch 1 (before, Lightning raised a MisconfigurationException after epoch 0, and engine=raw stepped again after
    epoch 2 on the validation of epoch 1: two)."""
    train(engine, tmp_path, ["scheduler=plateau", "trainer.check_val_every_n_epoch=2", "trainer.max_epochs=4"])
    assert plateau_steps_taken(tmp_path) == 1


def test_plateau_stepped_every_optimizer_step_is_refused_by_name(tmp_path):
    for engine in ENGINES:
        with pytest.raises(UserError, match=r"scheduler.interval=step with scheduler=plateau is not valid"):
            train(engine, tmp_path / engine, ["scheduler=plateau", "scheduler.interval=step"])
