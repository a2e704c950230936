"""The ladder: engine=minimal, engine=fabric, engine=raw and engine=lightning train the default run to the same
numbers; minimal and fabric refuse by name what they leave out, resume exactly, and write checkpoints that
evaluate.py{% if cookiecutter.include_deployment %}, export.py and predict.py{% endif %} take; fabric also under trainer=ddp_cpu.

CPU, float32: every logged step within 1e-6 and the final weights bitwise equal.
"""

import re

import pytest
import torch
from conftest import CONFIG_DIR, PROJECT_ROOT, assert_same_curves, compose_train, run_dirs, run_train, scalars
from hydra import compose, initialize_config_dir
from in_process import RUNGS, train_rung, weights

from {{ cookiecutter.package }}.core.errors import UserError
from {{ cookiecutter.package }}.core.models import build_model
from {{ cookiecutter.package }}.engines import fabric, minimal
from {{ cookiecutter.package }}.run.checkpoint import load_checkpoint, load_for_resume, written_by
from {{ cookiecutter.package }}.run.config_rules import RUNG_TRAINER_KEYS
from {{ cookiecutter.package }}.workflows.evaluation import evaluate
from {{ cookiecutter.package }}.workflows.launch import check_config, check_engine

LOWER_RUNGS = {"minimal": minimal, "fabric": fabric}
TAGS = ("train/loss", "lr", "val/loss", "val/acc", "test/loss", "test/acc", "epoch")
DDP_RUN = [
    "trainer=ddp_cpu",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
]


@pytest.mark.slow
def test_every_rung_trains_the_default_run_to_the_same_numbers(tmp_path):
    results = {engine: train_rung(engine, tmp_path / engine)[1] for engine in RUNGS}
    curves = {engine: scalars(tmp_path / engine) for engine in RUNGS}
    final = {engine: weights(tmp_path / engine) for engine in RUNGS}
    for engine in ("fabric", "raw", "lightning"):
        assert_same_curves(curves["minimal"], curves[engine], TAGS)
        assert [k for k in final["minimal"] if not torch.equal(final["minimal"][k], final[engine][k])] == [], engine
        for key in ("global_step", "epochs", "val/acc", "test/acc", "best_score"):
            assert results[engine][key] == results["minimal"][key], (engine, key)
    assert len(curves["minimal"]["train/loss"]) == results["minimal"]["global_step"] > 2
    assert set(results["minimal"]) == set(results["fabric"]) == set(results["raw"]) - {"train/grad_norm"}


def test_minimal_and_fabric_train_one_short_epoch_to_raws_numbers(tmp_path):
    """The fast tier's check of the two lower rungs (the four-engine default run above is in the full tier)."""
    short = ["trainer.max_epochs=1", "model=mlp", "data.batch_size=256"]
    results = {engine: train_rung(engine, tmp_path / engine, short)[1] for engine in ("minimal", "fabric", "raw")}
    for engine in ("minimal", "fabric"):
        assert_same_curves(scalars(tmp_path / "raw"), scalars(tmp_path / engine), TAGS)
        raw_weights, rung_weights = weights(tmp_path / "raw"), weights(tmp_path / engine)
        assert [k for k in raw_weights if not torch.equal(raw_weights[k], rung_weights[k])] == [], engine
        assert results[engine]["test/acc"] == results["raw"]["test/acc"]


@pytest.mark.slow
def test_fabric_under_ddp_cpu_gives_the_numbers_of_raw(log_dir):
    finished = {engine: run_train(log_dir, f"engine={engine}", *DDP_RUN, timeout=600) for engine in ("fabric", "raw")}
    for engine, result in finished.items():
        assert result.returncode == 0, f"engine={engine}\n{result.stdout}\n{result.stderr}"
    [fabric_run], [raw_run] = run_dirs(log_dir, "fabric"), run_dirs(log_dir, "raw")
    assert_same_curves(scalars(raw_run), scalars(fabric_run), TAGS)
    raw_weights, fabric_weights = weights(raw_run), weights(fabric_run)
    assert [k for k in raw_weights if not torch.equal(raw_weights[k], fabric_weights[k])] == []
    assert written_by(load_checkpoint(fabric_run / "checkpoints" / "last.ckpt")) == "fabric"


REFUSED = {
    "trainer.limit_train_batches=3": "trainer.limit_train_batches=3",
    "trainer.accumulate_grad_batches=2": "trainer.accumulate_grad_batches=2",
    "trainer.gradient_clip_val=0.5": "trainer.gradient_clip_val=0.5",
    "debug=fdr": "trainer.fast_dev_run=1",
    "debug=anomaly": "debug.detect_anomaly=true",
    "debug=profiler": "trainer.limit_train_batches=10",  # the first of the keys it sets
    "callbacks=early_stopping": "callbacks.early_stopping={",
    "logger=csv": "logger=csv",
    "logger=many": "logger=csv",
    "channels_last=true": "channels_last=true",
    "logger.tensorboard.images=true": "logger.tensorboard.images=true",  # the figures: raw and lightning
    "logger.tensorboard.histogram_every_n_epochs=2": "logger.tensorboard.histogram_every_n_epochs=2",
    "+trainer.detect_anomaly=true": "trainer.detect_anomaly=true",
}


@pytest.mark.parametrize("engine", ["minimal", "fabric"])
@pytest.mark.parametrize("override", REFUSED)
def test_what_a_rung_leaves_out_is_refused_by_name(engine, override):
    cfg = compose_train([f"engine={engine}", override])
    check_config(cfg)  # a valid value: the rung refuses it, not the rules
    with pytest.raises(UserError, match=f"^{re.escape(REFUSED[override])}.* is not implemented by engine={engine} "):
        check_engine(cfg)


