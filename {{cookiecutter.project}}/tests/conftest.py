"""Shared helpers for the project's tests. Nothing here touches the network."""

import importlib.util
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from {{ cookiecutter.package }}.run.rundir import register_resolvers

register_resolvers()  # configs/hydra/default.yaml uses ${run_dir:...}, as train.py registers it

# A crash (a segmentation fault in a DataLoader worker, a training subprocess, ...) prints its Python stack: pytest's
# faulthandler covers this process, this variable every Python process the tests start (they inherit it).
os.environ.setdefault("PYTHONFAULTHANDLER", "1")

# The extras of pyproject.toml whose tests skip without them (a skip names the extra).
EXTRA_MODULES = {
    # extra: the modules that tell whether it is installed
    # bake: if cookiecutter.include_deployment
    "export": ("onnx", "onnxscript", "onnxruntime"),
    "serve": ("fastapi", "uvicorn"),
    # bake: endif
    # bake: if cookiecutter.include_extra_loggers
    "mlflow": ("mlflow",),
    "wandb": ("wandb",),
    # bake: endif
}


def missing_extra(extra: str) -> str | None:
    """Why a test of `extra` cannot run here (the reason a skip gives, naming the extra), or None if it is installed."""
    absent = [name for name in EXTRA_MODULES[extra] if importlib.util.find_spec(name) is None]
    return f"needs the `{extra}` extra: pip install -e '.[{extra}]'" if absent else None


def require_extra(*extras: str) -> None:
    """Inside a test: skip it, naming the extra, unless every one of `extras` is installed."""
    for extra in extras:
        if reason := missing_extra(extra):
            pytest.skip(reason)


def needs_extra(extra: str) -> pytest.MarkDecorator:
    """A mark for a test (or `pytestmark` for a module) that skips, naming the extra, unless it is installed."""
    reason = missing_extra(extra)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


# Every test has a time limit (pytest-timeout: `timeout` in pyproject.toml, or a test's own timeout mark): a hang
# fails with the test's name instead of holding CI. The limits are for a quiet machine; each is stretched by the
# load per core when the test starts (a busy CI runner) and by $TEST_TIMEOUT_FACTOR. They stay above the tests' own
# subprocess timeouts, which fire first with the subprocess's output.
def timeout_factor() -> float:
    load_per_core = os.getloadavg()[0] / (os.cpu_count() or 1)
    return max(1.0, load_per_core) * float(os.environ.get("TEST_TIMEOUT_FACTOR", "1"))


class ScaledTimeouts:
    @pytest.hookimpl(tryfirst=True)
    def pytest_timeout_set_timer(self, item, settings):
        import pytest_timeout

        return pytest_timeout.pytest_timeout_set_timer(
            item, settings._replace(timeout=round(settings.timeout * timeout_factor(), 1))
        )


def pytest_configure(config):
    if config.pluginmanager.hasplugin("timeout"):  # pytest-timeout, from the dev extra
        config.pluginmanager.register(ScaledTimeouts(), "scaled-timeouts")


PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"

# A few batches, two epochs: enough for every code path of an engine, in seconds.
SHORT_RUN = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
]


def compose_train(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """configs/train.yaml composed with `overrides`, as train.py would see it (without the hydra node)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def run_train(
    log_dir: Path, *overrides: str, python_flags: tuple[str, ...] = (), timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python train.py overrides...` as a user runs it, with outputs under `log_dir`. Options such as `-m`
    go before the overrides. `timeout` only bounds a run that hangs: one still running then is stopped (SIGTERM,
    which a DDP launcher passes on to its workers, then SIGKILL) and fails the test with its whole output and
    the logs of its ranks."""
    options = [arg for arg in overrides if arg.startswith("-")]
    overrides = tuple(arg for arg in overrides if not arg.startswith("-"))
    command = [sys.executable, *python_flags, "train.py", *options, f"paths.log_dir={log_dir}", *overrides]
    with subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as run:
        try:
            stdout, stderr = run.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            run.terminate()
            try:
                stdout, stderr = run.communicate(timeout=90)
            except subprocess.TimeoutExpired:
                run.kill()
                stdout, stderr = run.communicate()
            logs = "".join(
                f"\n--- {log} ---\n{log.read_text(errors='replace')}" for log in sorted(log_dir.rglob("rank*.log"))
            )
            pytest.fail(
                f"{subprocess.list2cmdline(command)}: still running after {timeout} s, stopped\n"
                f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}{logs}",
                pytrace=False,
            )
    return subprocess.CompletedProcess(command, run.returncode, stdout, stderr)


