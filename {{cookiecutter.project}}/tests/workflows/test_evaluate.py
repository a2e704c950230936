"""evaluate.py: a checkpoint of either engine, evaluated by either engine, gives back the training run's test/acc
bitwise, in a run folder of its own, and leaves the training run as it was; bad input is one line, no folder."""

import hashlib
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest
import torch
from conftest import CONFIG_DIR, PROJECT_ROOT, run_dirs
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from {{ cookiecutter.package }}.core.errors import UserError
from {{ cookiecutter.package }}.run.rundir import RUN_NAME_FORMAT
from {{ cookiecutter.package }}.workflows.evaluation import evaluate, evaluation_config

ENGINES = ("raw", "lightning")
MATRIX = [(written, engine) for written in ENGINES for engine in ENGINES]  # (checkpoint of, evaluated by)


def run_evaluate(log_dir: Path, *overrides: str, python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`python evaluate.py overrides...` as a user runs it, with its outputs under `log_dir`."""
    command = [sys.executable, *python_flags, "evaluate.py", f"paths.log_dir={log_dir}", *overrides]
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)


def compose_eval(overrides: list[str]) -> DictConfig:
    """configs/eval.yaml composed with `overrides`, as evaluate.py would see it (without the hydra node)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="eval", overrides=overrides)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too) and a hash of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def eval_run(log_dir: Path) -> Path:
    (run,) = [path for path in (log_dir / "eval").iterdir() if path.is_dir()]
    return run


@pytest.fixture(scope="module")
def trained(short_runs) -> dict[str, Path]:
    """The SHORT_RUN of each engine (conftest.short_runs: limit_test_batches=2): {engine: its run folder}."""
    log_dir, results = short_runs
    for engine, result in results.items():
        assert result.returncode == 0, f"{engine}:\n{result.stderr[-3000:]}"
    return {engine: run_dirs(log_dir, engine)[-1] for engine in ENGINES}


@pytest.fixture(scope="module")
def evaluations(trained, tmp_path_factory) -> dict:
    """Each engine's best.ckpt (what its test used) evaluated by each engine, two at a time, each with its own
    log folder; engine=raw under `-X importtime`. The training runs' files are hashed before and after."""
    before = {engine: snapshot(run) for engine, run in trained.items()}

    def evaluate(pair: tuple[str, str]) -> tuple[Path, subprocess.CompletedProcess]:
        written, engine = pair
        log_dir = tmp_path_factory.mktemp(f"eval_{written}_by_{engine}") / "logs"
        flags = ("-X", "importtime") if engine == "raw" else ()
        return log_dir, run_evaluate(
            log_dir,
            f"engine={engine}",
            f"ckpt_path={trained[written] / 'checkpoints' / 'best.ckpt'}",
            python_flags=flags,
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(MATRIX, pool.map(evaluate, MATRIX), strict=True))
    return {"results": results, "before": before, "after": {engine: snapshot(run) for engine, run in trained.items()}}


