"""The baked project's own test suite passes, run with this interpreter (no virtualenv per bake)."""

import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="session")
def installed_project(default_bake, tmp_path_factory):
    """Install the baked project (not its dependencies: they are this environment's) into a private folder
    on PYTHONPATH, so that the shared .venv is left as it was."""
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(default_bake)], check=True)
    return default_bake, site


def test_baked_project_suite_passes(installed_project):
    project, site = installed_project
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
                            env=env, capture_output=True, text=True, timeout=1800)
    # All of it: pytest shows a failing test's captured output in full, so the nested suite's whole failure report
    # (tracebacks, captured output of each failed test) reaches the CI log.
    print(result.stdout)
    print(result.stderr, file=sys.stderr)
    assert result.returncode == 0
    assert " passed" in result.stdout.splitlines()[-1] and "failed" not in result.stdout.splitlines()[-1]
