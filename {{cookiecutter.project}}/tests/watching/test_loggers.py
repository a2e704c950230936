"""configs/logger/: CSV, MLflow and W&B get the same metrics at the same steps from both engines, read back from
the real backends (a CSV file, an sqlite MLflow store through mlflow's client, W&B's offline run file); hparams and
the final metrics reach each of them; logger=none trains and logs nothing; a resume continues each log."""

import csv
import json
import struct
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


def mlflow_run(run_dir: Path, log_dir: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{(log_dir / 'mlflow.db').resolve()}")
    return client, client.get_run((run_dir / "mlflow_run_id").read_text().strip())


def from_mlflow(run_dir: Path, log_dir: Path) -> Logged:
    client, run = mlflow_run(run_dir, log_dir)
    return {
        (key, metric.step): metric.value
        for key in run.data.metrics
        for metric in client.get_metric_history(run.info.run_id, key)
    }


def wandb_records(run_dir: Path) -> list:
    """The records of W&B's offline run file: a LevelDB-style log (32 KiB blocks of chunks, each with a 7-byte
    header) of protobuf Records, which W&B's own reader (in its Go core) parses the same way."""
    from wandb.proto import wandb_internal_pb2

    [path] = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data, records, pending = path.read_bytes(), [], b""
    assert data[:4] == b":W&B"
    position = 7  # after the file header
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # no room for a chunk header: the block's padding
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def from_wandb(run_dir: Path) -> Logged:
    logged: Logged = {}
    for record in wandb_records(run_dir):
        if record.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            step = row.pop("trainer/global_step")
            logged |= {(key, step): value for key, value in row.items() if not key.startswith("_")}
    return logged


def wandb_config(run_dir: Path) -> dict:
    return {
        item.key: json.loads(item.value_json)
        for record in wandb_records(run_dir)
        if record.WhichOneof("record_type") == "config"
        for item in record.config.update
    }


def assert_same_logs(raw: Logged, lightning: Logged) -> None:
    assert {key for key, _ in raw} >= EXPECTED_KEYS
    assert sorted(raw) == sorted(lightning)
    different = {k: (raw[k], lightning[k]) for k in raw if abs(raw[k] - lightning[k]) > 1e-6}
    assert different == {}


@pytest.fixture(scope="module")
def logged_runs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """One SHORT_RUN of each engine with every logger but TensorBoard (whose parity test_tensorboard checks), at
    once, each in its own log folder (and so its own MLflow store): {engine: (log folder, run folder)}."""
    pytest.importorskip("mlflow", reason="the mlflow extra: pip install -e '.[mlflow]'")
    pytest.importorskip("wandb", reason="the wandb extra: pip install -e '.[wandb]'")
    root = tmp_path_factory.mktemp("loggers")

    def run(engine: str) -> tuple[Path, Path]:
        result = run_train(root / engine, f"engine={engine}", *SHORT_RUN, "logger=[csv,mlflow,wandb]")
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
def test_mlflow_runs_hold_the_same_metrics_params_and_status_in_both_engines(logged_runs):
    assert_same_logs(*(from_mlflow(run_dir, log_dir) for log_dir, run_dir in logged_runs.values()))
    for engine, (log_dir, run_dir) in logged_runs.items():
        _, run = mlflow_run(run_dir, log_dir)
        assert run.info.status == "FINISHED"
        assert run.info.run_name == f"{engine}/{run_dir.name}"
        assert run.data.params["engine"] == engine and run.data.params["optimizer.lr"] == "0.003"


@pytest.mark.slow
def test_wandb_offline_runs_hold_the_same_history_and_config_in_both_engines(logged_runs):
    assert_same_logs(*(from_wandb(run_dir) for _, run_dir in logged_runs.values()))
    expected = summaries.hparam_values(compose_train(SHORT_RUN))
    for engine, (_, run_dir) in logged_runs.items():
        assert wandb_config(run_dir) == {**expected, "engine": engine}


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
def test_a_resume_continues_the_csv_rows_and_the_mlflow_run(log_dir, engine):
    """Two epochs, then a resume to a third: the rows of all three, once each, in one metrics.csv and one MLflow run
    (Lightning's own CSVLogger would have deleted the first rows)."""
    pytest.importorskip("mlflow", reason="the mlflow extra: pip install -e '.[mlflow]'")
    run = [f"engine={engine}", *SHORT_RUN, "logger=[csv,mlflow]", "scheduler=none"]
    first = run_train(log_dir, *run)
    assert first.returncode == 0, first.stdout + first.stderr
    [run_dir] = run_dirs(log_dir, engine)
    run_id = (run_dir / "mlflow_run_id").read_text()
    resumed = run_train(log_dir, *run, "trainer.max_epochs=3", f"ckpt_path={run_dir}/checkpoints/last.ckpt")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert run_dirs(log_dir, engine) == [run_dir] and (run_dir / "mlflow_run_id").read_text() == run_id
    rows = from_csv(run_dir)
    assert sorted(step for key, step in rows if key == "train/loss") == list(range(9))  # 3 batches x 3 epochs
    assert sorted(step for key, step in rows if key == "val/acc") == [2, 5, 8]
    assert sorted(step for key, step in from_mlflow(run_dir, log_dir) if key == "train/loss") == list(range(9))


def test_a_resume_drops_the_csv_rows_logged_after_its_checkpoint(tmp_path):
    cfg = compose_train(["logger=csv"])
    path = tmp_path / "csv" / "metrics.csv"
    path.parent.mkdir()
    path.write_text("epoch,step,train/loss\n" + "".join(f"0,{step},1.0\n" for step in range(8)))
    loggers.prepare_resume(cfg, tmp_path, 5)
    assert [row["step"] for row in csv.DictReader(path.open())] == ["0", "1", "2", "3", "4"]


def test_a_logger_whose_library_is_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(UserError, match=r"^logger=wandb needs the wandb package: pip install -e '\.\[wandb\]'$"):
        loggers.check_installed(compose_train(["logger=[tensorboard,wandb]"]))


def test_an_unknown_logger_is_one_line_with_the_accepted_ones():
    with pytest.raises(UserError, match=r"^logger\.neptune is not a logger: use logger= one of tensorboard, csv, "):
        loggers.chosen(compose_train(["+logger.neptune.project=x"]))
