"""benchmarks/engine_overhead.py: its bare loop is the engines' training, and its figures are computed as its
docstring says. (The timings themselves are never tested: they are the benchmark's output.)"""

import contextlib
import importlib.util
import io
import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT, compose_train

from {{ cookiecutter.package }}.engines import raw
from {{ cookiecutter.package }}.launch import seed_everything

SCRIPT = PROJECT_ROOT / "benchmarks" / "engine_overhead.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("engine_overhead", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bare_loop_is_the_same_training_as_the_raw_engine(benchmark, tmp_path):
    cfg = compose_train([*benchmark.OVERRIDES, "engine=raw", "trainer.max_epochs=2"])
    bare = benchmark.bare_loop(cfg)
    seed_everything(cfg.seed)  # what launch.train does before the engine
    with contextlib.redirect_stdout(io.StringIO()):
        engine = raw.fit(cfg, tmp_path, None)
    assert len(bare["epoch_times_s"]) == 2 and bare["startup_s"] > 0
    assert bare["train/loss"] == pytest.approx(engine["train/loss"], abs=1e-6)
    assert bare["val/loss"] == pytest.approx(engine["val/loss"], abs=1e-6)
    assert bare["val/acc"] == pytest.approx(engine["val/acc"], abs=1e-6)


def test_the_report_takes_ratios_within_each_repeat_and_times_accuracy_by_epochs(benchmark):
    def runs(scale: float) -> list[dict]:  # two repeats, the second on a machine twice as slow
        return [{"epoch_times_s": [scale * slow] * 3, "startup_s": 2.0 * scale, "epochs": 3, "global_step": 30}
                for slow in (1.0, 2.0)]

    text = benchmark.report(
        {"bare": runs(1.0), "raw": runs(1.10), "lightning": runs(1.10 * 1.05)},
        {trainer: [0.5, 0.97, 0.99] for trainer in benchmark.TRAINERS},  # reaches 0.97 after epoch 2
        {engine: {"whole import": 6.0, "torch": 2.0} for engine in ("raw", "lightning")},
        target=0.97,
    )
    assert "raw / bare      1.100   (per repeat: 1.100, 1.100; target <= 1.05: NOT met)" in text
    assert "lightning / raw 1.050   (per repeat: 1.050, 1.050; target <= 1.10: met)" in text
    assert "fastest epoch of each run (the least disturbed): raw / bare 1.100, lightning / raw 1.050" in text
    # raw - bare: 0.1 s and 0.2 s per epoch in the two repeats, median 0.15 s, over 10 steps per epoch.
    assert "raw - bare: +150.0 ms per epoch, +15.00 ms per optimizer step (10 per epoch" in text
    # Two epochs: 2 s and 4 s in the two repeats, median 3 s; plus the median start-up, 2 s.
    assert "bare      3.00 s  (after epoch 2, test/acc 0.9700; with start-up 5.00 s)" in text
    assert "identical in all three trainers" in text


def test_help_and_bad_arguments():
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--repeats" in result.stdout
    result = subprocess.run([sys.executable, str(SCRIPT), "--repeats", "0"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "--repeats and --epochs must be at least 1" in result.stderr
