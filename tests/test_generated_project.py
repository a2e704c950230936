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


# A guard against a hang, not a speed test: the suite takes about 5 minutes on a quiet 2-core machine and three
# times that or more on a loaded one; CI allows 90 minutes in all.
SUITE_TIMEOUT_S = 75 * 60


def test_baked_project_suite_passes(installed_project, tmp_path_factory):
    project, site = installed_project
    env = {**os.environ, "PYTHONPATH": str(site)}
    # The whole output goes to a file as it is written (-v: each test's name, so that a hang shows where it is), and
    # a failure's whole report (from pytest's FAILURES section on) into the assertion message: it reaches the CI log.
    log = tmp_path_factory.mktemp("baked-suite") / "pytest.log"
    with log.open("w") as output:
        suite = subprocess.Popen([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider"], cwd=project,
                                 env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
        try:
            returncode = suite.wait(timeout=SUITE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            suite.kill()
            suite.wait()
            tail = log.read_text().splitlines()[-80:]
            pytest.fail(f"the baked project's suite ran past {SUITE_TIMEOUT_S} s; its whole output: {log}; its last "
                        "lines (the test it was in comes last):\n" + "\n".join(tail), pytrace=False)
    lines = log.read_text().splitlines()
    if returncode != 0:
        start = next((i for i, line in enumerate(lines) if line.lstrip("=").strip().startswith(("FAILURES", "ERRORS"))),
                     0)
        pytest.fail(f"the baked project's suite failed (exit code {returncode}); its whole output: {log}\n"
                    + "\n".join(lines[start:]), pytrace=False)
    assert " passed" in lines[-1] and "failed" not in lines[-1], lines[-1]
