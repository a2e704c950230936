"""export.py: a checkpoint of either engine as a torch.export program and an ONNX file, each reloaded, run and
compared with the PyTorch model on real test images before it is kept; a failed export is one line and leaves
nothing behind."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIG_DIR, run_dirs, run_script
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from {{ cookiecutter.package }}.core.data import DataPipeline
from {{ cookiecutter.package }}.core.errors import UserError
from {{ cookiecutter.package }}.workflows.exporting import export, load_trained

ENGINES = ("raw", "lightning")
HAS_ONNX = all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason='the export extra: pip install -e ".[export]"')


def checkpoint_of(short_runs, engine: str) -> Path:
    log_dir, _ = short_runs
    return run_dirs(log_dir, engine)[-1] / "checkpoints" / "best.ckpt"


def export_cfg(log_dir: Path, **keys):
    """configs/export.yaml's keys, as export.py gets them."""
    return OmegaConf.create(
        {
            "ckpt_path": None,
            "format": "torch_export",
            "engine": {"name": "raw"},
            "paths": {"log_dir": str(log_dir)},
            "check": {"batch_size": 64, "tolerance": 1e-5},
            **keys,
        }
    )


def new_run_dir(log_dir: Path) -> Path:
    """The folder Hydra creates for an export, with what it writes first."""
    run = log_dir / "export" / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("task: export\n")
    return run


def model_and_images(checkpoint: Path, count: int = 64) -> tuple[torch.nn.Module, torch.Tensor]:
    """The checkpoint's PyTorch model and its training run's first test images, from the data pipeline itself."""
    model, trained, _ = load_trained(checkpoint)
    pipeline = DataPipeline(trained.data, seed=trained.seed)
    pipeline.setup("test")
    return model, torch.stack([pipeline.test_set[index][0] for index in range(count)])


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_export_writes_checked_files_for_either_engine(engine, exports, short_runs):
    folder, result = exports[engine]
    assert result.returncode == 0, result.stderr[-3000:]
    card = json.loads((folder / "model.json").read_text())
    kinds = ["torch_export", "onnx"] if HAS_ONNX else ["torch_export"]
    assert sorted(card["files"]) == sorted(kinds) and (folder / ".hydra" / "config.yaml").is_file()
    assert card["input"] == {"name": "images", "shape": ["batch", 1, 8, 8], "dtype": "float32", "layout": "NCHW"}
    assert card["normalization"]["mean"] == [0.3] and card["normalization"]["std"] == [0.38]
    assert card["classes"] == [str(digit) for digit in range(10)] and card["written_by"] == engine
    for kind in kinds:
        check = card["checks"][kind]
        assert check["max_abs_diff"] <= 1e-5 and check["same_classes"] and check["samples"] == 64
        assert f"{kind}: {folder / card['files'][kind]} checked on 64 test images" in result.stdout
    if HAS_ONNX:
        assert card["onnx_opset"] >= 18
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no partial folder left

    # The files again, by hand: any batch size, the PyTorch model's logits within 1e-5 and the same classes.
    model, images = model_and_images(checkpoint_of(short_runs, engine))
    program = torch.export.load(folder / "model.pt2").module()
    for batch in (images[:3], images):
        with torch.no_grad():
            expected, got = model(batch), program(batch)
        assert (got - expected).abs().max() <= 1e-5 and torch.equal(got.argmax(1), expected.argmax(1))
    if HAS_ONNX:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        for batch in (images[:5], images):
            (got,) = session.run(None, {"images": batch.numpy()})
            with torch.no_grad():
                expected = model(batch).numpy()
            assert np.abs(got - expected).max() <= 1e-5 and (got.argmax(1) == expected.argmax(1)).all()


@needs_onnx
def test_a_failed_check_is_one_line_and_leaves_nothing(short_runs, tmp_path):
    """ONNX Runtime's logits differ from PyTorch's by ~1e-7: a tolerance of 1e-12 refuses the export."""
    log_dir = tmp_path / "logs"
    run = new_run_dir(log_dir)
    cfg = export_cfg(
        log_dir,
        ckpt_path=str(checkpoint_of(short_runs, "raw")),
        format="all",
        check={"batch_size": 16, "tolerance": 1e-12},
    )
    with pytest.raises(UserError) as refusal:
        export(cfg, run)
    message = str(refusal.value)
    assert "the onnx export differs from the PyTorch model" in message and "check.tolerance=1e-12" in message
    assert "\n" not in message
    assert sorted(p.name for p in (log_dir / "export").iterdir()) == ["run"]  # no partial folder
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == [".hydra", ".hydra/config.yaml"]


def test_onnx_without_the_export_extra_names_it(short_runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed: find_spec answers None
    log_dir = tmp_path / "logs"
    run = new_run_dir(log_dir)
    with pytest.raises(UserError) as refusal:
        export(export_cfg(log_dir, ckpt_path=str(checkpoint_of(short_runs, "raw")), format="onnx"), run)
    assert 'pip install -e ".[export]"' in str(refusal.value) and "onnxscript" in str(refusal.value)
    assert "format=torch_export needs nothing more" in str(refusal.value)


REFUSED = {
    "no ckpt_path": ({}, "ckpt_path is required"),
    "unknown format": (
        {"ckpt_path": "x.ckpt", "format": "tflite"},
        "format=tflite is not valid: one of torch_export, onnx, all",
    ),
    "bad tolerance": (
        {"ckpt_path": "x.ckpt", "check": {"batch_size": 8, "tolerance": 0}},
        "check.tolerance=0 is not valid: a number above 0",
    ),
    "no such file": ({"ckpt_path": "missing.ckpt"}, "ckpt_path=missing.ckpt: no such checkpoint file"),
    "not a checkpoint": ({"ckpt_path": "{text}"}, "cannot be loaded safely"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_bad_input_is_refused_before_any_output(case, tmp_path):
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    keys, expected = REFUSED[case]
    if "ckpt_path" in keys:
        keys = {**keys, "ckpt_path": keys["ckpt_path"].format(text=text)}
    log_dir = tmp_path / "logs"
    run = new_run_dir(log_dir)
    with pytest.raises(UserError) as refusal:
        export(export_cfg(log_dir, **keys), run)
    assert expected in str(refusal.value) and "\n" not in str(refusal.value)
    assert sorted(p.name for p in (log_dir / "export").iterdir()) == ["run"]


@pytest.mark.slow
def test_a_refused_export_leaves_no_folder(tmp_path):
    log_dir = tmp_path / "logs"
    result = run_script("export.py", log_dir, "ckpt_path=missing.ckpt")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ckpt_path=missing.ckpt: no such checkpoint")
    assert not (log_dir / "export").exists()


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("export", {"ckpt_path": None, "format": "torch_export", "check": {"batch_size": 64, "tolerance": 1e-5}}),
        ("predict", {"model_path": None, "inputs": None, "output": None, "batch_size": 256}),
        ("serve", {"model_path": None, "host": "127.0.0.1", "port": 8000, "max_body_bytes": 1_000_000}),
    ],
)
def test_the_deployment_configs_compose(name, keys):
    """export.py's, predict.py's and serve.py's configs (serve.py binds to 127.0.0.1 only by default)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=name)
    assert cfg.task == name and {key: OmegaConf.to_object(cfg)[key] for key in keys} == keys
