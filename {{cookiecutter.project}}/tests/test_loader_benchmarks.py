"""benchmarks/gpu.py and benchmarks/data_loading.py, the data loaders' benchmarks: their commands are the runs they
time, they refuse what they cannot run on in one line, and they leave no files (the timings are never asserted)."""

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import PROJECT_ROOT, compose_train


def benchmark(script: str, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )


def test_the_gpu_benchmark_prints_its_commands_and_they_compose(tmp_path):
    """benchmarks/gpu.py --dry-run: the four runs of the table, as train.py would take them."""
    result = benchmark("gpu.py", "--dry-run", f"--data-dir={tmp_path}", "--epochs=2", "--", "seed=1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 4
    runs = set()
    for line in lines:
        words = shlex.split(line)
        assert words[1] == "train.py" and "experiment=cifar10" in words and "trainer.precision=bf16-mixed" in words
        cfg = compose_train(words[2:])
        assert (cfg.data.loader, cfg.trainer.max_epochs, cfg.seed, cfg.data.root) == ("tensor", 2, 1, str(tmp_path))
        runs.add((cfg.engine.name, cfg.compile))
    assert runs == {("raw", False), ("raw", True), ("lightning", False), ("lightning", True)}


def test_the_gpu_benchmark_refuses_a_machine_it_cannot_run_on_in_one_line(tmp_path):
    """Without CUDA: the device; with CUDA: the CIFAR-10 files missing from an empty folder."""
    result = benchmark("gpu.py", f"--data-dir={tmp_path}")
    expected = "error: no CIFAR-10 files in" if torch.cuda.is_available() else "error: no CUDA device here"
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(expected) and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.slow
@pytest.mark.timeout(1200)  # above the benchmark's own 900 s
def test_the_data_loading_benchmark_runs_writes_its_figures_and_leaves_no_files(tmp_path, request):
    """benchmarks/data_loading.py on a few synthetic images, loading and a one-epoch run per loader (the timings are
    never asserted); its synthetic files and training runs go to temporary folders that it removes."""
    # Its own TMPDIR, short: DataLoader workers pass tensors through an AF_UNIX socket made in TMPDIR, whose path may
    # not exceed 107 characters (under tmp_path, nested in the template's suite, the workers' batches were lost).
    scratch = Path(tempfile.mkdtemp(prefix="dl-"))
    request.addfinalizer(lambda: shutil.rmtree(scratch, ignore_errors=True))
    # A narrow ResNet-9 and one DataLoader worker in the epoch runs: their mechanics are tested, not their speed (the
    # recipe's 8 workers and full width take minutes on a small CPU).
    result = benchmark(
        "data_loading.py",
        "--repeats=1",
        "--images=60",
        "--epochs=1",
        "--override=model.channels=[8,8,8,8]",
        "--override=data.num_workers=1",
        f"--data-dir={tmp_path}",
        f"--json={tmp_path / 'figures.json'}",
        timeout=900,  # a hang guard
        TMPDIR=str(scratch),
    )
    assert result.returncode == 0, result.stderr
    assert "SYNTHETIC" in result.stdout and "load average before" in result.stdout
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["synthetic"] and set(figures["figures"]) == {
        f"loading {loader} {kind}" for loader in ("dataloader", "tensor") for kind in ("augmented", "plain")
    } | {"epoch dataloader", "epoch tensor"}
    samples = {run[0]["samples"] for name, run in figures["runs"].items() if name.startswith("loading")}
    assert samples == {60 - 6}  # the training split of the synthetic files, in both loaders
    assert [len(run[0]["epoch_times_s"]) for name, run in figures["runs"].items() if name.startswith("epoch")] == [1, 1]
    assert sorted(scratch.iterdir()) == []
