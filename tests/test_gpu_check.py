"""`make gpu-check ARGS=--dry-run` in a bake, end to end on a CPU: the doctor, the GPU tier collected and skipped, the
benchmark at a tiny size on synthetic CIFAR-10 files, and the JSON report with what was skipped and why."""

import json
import os
import shutil
import subprocess
import sys

import pytest


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_gpu_check_dry_run_writes_the_report(default_bake, tmp_path):
    import torch

    out = tmp_path / "report"
    env = {**os.environ, "PYTHONPATH": str(default_bake / "src")}
    env.pop("MAKEFLAGS", None), env.pop("MAKELEVEL", None)
    done = subprocess.run(
        [
            "make",
            f"PYTHON={sys.executable}",
            "gpu-check",
            f"ARGS=--dry-run --out={out}",
        ],
        check=False,
        cwd=default_bake,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert (
        report["dry_run"] is True and report["versions"]["torch"] == torch.__version__
    )
    assert set(report["checks"]) == {"doctor", "gpu tier", "benchmark"}
    assert (
        report["checks"]["doctor"]["result"] == "passed"
        and "--require-gpu" not in report["checks"]["doctor"]["command"]
    )
    if not torch.cuda.is_available():
        assert (
            report["checks"]["gpu tier"]["result"] == "skipped"
            and report["checks"]["gpu tier"]["counts"]["skipped"] > 0
        )
    bench = report["checks"]["benchmark"]
    assert (
        bench["result"] == "passed"
        and bench["synthetic_data"] is True
        and "SYNTHETIC" in done.stdout
    )
    assert set(bench["runs"]) == {
        "raw-compile-false",
        "lightning-compile-false",
        "minimal-compile-false",
    }
    assert all(
        row["epoch_s"] > 0 and row["samples_per_s"] > 0
        for row in bench["runs"].values()
    )
    assert "compile=false only" in bench["note"]
