"""The bake options: each one off on its own, all off (the minimal bake) and all on (the default bake). An option
switched off leaves no trace (no file, name or line that speaks of it), and every bake is a working project:
ruff passes, every module imports, Hydra composes `train`; the minimal bake passes its own fast tier."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import option_sizes  # noqa: E402 (scripts/ is not a package)

OPTIONS = option_sizes.OPTIONS
# What only an option brings: file names, commands, imports and words. None may be left in a bake without it.
REMOVED_NAMES = {
    "include_tour": ["tour/", "test_tour"],
    "include_deployment": [
        "export.py", "predict.py", "serve.py", "exporting", "serving", "hostile_archives", "fastapi", "uvicorn",
        "onnxruntime", "onnxscript", ".[export]", ".[serve]", "make export", "make serve", "make predict",
        "From checkpoint to production",
    ],
    "include_search": ["search.py", "optuna", "hparam_search", "hparams_search"],
    "include_benchmarks": ["benchmarks", "gpu_check.py", "gpu-check", "engine_overhead", "data_loading.py"],
    "include_slurm": ["slurm/", "sbatch", "submitit", "hydra/launcher", ".[slurm]"],
    "include_extra_loggers": ["mlflow", "wandb", "MLflow", "Weights & Biases"],
}
# A name that an option removes but the core legitimately keeps, with why (file glob -> names).
KEPT = {
    # The tour's ecosystem chapter teaches exporting and serving on their own (torch.onnx.export skips without the
    # onnx packages; FastAPI on uvicorn is named as one way to serve), whether or not the project deploys.
    "include_deployment": {"tour/09_ecosystem.py": {"onnxscript", "onnxruntime", "exporting", "Serving", "FastAPI", "uvicorn"}},
}
BAKES = {"all": {}, "minimal": dict.fromkeys(OPTIONS, False), **{f"no_{o}": {o: False} for o in OPTIONS}}


@pytest.fixture(scope="session")
def bakes(tmp_path_factory) -> dict[str, Path]:
    """Every bake of BAKES, made once: {name: project folder}."""
    root = tmp_path_factory.mktemp("option_bakes")
    return {name: option_sizes.bake(root / name, **options) for name, options in BAKES.items()}


def traces(project: Path, names: list[str], kept: dict[str, set[str]]) -> list[str]:
    """Each place in `project` (a path or a line of a text file) where one of `names` appears."""
    found = []
    pattern = re.compile("|".join(re.escape(name) for name in names), re.IGNORECASE)
    for path in sorted(project.rglob("*")):
        relative = path.relative_to(project).as_posix()
        if "__pycache__" in path.parts:
            continue
        if pattern.search(relative):
            found.append(relative)
        if not path.is_file():
            continue
        try:
            lines = path.read_text().splitlines()
        except UnicodeDecodeError:
            continue
        allowed = kept.get(relative, set())
        for number, line in enumerate(lines, 1):
            hits = {match.group(0) for match in pattern.finditer(line)}
            if hits and not hits <= allowed:
                found.append(f"{relative}:{number}: {line.strip()[:120]}")
    return found


@pytest.mark.parametrize("option", OPTIONS)
def test_an_option_switched_off_leaves_no_trace(bakes, option):
    for name in (f"no_{option}", "minimal"):
        left = traces(bakes[name], REMOVED_NAMES[option], KEPT.get(option, {}))
        assert not left, f"{name}: {option} left {len(left)} traces:\n" + "\n".join(left[:60])


def test_every_option_has_its_list_of_removed_names():
    assert set(REMOVED_NAMES) == set(OPTIONS)


@pytest.mark.parametrize("option", OPTIONS)
def test_an_option_switched_on_brings_its_names(bakes, option):
    """The grep above can fail: the default bake holds every name that a bake without the option must not."""
    assert traces(bakes["all"], REMOVED_NAMES[option], {})


@pytest.mark.parametrize("name", list(BAKES))
def test_each_bake_passes_ruff(bakes, name):
    for command in (["check", "--no-cache", "."], ["format", "--check", "--no-cache", "."]):
        result = subprocess.run([sys.executable, "-m", "ruff", *command], cwd=bakes[name], capture_output=True, text=True)
        assert result.returncode == 0, f"{name}: ruff {' '.join(command)}\n{result.stdout}{result.stderr}"


IMPORT_EVERYTHING = """
import importlib, pathlib, py_compile, sys
root = pathlib.Path.cwd()
package = root / "src" / sys.argv[1]
for path in sorted(package.rglob("*.py")):
    parts = path.relative_to(root / "src").with_suffix("").parts
    importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
for script in sorted(root.glob("*.py")):
    py_compile.compile(str(script), doraise=True)
"""


@pytest.mark.parametrize("name", list(BAKES))
def test_every_module_of_each_bake_imports(bakes, name):
    project = bakes[name]
    [package] = [p.name for p in (project / "src").iterdir() if p.is_dir()]
    env = {**os.environ, "PYTHONPATH": str(project / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING, package], cwd=project, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{name}:\n{result.stderr[-3000:]}"


COMPOSE = """
import sys
from hydra import compose, initialize_config_dir
with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    cfg = compose(config_name="train")
print(cfg.engine.name, cfg.logger is not None)
"""


@pytest.mark.parametrize("name", list(BAKES))
def test_hydra_composes_train_in_each_bake(bakes, name):
    result = subprocess.run(
        [sys.executable, "-c", COMPOSE, str(bakes[name] / "configs")], capture_output=True, text=True
    )
    assert result.returncode == 0, f"{name}:\n{result.stderr[-3000:]}"


def test_the_minimal_bake_passes_its_fast_tier(bakes):
    project = bakes["minimal"]
    env = {**os.environ, "PYTHONPATH": str(project / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


def test_the_readme_table_of_option_sizes_is_measured():
    assert option_sizes.readme_table() == option_sizes.table(), "run: python scripts/option_sizes.py --write"
