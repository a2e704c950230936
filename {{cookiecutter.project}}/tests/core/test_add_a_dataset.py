"""A dataset is one module of core/datasets/ (its registry entry) and one configs/data/<name>.yaml: the README's "Add
your own dataset", added to a copy of the project, trains in both engines and goes through
evaluate.py{% if cookiecutter.include_deployment %}, export.py and predict.py{% endif %}. And nothing outside the registry asks a dataset's name (a grep of the
project's Python)."""

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT_ROOT, SHORT_RUN

from {{ cookiecutter.package }}.core import datasets

PACKAGE = "{{ cookiecutter.package }}"
REGISTRY_DIR = PROJECT_ROOT / "src" / PACKAGE / "core" / "datasets"
# Where a dataset may be named in Python: the registry, and the tests (and their helper) that check its entries.
REGISTRY_TESTS = [
    PROJECT_ROOT / "tests" / "datasets_on_disk.py",
    PROJECT_ROOT / "tests" / "core" / "test_data.py",
    PROJECT_ROOT / "tests" / "core" / "test_add_a_dataset.py",
]
# The README's "Add your own dataset", file by file (the template's own tests hold the README to these).
EXAMPLE = {
    "src/{{ cookiecutter.package }}/core/datasets/colours.py": """\
# src/{{ cookiecutter.package }}/core/datasets/colours.py
import torch

from . import DatasetSpec, register


@register
class Colours(DatasetSpec):  # the entry: all the project knows of the dataset (files: see mnist.py)
    name, input_shape, class_names = "colours", (3, 12, 12), ("red", "green", "blue")
    mean, std = (0.42,) * 3, (0.28,) * 3  # of the pixels in [0, 1]; no test split: data.test_fraction cuts one

    def load(self, root: str, train: bool, download: bool) -> torch.utils.data.Dataset:
        labels, images = torch.arange(600) % 3, torch.rand(600, 3, 12, 12, generator=torch.Generator().manual_seed(0))
        images[torch.arange(600), labels] += 1.0  # noise, brighter in the channel of its class
        return torch.utils.data.TensorDataset(self.normalize(images / 2), labels)
""",
    "configs/data/colours.yaml": """\
# configs/data/colours.yaml
defaults: [digits, _self_]  # digits' fractions and loader settings, then these
name: colours
image_size: 12
channels: 3
num_classes: 3
""",
}
OUTPUTS = {"logs", "data", ".venv", "venv", ".git"}  # top-level folders that are not the project's files
CACHES = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}


def skipped(folder: str, top_level: bool) -> bool:
    return folder in CACHES or folder.endswith(".egg-info") or (top_level and folder in OUTPUTS)


