"""Remove what the options switched off, then print the next steps."""

import shutil
from pathlib import Path

PROJECT = {{ cookiecutter.project | quoted }}
PACKAGE = {{ cookiecutter.package | quoted }}
LICENSE = {{ cookiecutter.license | quoted }}
INCLUDE_TOUR = {{ 'True' if cookiecutter.include_tour in [True, 'True', 'true', 'yes', 'y', '1', 1] else 'False' }}
DEFAULT_ENGINE = {{ cookiecutter.default_engine | quoted }}
DATASET = {{ cookiecutter.dataset | quoted }}

root = Path.cwd()  # cookiecutter runs this hook inside the new project

if LICENSE == "none":
    (root / "LICENSE").unlink()

if not INCLUDE_TOUR:
    shutil.rmtree(root / "tour")
    (root / "tests" / "test_tour.py").unlink()

other_engine = "raw" if DEFAULT_ENGINE == "lightning" else "lightning"
steps = [
    (f"cd {PROJECT}", ""),
    ("python -m venv .venv && . .venv/bin/activate", ""),
    ('pip install -e ".[dev]"', "README.md: CUDA, ROCm and MPS builds"),
    ("python train.py", f"{DEFAULT_ENGINE} engine, {DATASET} data, CPU"),
    (f"python train.py engine={other_engine}", "the same training, written the other way"),
    ("python train.py trainer=gpu", "on a CUDA GPU"),
    ("pytest", "the project's own tests"),
    ("tensorboard --logdir logs --host 127.0.0.1", "the curves of every run"),
]
print(f"\nCreated {PROJECT}/ (package {PACKAGE}). Next steps:\n")
for command, why in steps:
    print(f"  {command:<46} {'# ' + why if why else ''}".rstrip())
print()
