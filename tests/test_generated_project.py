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


def test_baked_project_suite_passes(installed_project, tmp_path_factory):
    project, site = installed_project
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
                            env=env, capture_output=True, text=True, timeout=1800)
    # The whole output goes to a file, and a failure's whole report (from pytest's FAILURES section on) into the
    # assertion message, so that it reaches the CI log in full.
    log = tmp_path_factory.mktemp("baked-suite") / "pytest.log"
    log.write_text(result.stdout + "\n" + result.stderr)
    lines = result.stdout.splitlines()
    if result.returncode != 0:
        start = next((i for i, line in enumerate(lines) if line.lstrip("=").strip().startswith(("FAILURES", "ERRORS"))),
                     0)
        pytest.fail(f"the baked project's suite failed (exit code {result.returncode}); its whole output: {log}\n"
                    + "\n".join(lines[start:]) + "\n" + result.stderr, pytrace=False)
    assert " passed" in lines[-1] and "failed" not in lines[-1], lines[-1]
