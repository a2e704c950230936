"""Remove what the options switched off, then print the next steps."""

import shutil
from pathlib import Path

PROJECT = {{ cookiecutter.project | quoted }}
PACKAGE = {{ cookiecutter.package | quoted }}
LICENSE = {{ cookiecutter.license | quoted }}
DEFAULT_ENGINE = {{ cookiecutter.default_engine | quoted }}
DATASET = {{ cookiecutter.dataset | quoted }}
# Each option as the bake was asked for it (cookiecutter gives booleans; a typed answer may still be text).
INCLUDED = {
{%- for option in ["tour", "deployment", "search", "benchmarks", "slurm", "extra_loggers"] %}
    {{ option | quoted }}: {{ 'True' if cookiecutter["include_" + option] in [True, 'True', 'true', 'yes', 'y', '1', 1] else 'False' }},
{%- endfor %}
}

SOURCE = f"src/{PACKAGE}"
# The files and folders each option adds. The lines it adds to shared files (README.md, Makefile, pyproject.toml,
# some configs and tests) are `# bake: if cookiecutter.include_<option>` blocks, rendered away with the option.
OPTIONAL_PATHS = {
    "tour": ["tour", "tests/test_tour.py"],
    "deployment": [
        "export.py",
        "predict.py",
        "serve.py",
        f"{SOURCE}/workflows/exporting.py",
        f"{SOURCE}/workflows/prediction.py",
        f"{SOURCE}/workflows/serving.py",
        "configs/export.yaml",
        "configs/predict.yaml",
        "configs/serve.yaml",
        "tests/workflows/test_export.py",
        "tests/workflows/test_predict.py",
        "tests/workflows/test_serve.py",
        "tests/workflows/test_hostile_archives.py",
        "tests/workflows/hostile_archives.py",
    ],
    "search": [
        "search.py",
        f"{SOURCE}/workflows/hparam_search.py",
        "configs/search.yaml",
        "configs/hparams_search",
        "tests/workflows/test_search.py",
    ],
    "benchmarks": ["benchmarks", "tests/test_benchmark.py", "tests/test_loader_benchmarks.py"],
    "slurm": ["slurm", "configs/hydra/launcher", "tests/test_slurm.py"],
    "extra_loggers": [
        f"{SOURCE}/watching/extra_loggers.py",
        "configs/logger/mlflow.yaml",
        "configs/logger/wandb.yaml",
        "tests/watching/test_extra_loggers.py",
    ],
}

root = Path.cwd()  # cookiecutter runs this hook inside the new project

if LICENSE == "none":
    (root / "LICENSE").unlink()

for option, paths in OPTIONAL_PATHS.items():
    if INCLUDED[option]:
        continue
    for relative in paths:
        path = root / relative
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()  # a missing file is the template's mistake: the list names each file it has

other_engine = "raw" if DEFAULT_ENGINE == "lightning" else "lightning"
steps = [
    (f"cd {PROJECT}", ""),
    ("python -m venv .venv && . .venv/bin/activate", ""),
    ('pip install -e ".[dev]"', "README.md: CUDA, ROCm and MPS builds"),
    ("python train.py", f"{DEFAULT_ENGINE} engine, {DATASET} data, CPU"),
    (f"python train.py engine={other_engine}", "the same training, written the other way"),
    ("python train.py trainer=gpu", "on a CUDA GPU"),
    ("pytest", "the fast tier of the tests (make test-full: all)"),
    ("tensorboard --logdir logs --host 127.0.0.1", "the curves of every run"),
]
print(f"\nCreated {PROJECT}/ (package {PACKAGE}). Next steps:\n")
for command, why in steps:
    print(f"  {command:<46} {'# ' + why if why else ''}".rstrip())
print()
