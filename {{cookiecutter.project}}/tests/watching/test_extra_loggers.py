"""logger=mlflow and logger=wandb: the same metrics at the same steps from both engines, read back from the real
backends (an sqlite MLflow store through mlflow's client, W&B's offline run file); hparams and the final status
reach each of them; a resume continues the MLflow run; a missing library is one line naming its extra."""

import json
import struct
from pathlib import Path

import pytest
from conftest import SHORT_RUN, compose_train, require_extra, run_dirs, run_train
from test_loggers import Logged, assert_same_logs, short_runs_with

from {{ cookiecutter.package }}.core.errors import UserError
from {{ cookiecutter.package }}.watching import loggers, summaries


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


@pytest.fixture(scope="module")
def logged_runs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """One SHORT_RUN of each engine with MLflow and W&B, at once, each in its own log folder (and so its own MLflow
    store): {engine: (log folder, run folder)}."""
    require_extra("mlflow", "wandb")
    return short_runs_with(tmp_path_factory.mktemp("extra_loggers"), "logger=[mlflow,wandb]")


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
@pytest.mark.parametrize("engine", ["raw", "lightning"])
def test_a_resume_continues_the_mlflow_run(log_dir, engine):
    """Two epochs, then a resume to a third: the steps of all three, once each, in one MLflow run."""
    require_extra("mlflow")
    run = [f"engine={engine}", *SHORT_RUN, "logger=mlflow", "scheduler=none"]
    first = run_train(log_dir, *run)
    assert first.returncode == 0, first.stdout + first.stderr
    [run_dir] = run_dirs(log_dir, engine)
    run_id = (run_dir / "mlflow_run_id").read_text()
    resumed = run_train(log_dir, *run, "trainer.max_epochs=3", f"ckpt_path={run_dir}/checkpoints/last.ckpt")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert run_dirs(log_dir, engine) == [run_dir] and (run_dir / "mlflow_run_id").read_text() == run_id
    assert sorted(step for key, step in from_mlflow(run_dir, log_dir) if key == "train/loss") == list(range(9))


def test_a_logger_whose_library_is_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(UserError, match=r"^logger=wandb needs the wandb package: pip install -e '\.\[wandb\]'$"):
        loggers.check_installed(compose_train(["logger=[tensorboard,wandb]"]))
