"""Each engine trains for real, as `python train.py` runs it, and leaves the documented outputs."""

import json
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import PROJECT_ROOT, compose_train, run_dirs
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from {{ cookiecutter.package }}.core.errors import UserError
from {{ cookiecutter.package }}.core.models import build_model
from {{ cookiecutter.package }}.engines.raw import fit as raw_fit
from {{ cookiecutter.package }}.run.checkpoint import load_checkpoint, model_state_dict
from {{ cookiecutter.package }}.workflows.launch import train

# Documented in README.md ("Outputs"): the same in both engines.
TAGS = {"train/loss", "val/loss", "val/acc", "test/acc", "test/loss", "lr"}
METRICS_KEYS = {
    "engine",
    "seed",
    "processes",
    "device",
    "epochs",
    "global_step",
    "train/loss",
    "val/loss",
    "val/acc",
    "best_score",
    "monitor",
    "test/loss",
    "test/acc",
    "epoch_times_s",
    "startup_s",
    "wall_time_s",
    "peak_rss_mb",
    "peak_cuda_mb",
    "run_dir",
    "tags",
    "weights_from",
    "matmul_precision",  # the device settings the run trained under (run/device.py)
    "cudnn_benchmark",
    "channels_last",
    "pin_memory",
}


def imported_modules(importtime_stderr: str) -> set[str]:
    """Module names from `python -X importtime` output."""
    return {
        line.rsplit("|", 1)[-1].strip() for line in importtime_stderr.splitlines() if line.startswith("import time:")
    }


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["raw", "lightning"])
def test_engine_trains_and_leaves_documented_outputs(engine, short_runs):
    log_dir, results = short_runs
    result = results[engine]
    assert result.returncode == 0, result.stdout + result.stderr
    [run_dir] = run_dirs(log_dir, engine)
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert TAGS <= set(events.Tags()["scalars"])
    assert len(events.Scalars("train/loss")) == 6  # 2 epochs x 3 batches, log_every_n_steps=1

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == METRICS_KEYS
    assert metrics["engine"] == engine
    assert (metrics["epochs"], metrics["global_step"]) == (2, 6)
    assert 0.0 <= metrics["test/acc"] <= 1.0

    # The best weights load, without unpickling code, into the plain model.
    model = build_model(compose_train().model)
    model.load_state_dict(model_state_dict(load_checkpoint(run_dir / "checkpoints" / "best.ckpt")))

    # Lightning's banners and advice stay off the terminal.
    for noise in ("Tip:", "GPU available", "TPU available", "LeafSpec", "does not have many workers"):
        assert noise not in result.stdout + result.stderr, noise

    if engine == "raw":
        modules = imported_modules(result.stderr)
        assert "torch" in modules  # the -X importtime listing is really there
        assert not {m for m in modules if m.split(".")[0] in ("lightning", "pytorch_lightning")}


@pytest.mark.slow
def test_both_engines_print_the_same_console(short_runs):
    """One line per epoch with the same fields and values, the same final line, nothing else (no model summary)."""
    _, results = short_runs
    number = re.compile(r"-?\d+\.\d+")

    def console(engine: str) -> tuple[list[str], list[float]]:
        lines = [
            re.sub(r" run=\S+", "", line).replace(f"engine={engine}", "engine=E")
            for line in results[engine].stdout.splitlines()
        ]
        lines = [re.sub(r"wall=\S+", "wall=W", line) for line in lines]
        return [number.sub("N", line) for line in lines], [float(x) for line in lines for x in number.findall(line)]

    (raw_lines, raw_values), (lit_lines, lit_values) = console("raw"), console("lightning")
    assert raw_lines == lit_lines
    assert raw_lines == [
        *(f"epoch {epoch}: train/loss N  val/loss N  val/acc N" for epoch in range(2)),
        "engine=E test/acc=N wall=W",
    ]
    assert raw_values == pytest.approx(lit_values, abs=1e-4)


def test_help_answers_without_importing_torch():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "train.py", "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "engine: fabric, lightning, minimal, raw" in result.stdout
    assert "torch" not in imported_modules(result.stderr)


