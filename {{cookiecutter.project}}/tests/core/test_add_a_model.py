"""A new model through the documented extension point only (README: Add your own model): its two code blocks, a
module in core/models/ and a config in configs/model/, written into a copy of the project, which then trains it in
each engine and takes its checkpoints through evaluate.py{% if cookiecutter.include_deployment %}, export.py and predict.py{% endif %}."""

import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, SHORT_RUN

# Not the project: what running it leaves behind (top-level folders; caches anywhere), and what a copy never needs.
RUN_OUTPUTS = ("logs", "data", "outputs", ".venv", ".git")
CACHES = ("__pycache__", ".pytest_cache", ".ruff_cache")


# The README's "Add your own model", file by file (the template's own tests hold the README to these).
EXAMPLE = {
    "src/{{ cookiecutter.package }}/core/models/linear.py": """\
# src/{{ cookiecutter.package }}/core/models/linear.py
import torch
from torch import nn

from .checks import PROBABILITY, require


class LinearClassifier(nn.Module):  # logistic regression on the flattened image
    def __init__(self, in_channels: int, image_size: int, num_classes: int, dropout: float = 0.0) -> None:
        require("dropout", dropout, PROBABILITY)  # model.dropout=2: one line, before any work
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_channels * image_size**2, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
""",
    "configs/model/linear.yaml": """\
# configs/model/linear.yaml
_target_: {{ cookiecutter.package }}.core.models.linear.LinearClassifier
in_channels: ${data.channels}
image_size: ${data.image_size}
num_classes: ${data.num_classes}
dropout: 0.1
""",
}


def left_out(parts: tuple[str, ...]) -> bool:
    return parts[0] in RUN_OUTPUTS or bool(set(parts) & set(CACHES))


def copy_project(source: Path, target: Path) -> None:
    def ignored(folder: str, names: list[str]) -> set[str]:
        return {name for name in names if left_out((*Path(folder).relative_to(source).parts, name))}

    shutil.copytree(source, target, ignore=ignored)


def project_files(root: Path) -> set[str]:
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and not left_out(path.relative_to(root).parts)
    }


def run(copy: Path, script: str, *overrides: str) -> subprocess.CompletedProcess:
    """`python <script>` in the copy, importing the copy's own package first."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(copy / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, script, f"paths.log_dir={copy / 'logs'}", *overrides]
    result = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_a_model_added_as_the_readme_says_goes_through_every_tool(tmp_path):
    files = dict(EXAMPLE)
    [module] = [path for path in files if path.endswith(".py")]
    [config] = [path for path in files if path.startswith("configs/model/")]
    assert module.startswith("src/") and "/core/models/" in module and len(files) == 2
    name = Path(config).stem

    copy = tmp_path / "project"
    copy_project(PROJECT_ROOT, copy)
    for path, text in files.items():
        assert not (copy / path).exists(), f"{path} is already in the project"
        (copy / path).write_text(text)
    # The copy is the project plus exactly the two files, nothing else edited.
    assert project_files(copy) - project_files(PROJECT_ROOT) == {module, config}
    assert project_files(PROJECT_ROOT) <= project_files(copy)
    common = sorted(project_files(PROJECT_ROOT))
    _, changed, unreadable = filecmp.cmpfiles(PROJECT_ROOT, copy, common, shallow=False)
    assert changed == [] and unreadable == []
    # bake: if cookiecutter.include_deployment

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for index in range(3):
        pixels = np.round(digits.images[index] * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(inputs / f"digit_{digits.target[index]}_{index}.png")
    # bake: endif

    for engine in ("raw", "lightning"):
        run(copy, "train.py", f"model={name}", f"engine={engine}", "data=digits", *SHORT_RUN)
        [run_dir] = (copy / "logs" / "train" / engine).iterdir()
        trained = json.loads((run_dir / "metrics.json").read_text())
        assert trained["engine"] == engine and 0 <= trained["test/acc"] <= 1
        assert f".core.models.{name}." in (run_dir / ".hydra" / "config.yaml").read_text()

        evaluated = run(copy, "evaluate.py", "ckpt_path=last", f"engine={engine}")
        assert f"engine={engine} test/acc=" in evaluated.stdout
        # bake: if cookiecutter.include_deployment

        run(copy, "export.py", "ckpt_path=last", f"engine={engine}", "format=torch_export")
        export_dir = max((copy / "logs" / "export").iterdir())
        card = json.loads((export_dir / "model.json").read_text())
        assert card["model"].endswith(f".core.models.{name}.{card['model'].rsplit('.', 1)[1]}")

        output = tmp_path / f"predictions_{engine}.json"
        run(copy, "predict.py", f"model_path={export_dir / 'model.pt2'}", f"inputs={inputs}", f"output={output}")
        predicted = json.loads(output.read_text())
        assert len(predicted["predictions"]) == 3 and predicted["skipped"] == [], predicted
        # bake: endif