def project_files(root: Path) -> dict[str, str]:
    """Every file of a project folder but its outputs and caches: {relative path: sha256}."""
    files = {}
    for folder, subfolders, names in os.walk(root):
        top = Path(folder) == root
        subfolders[:] = [d for d in subfolders if not skipped(d, top)]
        for name in names:
            path = Path(folder, name)
            files[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def test_the_example_is_a_dataset_module_and_its_config():
    [module, config] = EXAMPLE
    assert re.fullmatch(rf"src/{PACKAGE}/core/datasets/\w+\.py", module)
    assert config == f"configs/data/{Path(module).stem}.yaml"


@pytest.mark.slow
def test_a_dataset_added_as_the_readme_shows_trains_in_both_engines_and_goes_through_every_tool(
    tmp_path,
):
    project = tmp_path / "project"
    shutil.copytree(
        PROJECT_ROOT,
        project,
        ignore=lambda folder, names: [n for n in names if skipped(n, Path(folder) == PROJECT_ROOT)],
    )
    for path, text in EXAMPLE.items():
        (project / path).write_text(text)
    before, after = project_files(PROJECT_ROOT), project_files(project)
    added = sorted(set(after) - set(before))
    changed = sorted(path for path in before if after.get(path) != before[path])
    assert added == sorted(EXAMPLE) and changed == []  # the dataset took these two files, nothing else
    name = Path(added[0]).stem

    log_dir = tmp_path / "logs"
    # The copy's package first: the new module is in it, not in the package these tests import.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(project / "src"), os.environ.get("PYTHONPATH", "")])}

    def run(*arguments: str) -> str:
        command = [sys.executable, *arguments]
        result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{' '.join(command)}:\n{result.stderr[-3000:]}"
        return result.stdout

    imported = run("-c", f"import {PACKAGE}; print({PACKAGE}.__file__)").strip()
    logs = f"paths.log_dir={log_dir}"
    assert Path(imported).is_relative_to(project)
    for engine in ("raw", "lightning"):
        run("train.py", logs, f"data={name}", f"engine={engine}", *SHORT_RUN)
        [run_dir] = (log_dir / "train" / engine).iterdir()
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert 0.0 <= metrics["test/acc"] <= 1.0
    checkpoint = run_dir / "checkpoints" / "best.ckpt"

    # bake: if cookiecutter.include_deployment
    run("export.py", logs, f"ckpt_path={checkpoint}", "format=torch_export")
    [export_dir] = (log_dir / "export").iterdir()
    card = json.loads((export_dir / "model.json").read_text())
    assert card["classes"] == ["red", "green", "blue"] and card["data"] == name
    assert card["input"]["shape"] == ["batch", 3, 12, 12] and card["input"]["dtype"] == "float32"
    assert card["normalization"]["mean"] == [0.42] * 3 and card["normalization"]["std"] == [0.28] * 3

    from PIL import Image

    pixels = np.zeros((12, 12, 3), dtype=np.uint8)
    pixels[..., 2] = 255  # bright in the blue channel only
    Image.fromarray(pixels, "RGB").save(tmp_path / "blue.png")
    output = tmp_path / "predictions.json"
    run(
        "predict.py",
        logs,
        f"model_path={export_dir / 'model.pt2'}",
        f"inputs={tmp_path / 'blue.png'}",
        f"output={output}",
    )
    [prediction] = json.loads(output.read_text())["predictions"]
    assert list(prediction["probabilities"]) == ["red", "green", "blue"]
    assert prediction["label"] == ["red", "green", "blue"][prediction["class"]]

    # bake: endif
    run("evaluate.py", logs, f"ckpt_path={checkpoint}")
    [eval_dir] = (log_dir / "eval").iterdir()
    evaluated = json.loads((eval_dir / "metrics.json").read_text())
    assert np.array(evaluated["confusion_matrix"]).shape == (3, 3) and evaluated["samples"] == 90  # 15% of 600


# The grep: a dataset's name, as the registry spells it, in the project's Python.
def python_files(*folders: str) -> list[Path]:
    files = [path for folder in folders for path in (PROJECT_ROOT / folder).rglob("*.py")]
    files += [path for path in PROJECT_ROOT.glob("*.py")] if "." in folders else []
    parts = [path.relative_to(PROJECT_ROOT).parts for path in files]
    return sorted({p for p, (first, *_) in zip(files, parts, strict=True) if first not in OUTPUTS})


def names_a_dataset(value: object) -> bool:
    return isinstance(value, str) and value.lower() in datasets.names()


def docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring constants of a module, its classes and functions (prose: they may name a dataset)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def branches_on_a_name(tree: ast.AST) -> list[int]:
    """The lines that branch on a dataset's name: a condition that compares with one (`if name == "mnist"`, `x if
    name in ("mnist", ...) else y`), a table keyed by names, a `case "mnist":`. (An assert that a value is a name is
    no branch.)"""
    conditions = [
        test
        for node in ast.walk(tree)
        for test in ([node.test] if isinstance(node, (ast.If, ast.IfExp, ast.While)) else getattr(node, "ifs", []))
    ]
    constants = [
        node
        for condition in conditions
        for compare in ast.walk(condition)
        if isinstance(compare, ast.Compare)
        for operand in (compare.left, *compare.comparators)
        for node in (operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand])
    ]
    constants += [key for node in ast.walk(tree) if isinstance(node, ast.Dict) for key in node.keys if key]
    constants += [node.value for node in ast.walk(tree) if isinstance(node, ast.MatchValue)]
    return sorted({node.lineno for node in constants if isinstance(node, ast.Constant) and names_a_dataset(node.value)})


def test_nothing_outside_the_registry_branches_on_a_dataset_name():
    """No `if name == "mnist"`, no table by name, anywhere in the project's Python but the registry and its tests."""
    assert len(datasets.names()) >= 2  # the grep below looks for something
    offenders = [
        f"{path.relative_to(PROJECT_ROOT)}:{line}"
        for path in python_files(".")  # every folder of the project
        if not path.is_relative_to(REGISTRY_DIR) and path not in REGISTRY_TESTS
        for line in branches_on_a_name(ast.parse(path.read_text()))
    ]
    assert offenders == [], "ask the registry entry (core/datasets) instead of the name"


def test_the_package_names_no_dataset_outside_the_registry():
    """In src/ outside core/datasets/, no string of the code names a dataset (docstrings and comments may)."""
    pattern = re.compile(rf"\b({'|'.join(map(re.escape, datasets.names()))})\b", re.IGNORECASE)
    offenders = []
    for path in python_files("src"):
        if path.is_relative_to(REGISTRY_DIR):
            continue
        tree = ast.parse(path.read_text())
        prose = docstrings(tree)
        offenders += [
            f"{path.relative_to(PROJECT_ROOT)}:{node.lineno}: {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in prose
            and pattern.search(node.value)
        ]
    assert offenders == []


def test_the_grep_finds_a_branch_on_a_name():
    name = datasets.names()[0]
    code = "\n".join(
        [
            "if cfg.name == NAME:",
            "    pass",
            "TABLE = dict([(0, 1)]) or {NAME: 1}",
            "y = 1 if x in (NAME,) else 2",
            "assert x == NAME",
        ]
    )
    code = code.replace("NAME", repr(name))
    assert branches_on_a_name(ast.parse(code)) == [1, 3, 4]