@pytest.mark.slow
@pytest.mark.parametrize(("written", "engine"), MATRIX)
def test_evaluation_gives_the_training_runs_test_accuracy(written, engine, trained, evaluations):
    log_dir, result = evaluations["results"][written, engine]
    assert result.returncode == 0, result.stderr[-3000:]
    run = eval_run(log_dir)
    datetime.strptime(run.name, RUN_NAME_FORMAT)  # named as train.py's runs
    training = json.loads((trained[written] / "metrics.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/acc"] == training["test/acc"]  # bitwise: the same weights, split and batches
    assert metrics["test/loss"] == pytest.approx(training["test/loss"], abs=1e-6)
    assert metrics["split"] == "test" and metrics["samples"] == 2 * 64  # the run's limit_test_batches=2
    assert (metrics["written_by"], metrics["engine"]) == (written, engine)
    assert metrics["ckpt_path"] == str(trained[written] / "checkpoints" / "best.ckpt")
    matrix = torch.tensor(metrics["confusion_matrix"])
    assert matrix.sum() == 128 and matrix.diag().sum() / 128 == pytest.approx(metrics["test/acc"])
    assert len(metrics["test/per_class_acc"]) == 10
    assert (run / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("test/acc")] == [pytest.approx(metrics["test/acc"])]
    assert {"test/confusion_matrix", "test/misclassified"} <= set(events.Tags()["images"])
    assert OmegaConf.load(run / "tensorboard" / "hparams.yaml").engine.name == engine  # the config evaluated
    if engine == "raw":
        modules = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
        assert "torch" in modules and not {m for m in modules if m.split(".")[0] in ("lightning", "pytorch_lightning")}


@pytest.mark.slow
def test_evaluation_leaves_the_training_runs_unchanged(evaluations):
    assert evaluations["after"] == evaluations["before"]


@pytest.mark.slow
def test_last_evaluates_the_newest_runs_last_checkpoint_on_the_val_split(trained, tmp_path):
    """ckpt_path=last: the newest raw run's last.ckpt, whose weights gave the run's last val/acc."""
    log_dir = tmp_path / "logs"
    run = log_dir / "train" / "raw" / trained["raw"].name
    shutil.copytree(trained["raw"], run)
    result = run_evaluate(log_dir, "engine=raw", "ckpt_path=last", "split=val")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((eval_run(log_dir) / "metrics.json").read_text())
    assert metrics["ckpt_path"] == str(run / "checkpoints" / "last.ckpt")
    assert metrics["split"] == "val" and metrics["samples"] == 2 * 64  # the run's limit_val_batches=2
    assert metrics["val/acc"] == json.loads((run / "metrics.json").read_text())["val/acc"]


def test_overrides_change_the_training_runs_config(tmp_path):
    """Keys on the command line change the training config; the rest is the run's (here its limit_test_batches)."""
    trained = OmegaConf.create(
        {
            "seed": 7,
            "engine": {"name": "lightning"},
            "paths": {"log_dir": "elsewhere"},
            "data": {"batch_size": 64, "val_fraction": 0.2},
            "model": {"channels": [32, 64]},
            "trainer": {"limit_test_batches": 2, "devices": 2, "strategy": "ddp", "num_nodes": 1},
        }
    )
    overrides = ["engine=raw", f"paths.log_dir={tmp_path}", "data.batch_size=256", "model.channels=[8]", "split=val"]
    cfg = compose_eval([*overrides, "ckpt_path=x"])
    merged = evaluation_config(trained, cfg, overrides, Path("x"))
    assert merged.data.batch_size == 256 and merged.data.val_fraction == 0.2 and merged.seed == 7
    assert list(merged.model.channels) == [8] and merged.engine.name == "raw" and merged.split == "val"
    assert merged.paths.log_dir == str(tmp_path) and merged.trainer.limit_test_batches == 2
    assert (merged.trainer.devices, merged.trainer.strategy) == (1, "auto")  # one process


# Each refused as a user sees it (one line, no run folder: evaluate.py's own handling of every UserError)...
REFUSED_COMMANDS = {
    "no ckpt_path": ([], "error: ckpt_path is required"),
    "unknown split": (["ckpt_path=last", "split=train"], "error: split=train is not valid: one of test, val"),
    "not a checkpoint": (["ckpt_path={text}"], "cannot be loaded safely"),
}
# ... and in-process (no interpreter start-up): the messages of the other refusals.
REFUSED_CALLS = {
    "no such file": (["ckpt_path=missing.ckpt"], "ckpt_path=missing.ckpt: no such checkpoint file"),
    "no run for last": (["engine=raw", "ckpt_path=last"], "ckpt_path=last: no run under"),
    "neither engine's": (["ckpt_path={other}"], "is not a checkpoint of either engine"),
    "another model": (["ckpt_path={raw}", "model.channels=[8]"], "holds the weights of another model"),
    "lightning outside its run": (["ckpt_path={moved}"], "holds no config, and there is no"),
    "an experiment": (["ckpt_path={raw}", "experiment=cifar10"], "experiment=cifar10 is not valid here: experiment="),
    "a debug preset": (["ckpt_path={raw}", "debug=limit"], "debug=limit is not valid here: debug= presets how"),
}


@pytest.fixture(scope="module")
def bad_files(trained, tmp_path_factory) -> dict[str, Path]:
    files = tmp_path_factory.mktemp("bad_files")
    (files / "notes.ckpt").write_text("not a checkpoint\n")
    torch.save({"weights": torch.zeros(2)}, files / "other.ckpt")
    shutil.copy(trained["lightning"] / "checkpoints" / "best.ckpt", files / "moved.ckpt")
    return {
        "text": files / "notes.ckpt",
        "other": files / "other.ckpt",
        "moved": files / "moved.ckpt",
        "raw": trained["raw"] / "checkpoints" / "best.ckpt",
    }


@pytest.fixture(scope="module")
def refused(bad_files, tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    def run(case: str) -> tuple[Path, subprocess.CompletedProcess]:
        log_dir = tmp_path_factory.mktemp("refused") / "logs"
        return log_dir, run_evaluate(log_dir, *(o.format(**bad_files) for o in REFUSED_COMMANDS[case][0]))

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(REFUSED_COMMANDS, pool.map(run, REFUSED_COMMANDS), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("case", REFUSED_COMMANDS)
def test_bad_input_is_one_line_and_leaves_no_run_folder(case, refused):
    log_dir, result = refused[case]
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and REFUSED_COMMANDS[case][1] in last, result.stderr[-2000:]
    assert not (log_dir / "eval").exists()  # the refused evaluation's folder is gone


@pytest.mark.parametrize("case", REFUSED_CALLS)
def test_bad_input_is_refused_before_any_output(case, bad_files, tmp_path):
    overrides = [f"paths.log_dir={tmp_path / 'logs'}", *(o.format(**bad_files) for o in REFUSED_CALLS[case][0])]
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(UserError) as refusal:
        evaluate(compose_eval(overrides), run, overrides)
    assert REFUSED_CALLS[case][1] in str(refusal.value) and "\n" not in str(refusal.value)
    assert not any(run.iterdir())


def test_every_global_preset_group_is_refused():
    """A group with an option in `# @package _global_` (it writes across the config) is one evaluate.py refuses,
    and a group's default stays accepted."""
    from {{ cookiecutter.package }}.workflows.evaluation import TRAINING_PRESETS, check_no_training_preset

    global_groups = {
        option.parent.name for option in CONFIG_DIR.glob("*/*.yaml") if "@package _global_" in option.read_text()
    }
    assert global_groups == set(TRAINING_PRESETS)
    check_no_training_preset(["debug=none", "experiment=null", "debug.detect_anomaly=true", "data.batch_size=8"])


@pytest.fixture(scope="module")
def raw_run(tmp_path_factory) -> Path:
    """A short engine=raw run, trained in this process (its checkpoints hold its config)."""
    from in_process import train

    run_dir = tmp_path_factory.mktemp("raw_run")
    train("raw", run_dir, ["trainer.max_epochs=1", "logger=none"])
    return run_dir


@pytest.mark.parametrize("logger", ["none", "csv", "[tensorboard,csv]"])
def test_evaluate_takes_the_logger_choices_of_train_py(raw_run, tmp_path, logger):
    """logger=none, csv, ... as in train.py (evaluate.py refused all but TensorBoard): each engine's evaluation
    logs the same test/* row to the chosen loggers, and TensorBoard events only when TensorBoard is chosen."""
    from {{ cookiecutter.package }}.watching.loggers import read_csv

    rows = {}
    for engine in ENGINES:
        overrides = [f"paths.log_dir={tmp_path / 'logs'}", f"logger={logger}", f"engine={engine}"]
        run = tmp_path / engine
        run.mkdir()
        metrics = evaluate(
            compose_eval([*overrides, f"ckpt_path={raw_run / 'checkpoints' / 'best.ckpt'}"]), run, overrides
        )
        assert (run / "tensorboard").is_dir() == ("tensorboard" in logger), engine
        assert (run / "csv").is_dir() == ("csv" in logger), engine
        if "csv" in logger:
            [row] = read_csv(run / "csv" / "metrics.csv")
            assert float(row["test/acc"]) == metrics["test/acc"] and row["step"] == "0", row
            assert "engine: " in (run / "csv" / "hparams.yaml").read_text()
            rows[engine] = row
    assert rows.get("raw") == rows.get("lightning")
