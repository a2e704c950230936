"""`python -m {{ cookiecutter.package }}.doctor` verifies the install on this machine."""

import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_doctor_passes_and_checks_the_cpu(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package }}.doctor"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cpu: matmul+backward ok" in result.stdout
    for name in ("torch", "torchvision", "lightning", "hydra", "torchmetrics", "tensorboard"):
        assert re.search(rf"^\s+{name}\s+\d", result.stdout, re.MULTILINE), f"no version line for {name}"
