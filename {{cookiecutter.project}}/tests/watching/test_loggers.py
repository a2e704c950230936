"""configs/logger/: CSV gets the same metrics at the same steps from both engines, read back from the file; hparams
and the final metrics reach it; logger=none trains and logs nothing; a resume continues the log.{% if cookiecutter.include_extra_loggers %}
MLflow and W&B: test_extra_loggers.py.{% endif %}"""

import csv
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import SHORT_RUN, compose_train, run_dirs, run_script, run_train

from {{ cookiecutter.package }}.core.errors import UserError
from {{ cookiecutter.package }}.watching import loggers, summaries

Logged = dict[tuple[str, int], float]  # (key, step) -> value
EXPECTED_KEYS = {"train/loss", "train/grad_norm", "lr", "epoch", "val/loss", "val/acc", "test/loss", "test/acc"}


def from_csv(run_dir: Path) -> Logged:
    with (run_dir / "csv" / "metrics.csv").open(newline="") as file:
        return {
            (key, int(row["step"])): float(value)
            for row in csv.DictReader(file)
            for key, value in row.items()
            if key != "step" and value != ""
        }


def assert_same_logs(raw: Logged, lightning: Logged) -> None:
    assert {key for key, _ in raw} >= EXPECTED_KEYS
    assert sorted(raw) == sorted(lightning)
    different = {k: (raw[k], lightning[k]) for k in raw if abs(raw[k] - lightning[k]) > 1e-6}
    assert different == {}


@pytest.fixture(scope="module")
def logged_runs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """One SHORT_RUN of each engine with the CSV logger only (TensorBoard's parity: test_tensorboard), at once, each
    in its own log folder: {engine: (log folder, run folder)}."""
    return short_runs_with(tmp_path_factory.mktemp("loggers"), "logger=csv")


def short_runs_with(root: Path, logger: str) -> dict[str, tuple[Path, Path]]:
    """A SHORT_RUN of engine=raw and engine=lightning with `logger`, at once, each in its own log folder under
    `root`: {engine: (log folder, run folder)}."""

    def run(engine: str) -> tuple[Path, Path]:
        result = run_train(root / engine, f"engine={engine}", *SHORT_RUN, logger)
        assert result.returncode == 0, result.stdout + result.stderr
        return root / engine, run_dirs(root / engine, engine)[0]

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(("raw", "lightning"), pool.map(run, ("raw", "lightning")), strict=True))


@pytest.mark.slow
def test_csv_rows_are_the_same_in_both_engines(logged_runs):
    (_, raw), (_, lightning) = logged_runs["raw"], logged_runs["lightning"]
    assert_same_logs(from_csv(raw), from_csv(lightning))
    assert not (raw / "tensorboard").exists() and not (lightning / "tensorboard").exists()


@pytest.mark.slow
def test_csv_hparams_are_the_run_settings(logged_runs):
    expected = summaries.hparam_values(compose_train(SHORT_RUN))
    for engine, (_, run_dir) in logged_runs.items():
        text = (run_dir / "csv" / "hparams.yaml").read_text()
        assert f"engine: {engine}" in text and f"optimizer.lr: {expected['optimizer.lr']}" in text


@pytest.mark.slow
def test_evaluate_reads_a_run_that_logged_without_tensorboard(logged_runs, tmp_path):
    _, run_dir = logged_runs["raw"]
    result = run_script("evaluate.py", tmp_path, f"ckpt_path={run_dir}/checkpoints/best.ckpt")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(next(tmp_path.glob("eval/*/metrics.json")).read_text())["test/acc"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["raw", "lightning"])
def test_logger_none_trains_and_writes_metrics_and_checkpoints_only(log_dir, engine):
    result = run_train(log_dir, f"engine={engine}", *SHORT_RUN, "logger=none")
    assert result.returncode == 0, result.stdout + result.stderr
    [run_dir] = run_dirs(log_dir, engine)
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "checkpoints", "metrics.json", "train.log"]
    assert json.loads((run_dir / "metrics.json").read_text())["test/acc"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["raw", "lightning"])
def test_a_resume_continues_the_csv_rows(log_dir, engine):
    """Two epochs, then a resume to a third: the rows of all three, once each, in one metrics.csv (Lightning's own
    CSVLogger would have deleted the first rows)."""
    run = [f"engine={engine}", *SHORT_RUN, "logger=csv", "scheduler=none"]
    first = run_train(log_dir, *run)
    assert first.returncode == 0, first.stdout + first.stderr
    [run_dir] = run_dirs(log_dir, engine)
    resumed = run_train(log_dir, *run, "trainer.max_epochs=3", f"ckpt_path={run_dir}/checkpoints/last.ckpt")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert run_dirs(log_dir, engine) == [run_dir]
    rows = from_csv(run_dir)
    assert sorted(step for key, step in rows if key == "train/loss") == list(range(9))  # 3 batches x 3 epochs
    assert sorted(step for key, step in rows if key == "val/acc") == [2, 5, 8]


def test_a_resume_drops_the_csv_rows_logged_after_its_checkpoint(tmp_path):
    cfg = compose_train(["logger=csv"])
    path = tmp_path / "csv" / "metrics.csv"
    path.parent.mkdir()
    path.write_text("epoch,step,train/loss\n" + "".join(f"0,{step},1.0\n" for step in range(8)))
    loggers.prepare_resume(cfg, tmp_path, 5)
    assert [row["step"] for row in csv.DictReader(path.open())] == ["0", "1", "2", "3", "4"]


def test_an_unknown_logger_is_one_line_with_the_accepted_ones():
    with pytest.raises(UserError, match=r"^logger\.neptune is not a logger: use logger= one of tensorboard, csv, "):
        loggers.chosen(compose_train(["+logger.neptune.project=x"]))