def test_minimal_names_fabric_for_what_fabric_adds_and_fabric_refuses_the_tensor_loader():
    for override, key in (("trainer=ddp_cpu", "trainer.strategy=ddp"), ("trainer.precision=bf16-mixed", "")):
        with pytest.raises(UserError, match=f"{key}.*: use engine=fabric, engine=raw or engine=lightning$"):
            check_engine(compose_train(["engine=minimal", override]))
        check_engine(compose_train(["engine=fabric", override]))
    with pytest.raises(UserError, match="data.loader=tensor .*: use engine=minimal, engine=raw or engine=lightning"):
        check_engine(compose_train(["engine=fabric", "data.loader=tensor"]))
    check_engine(compose_train(["engine=minimal", "data.loader=tensor", "logger=none"]))
    assert fabric.IMPLEMENTED_KEYS - minimal.IMPLEMENTED_KEYS == minimal.FABRIC_ADDS
    assert minimal.IMPLEMENTED_TRAINER_KEYS < fabric.IMPLEMENTED_TRAINER_KEYS


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["minimal", "fabric"])
def test_a_refused_run_is_one_line_and_leaves_no_folder(log_dir, engine):
    result = run_train(log_dir, f"engine={engine}", "trainer.accumulate_grad_batches=2")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: trainer.accumulate_grad_batches=2 is not implemented by engine={engine} (it implements: "
        + ", ".join(sorted({*LOWER_RUNGS[engine].IMPLEMENTED_KEYS, *(f"trainer.{key}" for key in RUNG_TRAINER_KEYS)}))
        + "): use engine=raw or engine=lightning"
    ]
    assert not log_dir.exists()


@pytest.mark.parametrize("engine", ["minimal", "fabric"])
def test_a_resume_from_last_ckpt_ends_with_the_uninterrupted_runs_weights(tmp_path, engine):
    """Dropout, an epoch scheduler: 1 epoch, stop, resume to 3 == 3 straight (bitwise), with the same validations."""
    common = ["model=mlp", "model.dropout=0.3", "scheduler=cosine", "scheduler.T_max=3", "data.batch_size=256"]
    _, straight_metrics = train_rung(engine, tmp_path / "straight", [*common, "trainer.max_epochs=3"])
    train_rung(engine, tmp_path / "resumed", [*common, "trainer.max_epochs=1"])
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    _, metrics = train_rung(engine, tmp_path / "resumed", [*common, "trainer.max_epochs=3"], ckpt_path=last)
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert [k for k in straight if not torch.equal(straight[k], resumed[k])] == []
    assert scalars(tmp_path / "resumed")["val/acc"] == scalars(tmp_path / "straight")["val/acc"]
    assert (metrics["epochs"], metrics["global_step"]) == (3, straight_metrics["global_step"])
    other = "fabric" if engine == "minimal" else "minimal"  # launch.train's check before either engine resumes
    with pytest.raises(UserError, match=f"was written by engine={engine}: resume it with that engine"):
        load_for_resume(last, other, build_model(compose_train(common).model))


def compose_workflow(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["minimal", "fabric"])
def test_a_rungs_checkpoints_go_through_every_tool(tmp_path, engine, capsys):
    _, results = train_rung(engine, tmp_path / "run", ["trainer.max_epochs=1"])
    checkpoints = tmp_path / "run" / "checkpoints"
    for name in ("best.ckpt", "last.ckpt"):
        overrides = [f"engine={engine}", f"ckpt_path={checkpoints / name}", f"paths.log_dir={tmp_path / 'logs'}"]
        evaluated = evaluate(compose_workflow("eval", overrides), tmp_path / f"eval-{name}", overrides)
        assert evaluated["written_by"] == engine
        assert evaluated["test/acc"] == results["test/acc"]  # one epoch: the best weights are the last ones
    # bake: if cookiecutter.include_deployment
    import numpy as np

    from {{ cookiecutter.package }}.workflows.exporting import export
    from {{ cookiecutter.package }}.workflows.prediction import predict

    exported = tmp_path / "export"
    exported.mkdir()  # Hydra's run folder
    export(compose_workflow("export", [f"ckpt_path={checkpoints / 'best.ckpt'}", "format=torch_export"]), exported)
    images = tmp_path / "images.npy"
    np.save(images, np.random.default_rng(0).random((3, 8, 8)).astype(np.float32))
    probabilities = []
    for model_path in (exported / "model.pt2", checkpoints / "best.ckpt", checkpoints / "last.ckpt"):
        (tmp_path / "predict").mkdir(exist_ok=True)
        cfg = compose_workflow("predict", [f"model_path={model_path}", f"inputs={images}"])
        predicted, refused = predict(cfg, tmp_path / "predict")
        assert len(predicted) == 3 and refused == []
        probabilities.append([list(row["probabilities"].values()) for row in predicted])
    assert np.abs(np.array(probabilities) - probabilities[1]).max() <= 1e-5  # one epoch: best.ckpt is last.ckpt
    # bake: endif
    capsys.readouterr()


def test_the_ladder_is_in_the_engine_config_group():
    assert {path.stem for path in (PROJECT_ROOT / "configs" / "engine").glob("*.yaml")} == set(RUNGS)
    assert all(compose_train([f"engine={engine}"]).engine.name == engine for engine in RUNGS)
