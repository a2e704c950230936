"""predict.py: an exported model or a checkpoint of either engine predicts image files and .npy arrays with exactly
the preprocessing of training; a bad input is one line naming it, and the others are still predicted."""

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_dirs, run_script
from omegaconf import OmegaConf

from {{ cookiecutter.package }}.core.errors import UserError
from {{ cookiecutter.package }}.workflows.exporting import load_trained
from {{ cookiecutter.package }}.workflows.prediction import predict

ENGINES = ("raw", "lightning")
HAS_ONNX = importlib.util.find_spec("onnxruntime") is not None
KINDS = ("model.pt2", "model.onnx", "best.ckpt") if HAS_ONNX else ("model.pt2", "best.ckpt")


def model_file(exports, short_runs, engine: str, kind: str) -> Path:
    folder, result = exports[engine]
    assert result.returncode == 0, result.stderr[-3000:]
    if kind == "best.ckpt":
        return run_dirs(short_runs[0], engine)[-1] / "checkpoints" / "best.ckpt"
    return folder / kind


def predict_cfg(**keys):
    """configs/predict.yaml's keys, as predict.py gets them."""
    return OmegaConf.create({"model_path": None, "inputs": None, "output": None, "batch_size": 256, **keys})


def expected_probabilities(checkpoint: Path, images: torch.Tensor) -> np.ndarray:
    model, _, _ = load_trained(checkpoint)
    with torch.no_grad():
        return torch.softmax(model(images).double(), dim=1).numpy()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("engine", ENGINES)
def test_predictions_are_the_models_on_the_training_preprocessing(
    engine, kind, exports, short_runs, digit_inputs, tmp_path, capsys
):
    path = model_file(exports, short_runs, engine, kind)
    results, refused = predict(predict_cfg(model_path=str(path), inputs=str(digit_inputs["folder"])), tmp_path)
    checkpoint = model_file(exports, short_runs, engine, "best.ckpt")
    by_name = {result["input"]: result for result in results}

    # The .npy stack holds the test images as floats in [0, 1]: predict.py's preprocessing gives the training
    # tensors, so the probabilities are the PyTorch model's on the data pipeline's own test images.
    expected = expected_probabilities(checkpoint, digit_inputs["tensors"])
    for index, row in enumerate(expected):
        result = by_name[f"{digit_inputs['stack']}[{index}]"]
        assert result["class"] == row.argmax() and result["label"] == str(row.argmax())
        assert np.abs(np.array(list(result["probabilities"].values())) - row).max() <= 1e-6
    # The PNG files hold the same images rounded to 8 bits: (round(pixel * 255) / 255 - mean) / std.
    rounded = torch.from_numpy(np.round(digit_inputs["pixels"] * 255) / 255).float().unsqueeze(1)
    expected = expected_probabilities(checkpoint, (rounded - 0.3) / 0.38)
    for png, row in zip(digit_inputs["pngs"], expected, strict=True):
        result = by_name[str(png)]
        assert result["class"] == row.argmax() and result["probability"] == pytest.approx(row.max(), abs=1e-6)

    assert len(results) == 16
    assert {Path(name).name: reason for name, reason in refused}.keys() == digit_inputs["bad"].keys()
    for name, reason in refused:
        assert digit_inputs["bad"][Path(name).name] in reason
    err = capsys.readouterr().err
    assert all(f"skipped {digit_inputs['folder'] / name}: " in err for name in digit_inputs["bad"])
    written = json.loads((tmp_path / "predictions.json").read_text())
    assert written["predictions"] == results and len(written["skipped"]) == 4


def test_csv_output_has_a_row_per_input_and_a_column_per_class(exports, short_runs, digit_inputs, tmp_path):
    output = tmp_path / "out" / "predictions.csv"
    path = model_file(exports, short_runs, "raw", "model.pt2")
    results, _ = predict(
        predict_cfg(model_path=str(path), inputs=str(digit_inputs["pngs"][0]), output=str(output)), tmp_path
    )
    rows = list(csv.DictReader(output.open()))
    assert len(rows) == 1 and rows[0]["input"] == str(digit_inputs["pngs"][0])
    assert int(rows[0]["class"]) == results[0]["class"]
    assert [key for key in rows[0] if key.startswith("p_")] == [f"p_{digit}" for digit in range(10)]
    assert float(rows[0][f"p_{results[0]['class']}"]) == pytest.approx(results[0]["probability"])


def test_bad_arguments_are_one_line(exports, short_runs, digit_inputs, tmp_path):
    pt2 = model_file(exports, short_runs, "raw", "model.pt2")
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(pt2, alone / "model.pt2")  # without its model.json
    (tmp_path / "empty").mkdir()
    cases = [
        ({"inputs": str(digit_inputs["folder"])}, "model_path is required"),
        ({"model_path": str(tmp_path / "missing.pt2"), "inputs": "x"}, "missing.pt2: no such file"),
        ({"model_path": str(alone / "model.pt2"), "inputs": "x"}, "no model.json beside it"),
        ({"model_path": str(pt2), "inputs": str(tmp_path / "nothing")}, "nothing: no such file or folder"),
        ({"model_path": str(pt2), "inputs": str(tmp_path / "empty")}, "the folder holds no files"),
        ({"model_path": str(pt2), "inputs": "x", "output": "out.txt"}, "output=out.txt is not valid"),
        ({"model_path": str(pt2), "inputs": str(digit_inputs["folder"] / "notes.txt")}, "none of its 1 files"),
    ]
    for keys, message in cases:
        with pytest.raises(UserError) as refusal:
            predict(predict_cfg(**keys), tmp_path / "run")
        assert message in str(refusal.value) and "\n" not in str(refusal.value), keys
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_predict_py_predicts_the_rest_and_names_each_bad_input(exports, short_runs, digit_inputs, tmp_path):
    log_dir = tmp_path / "logs"
    path = model_file(exports, short_runs, "lightning", KINDS[1])
    result = run_script("predict.py", log_dir, f"model_path={path}", f"inputs={digit_inputs['folder']}")
    assert result.returncode == 1, result.stderr[-3000:]  # some inputs were skipped
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 4 and "Traceback" not in result.stderr
    assert sum(line.startswith(str(digit_inputs["folder"])) for line in result.stdout.splitlines()) == 16
    (run,) = (log_dir / "predict").iterdir()
    assert len(json.loads((run / "predictions.json").read_text())["predictions"]) == 16


@pytest.mark.slow
def test_predict_py_refuses_an_empty_folder_and_leaves_no_folder(exports, short_runs, tmp_path):
    log_dir, empty = tmp_path / "logs", tmp_path / "empty"
    empty.mkdir()
    path = model_file(exports, short_runs, "raw", "model.pt2")
    result = run_script("predict.py", log_dir, f"model_path={path}", f"inputs={empty}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: inputs={empty}: the folder holds no files; give a folder of images or .npy files"
    )
    assert not (log_dir / "predict").exists()
