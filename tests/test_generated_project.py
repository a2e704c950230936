"""The baked project's own test suites pass, run with this interpreter (no virtualenv per bake). The default bake's
full suite (`make test-full`) runs in parts that share make test's two workers, each of its tests once: the fast tier
(plain `pytest`, the README's quick start) with only the dev extra, then its tests that skipped for want of an extra
with the extras; and the slow tier with every extra, in two parts."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from xml.etree import ElementTree

import pytest


@pytest.fixture(scope="session")
def installed_project(default_bake, tmp_path_factory):
    """Install the baked project (not its dependencies: they are this environment's) into a private folder
    on PYTHONPATH, so that the shared .venv is left as it was."""
    site, source = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("source") / "project"
    shutil.copytree(default_bake, source)  # pip builds in the source folder: the shared bake stays as baked
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True)
    return default_bake, site


# Guards against a hang, not speed tests: the full suite takes about 10 minutes on a quiet 2-core machine, the fast
# tier 3, and three times that or more on a loaded one; CI allows 90 minutes in all. pytest-timeout's limit for each
# test stays above its own, which stops the suite and reports where it was.
SUITE_TIMEOUT_S = 75 * 60
FAST_TIER_TIMEOUT_S = 30 * 60


def run_suite(project, pythonpath: str, options: list[str], timeout_s: float, log) -> list[str]:
    """`python -m pytest -v options...` in the bake; its output lines. The whole output goes to `log` as it is written
    (-v: each test's name, so that a hang shows where it is); a failure's whole report (from pytest's FAILURES section
    on) goes into the failure message: it reaches the CI log."""
    env = {**os.environ, "PYTHONPATH": pythonpath}
    with log.open("w") as output:
        suite = subprocess.Popen([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *options],
                                 cwd=project, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
        try:
            returncode = suite.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            suite.kill()
            suite.wait()
            tail = log.read_text().splitlines()[-80:]
            pytest.fail(f"the baked project's suite ran past {timeout_s} s; its whole output: {log}; its last "
                        "lines (the test it was in comes last):\n" + "\n".join(tail), pytrace=False)
    lines = log.read_text().splitlines()
    if returncode != 0:
        start = next((i for i, line in enumerate(lines) if line.lstrip("=").strip().startswith(("FAILURES", "ERRORS"))),
                     0)
        pytest.fail(f"the baked project's suite failed (exit code {returncode}); its whole output: {log}\n"
                    + "\n".join(lines[start:]), pytrace=False)
    assert " passed" in lines[-1] and "failed" not in lines[-1], lines[-1]
    return lines


# The slow tier in two parts of about the same length (DDP, kill -9, multi-node; the rest), one per worker.
SLOW_TIER_PARTS = {"run": ["tests/run"], "rest": ["tests", "--ignore=tests/run"]}


@pytest.mark.timeout(SUITE_TIMEOUT_S + 300)
@pytest.mark.parametrize("part", SLOW_TIER_PARTS)
def test_baked_project_slow_tier_passes(installed_project, tmp_path_factory, part):
    """The tests that plain `pytest` leaves out (`make test-full` runs them with the rest)."""
    project, site = installed_project
    log = tmp_path_factory.mktemp(f"slow-tier-{part}") / "pytest.log"
    lines = run_suite(project, str(site), ["-m", "slow", *SLOW_TIER_PARTS[part]], SUITE_TIMEOUT_S, log)
    assert " passed" in lines[-1], lines[-1]


# Each extra of the generated pyproject.toml and the top-level modules it installs (hydra-submitit-launcher: a Hydra
# plugin and submitit).
EXTRA_MODULES = {
    "export": ("onnx", "onnxscript", "onnxruntime"),
    "serve": ("fastapi", "uvicorn"),
    "mlflow": ("mlflow",),
    "wandb": ("wandb",),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "submitit"),
}
# The extras some test needs (and so skips without, naming the extra); slurm's config is tested without its plugin.
TESTED_EXTRAS = {"export", "serve", "mlflow", "wandb"}

# As in a virtual environment made as the README's quick start says (`pip install -e ".[dev]"`): the extras' modules
# are not there. `None` in sys.modules is how Python spells "not installed" for both `import` (ModuleNotFoundError)
# and importlib.util.find_spec (None). As sitecustomize.py on PYTHONPATH it holds in every Python process the suite
# starts too (training subprocesses, DDP workers, DataLoader workers).
ONLY_DEV_EXTRA = '''"""The extras' modules are not installed (tests/test_generated_project.py)."""
import sys

for name in {modules!r}:
    sys.modules[name] = None
'''


@pytest.mark.timeout(FAST_TIER_TIMEOUT_S + 300)
def test_the_quick_starts_pytest_passes_with_only_the_dev_extra(installed_project, tmp_path_factory):
    project, site = installed_project
    extras = set(tomllib.loads((project / "pyproject.toml").read_text())["project"]["optional-dependencies"]) - {"dev"}
    assert extras <= set(EXTRA_MODULES), f"name the modules of the new extras {extras - set(EXTRA_MODULES)} above"
    blocked = sorted(module for extra in extras for module in EXTRA_MODULES[extra])
    only_dev = tmp_path_factory.mktemp("only-dev-extra")
    (only_dev / "sitecustomize.py").write_text(ONLY_DEV_EXTRA.format(modules=blocked))
    pythonpath = f"{only_dev}{os.pathsep}{site}"

    probe = "import importlib.util, sys; sys.exit(sum(importlib.util.find_spec(m) is not None for m in sys.argv[1:]))"
    visible = subprocess.run([sys.executable, "-c", probe, *blocked], check=False,
                             env={**os.environ, "PYTHONPATH": pythonpath})
    assert visible.returncode == 0, f"{visible.returncode} of {blocked} can still be imported"

    report = only_dev / "junit.xml"
    lines = run_suite(project, pythonpath, [f"--junitxml={report}"], FAST_TIER_TIMEOUT_S, only_dev / "pytest.log")
    assert " deselected" in lines[-1], lines[-1]  # plain pytest is the fast tier: the slow tests are left out
    skipped = [line for line in lines if line.startswith("SKIPPED")]
    named = {extra for line in skipped for extra in re.findall(r"""pip install -e ['"]\.\[(\w+)\]['"]""", line)}
    assert named >= TESTED_EXTRAS & extras, "\n".join(skipped)

    # The same tests, now with the extras they asked for: the rest of the default bake's full suite.
    wanting = skipped_for_an_extra(report, project)
    assert wanting, "no test skipped for an extra"
    log = only_dev / "with-extras.log"
    lines = run_suite(project, str(site), ["-m", "", *wanting], FAST_TIER_TIMEOUT_S, log)
    assert f"{len(wanting)} passed" in lines[-1] and "skipped" not in lines[-1], lines[-1]


def skipped_for_an_extra(report, project) -> list[str]:
    """The node ids (tests/x/test_y.py::test_z[param]) of the tests that a JUnit XML report says skipped naming an
    extra. A test case's classname is its module's dotted path, then its class if any."""
    node_ids = []
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        skipped = case.find("skipped")
        if skipped is None or "extra: pip install" not in skipped.get("message", ""):
            continue
        parts = case.get("classname").split(".")
        module = next(i for i in range(len(parts), 0, -1) if (project / ("/".join(parts[:i]) + ".py")).is_file())
        node_ids.append("::".join(["/".join(parts[:module]) + ".py", *parts[module:], case.get("name")]))
    return node_ids


def test_the_workflow_runs_the_fast_tier_on_push_and_the_full_suite_weekly_and_by_hand(default_bake):
    import yaml

    workflow = yaml.safe_load((default_bake / ".github" / "workflows" / "ci.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert set(triggers) == {"push", "pull_request", "schedule", "workflow_dispatch"}
    assert re.fullmatch(r"\d+ \d+ \* \* \d", triggers["schedule"][0]["cron"])  # weekly
    jobs = workflow["jobs"]
    runs = {name: [step["run"] for step in job["steps"] if "run" in step] for name, job in jobs.items()}
    assert "github.event_name == 'push'" in jobs["fast"]["if"]
    assert "github.event_name == 'schedule'" in jobs["full"]["if"]
    assert "workflow_dispatch" in jobs["full"]["if"]
    assert runs["fast"][-1] == "pytest" and 'pip install -e ".[dev]"' in runs["fast"]  # the quick start, as written
    assert runs["full"][-1] == 'pytest -m ""'
    extras = set(tomllib.loads((default_bake / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    [install] = [run for run in runs["full"] if run.startswith("pip install -e")]
    assert set(re.fullmatch(r'pip install -e "\.\[(.*)\]"', install).group(1).split(",")) == extras - {"slurm"}