def test_gpu_on_a_machine_without_one_names_the_fix_and_leaves_no_folder(log_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    runs = [
        subprocess.Popen(
            [sys.executable, "train.py", f"paths.log_dir={log_dir}", "engine=raw", "trainer=gpu"],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for run in runs:
        _, stderr = run.communicate(timeout=120)
        assert run.returncode == 1
        assert "trainer.accelerator=cuda needs a CUDA GPU" in stderr and "trainer=cpu" in stderr
        assert "Traceback" not in stderr
    assert not log_dir.exists()  # refused before any work: no run folder left


def test_runs_started_in_the_same_second_get_their_own_folders(monkeypatch, tmp_path):
    from datetime import datetime

    from {{ cookiecutter.package }}.run import rundir

    times = iter([datetime(2026, 1, 2, 3, 4, 5, 100), datetime(2026, 1, 2, 3, 4, 5, 101)])

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):
            return next(times)

    monkeypatch.setattr(rundir, "datetime", Clock)
    first, second = rundir.run_dir(None, str(tmp_path)), rundir.run_dir(None, str(tmp_path))
    assert first != second and first.startswith(str(tmp_path)) and "2026-01-02_03-04-05" in first


def test_raw_engine_refuses_a_trainer_key_it_does_not_implement(tmp_path):
    cfg = compose_train(["engine=raw", "+trainer.sync_batchnorm=true"])
    with pytest.raises(UserError, match=r"trainer\.sync_batchnorm is not implemented by engine=raw"):
        raw_fit(cfg, tmp_path)
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("engine", ["raw", "lightning"])
def test_16_mixed_off_cuda_is_refused_before_any_work(tmp_path, engine):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(UserError, match="16-mixed needs a CUDA GPU"):  # Lightning alone would switch to bf16-mixed
        train(compose_train([f"engine={engine}", "trainer.precision=16-mixed"]), tmp_path)
    assert not any(tmp_path.iterdir())


def test_unsafe_checkpoint_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this ran while loading",))

    path = tmp_path / "evil.ckpt"
    torch.save({"model": Payload()}, path)
    with pytest.raises(UserError, match="cannot be loaded safely"):
        load_checkpoint(path)
    path.write_bytes(b"truncated")
    with pytest.raises(UserError, match="cannot be loaded safely"):
        load_checkpoint(path)


def test_lightning_engine_honours_early_stopping_grad_norm_and_anomaly_mode(tmp_path):
    from {{ cookiecutter.package }}.engines import lightning as lightning_engine

    cfg = compose_train(
        [
            "engine=lightning",
            "callbacks=early_stopping",
            "callbacks.early_stopping.patience=1",
            "callbacks.early_stopping.min_delta=100",
            "trainer.max_epochs=10",
            "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            "trainer.log_every_n_steps=2",
        ]
    )
    metrics = lightning_engine.fit(cfg, tmp_path)
    assert metrics["epochs"] == 2  # as engine=raw: the second validation cannot improve by 100
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/grad_norm")] == [1, 3, 5]  # engine=raw's cadence
    assert lightning_engine.trainer_arguments(compose_train(["debug=anomaly"]))["detect_anomaly"] is True


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["raw", "lightning"])
def test_sigterm_saves_last_ckpt_exits_nonzero_and_resumes_in_the_same_folder(log_dir, engine):
    command = [
        sys.executable,
        "train.py",
        f"paths.log_dir={log_dir}",
        f"engine={engine}",
        "scheduler=cosine",
        "trainer.enable_progress_bar=false",
    ]
    run = subprocess.Popen(
        [*command, "trainer.max_epochs=1000"],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(log_dir.glob(f"train/{engine}/*/checkpoints/last.ckpt")):  # training is under way
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.2)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 128 + signal.SIGTERM
    [run_dir] = run_dirs(log_dir, engine)
    *_, stopped, hint = stderr.strip().splitlines()
    assert stopped.startswith("stopped by SIGTERM at epoch ")
    assert stopped.endswith(f"saved {run_dir}/checkpoints/last.ckpt")
    # The hint repeats the run's own overrides (scheduler=cosine, ...), so that running it resumes this run.
    assert hint == (
        f"Resume with: python train.py paths.log_dir={log_dir} engine={engine} scheduler=cosine "
        f"trainer.enable_progress_bar=false trainer.max_epochs=1000 "
        f"ckpt_path={run_dir}/checkpoints/last.ckpt"
    )

    def progress() -> tuple[int, int]:  # (epoch, global step) of last.ckpt, in either engine's layout
        state = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
        state = state.get("progress", state)
        return state["epoch"], state["global_step"]

    stopped_epoch, stopped_step = progress()
    resumed = subprocess.run(
        [
            sys.executable,
            *shlex.split(hint.removeprefix("Resume with: python ")),
            f"trainer.max_epochs={stopped_epoch + 2}",
        ],  # the hint, stopping sooner
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert run_dirs(log_dir, engine) == [run_dir]  # continued in its own folder
    assert progress()[1] > stopped_step