def run_dirs(log_dir: Path, engine: str) -> list[Path]:
    return sorted(p for p in (log_dir / "train" / engine).glob("*") if p.is_dir())


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar of a run, by tag, as (step, value) sorted by step (Lightning writes its test
    metrics to a second events file, read in file-name order)."""
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: sorted((e.step, e.value) for e in events.Scalars(tag)) for tag in events.Tags()["scalars"]}


def assert_same_curves(raw: dict, lit: dict, tags: tuple[str, ...], tolerance: float = 1e-6) -> None:
    """The two engines logged each tag at the same steps, with values within `tolerance`."""
    for tag in tags:
        assert [step for step, _ in raw[tag]] == [step for step, _ in lit[tag]], tag
        assert max(abs(a - b) for (_, a), (_, b) in zip(raw[tag], lit[tag], strict=True)) <= tolerance, tag


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture(scope="session")
def short_runs(tmp_path_factory) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    """One SHORT_RUN of each engine, side by side, shared by the tests that only read a run's outputs
    (test_engines, test_tensorboard, test_tensorboard_browser): (log folder, {engine: finished process}).
    Histograms every epoch so that both epochs have them; engine=raw under `-X importtime`, which lists the
    modules it imported (lightning must not be among them)."""
    log_dir = tmp_path_factory.mktemp("short_runs") / "logs"

    def run(engine: str) -> subprocess.CompletedProcess:
        flags = ("-X", "importtime") if engine == "raw" else ()
        return run_train(
            log_dir, f"engine={engine}", *SHORT_RUN, "logger.tensorboard.histogram_every_n_epochs=1", python_flags=flags
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(("raw", "lightning"), pool.map(run, ("raw", "lightning")), strict=True))
    return log_dir, results


# bake: if cookiecutter.include_deployment
@pytest.fixture(scope="session")
def exports(short_runs, tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Each engine's SHORT_RUN best.ckpt exported by `python export.py` (format=all where the export extra is
    installed, else torch_export), two at a time: {engine: (export folder, finished process)}. Shared by
    test_export, test_predict and test_serve."""
    log_dir, results = short_runs
    fmt = "torch_export" if missing_extra("export") else "all"

    def export(engine: str) -> tuple[Path, subprocess.CompletedProcess]:
        assert results[engine].returncode == 0, f"{engine}:\n{results[engine].stderr[-3000:]}"
        out = tmp_path_factory.mktemp(f"export_{engine}") / "logs"
        checkpoint = run_dirs(log_dir, engine)[-1] / "checkpoints" / "best.ckpt"
        result = run_script("export.py", out, f"ckpt_path={checkpoint}", f"format={fmt}")
        folders = sorted((out / "export").iterdir()) if (out / "export").is_dir() else []
        return (folders[-1] if folders else out), result

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(("raw", "lightning"), pool.map(export, ("raw", "lightning")), strict=True))


@pytest.fixture(scope="session")
def digit_inputs(short_runs, tmp_path_factory) -> dict:
    """Real test images of the SHORT_RUNs' split as predict.py and serve.py take them: 8-bit PNG files (the digits'
    0-16 pixels scaled to 0-255 and rounded), a .npy stack of the same images as floats in [0, 1] (exactly the
    training tensors once normalised), and bad inputs, each with the reason it is refused."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from PIL import Image
    from sklearn.datasets import load_digits

    from {{ cookiecutter.package }}.core.data import DataPipeline

    folder = tmp_path_factory.mktemp("inputs")
    log_dir, _ = short_runs
    trained = OmegaConf.load(run_dirs(log_dir, "raw")[-1] / ".hydra" / "config.yaml")
    pipeline = DataPipeline(trained.data, seed=trained.seed)
    pipeline.setup("test")
    indices = pipeline.test_set.indices[:8]
    pixels = load_digits().images[indices] / 16.0  # in [0, 1]
    pngs = []
    for number, image in enumerate(pixels):
        pngs.append(folder / f"digit_{number:02d}.png")
        Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L").save(pngs[-1])
    np.save(folder / "stack.npy", pixels.astype(np.float32))
    (folder / "notes.txt").write_text("not an image\n")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "rgb.png")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(folder / "big.png")
    np.save(folder / "shape.npy", np.zeros((3, 5), np.float32))
    bad = {
        "notes.txt": "is not an image file",
        "rgb.png": "has 3 channels (mode RGB): the model takes 1",
        "big.png": "is 9x9 pixels: the model takes 8x8",
        "shape.npy": "has shape (3, 5)",
    }
    return {
        "folder": folder,
        "pngs": pngs,
        "stack": folder / "stack.npy",
        "pixels": pixels,
        "tensors": torch.stack([pipeline.test_set[index][0] for index in range(8)]),
        "bad": bad,
    }


# bake: endif
def run_script(script: str, log_dir: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python <script> overrides...` (evaluate.py, ...) as a user runs it, with its outputs under `log_dir`."""
    command = [sys.executable, script, f"paths.log_dir={log_dir}", *overrides]
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout)
