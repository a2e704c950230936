"""Nothing in a file runs code in the deployment tools (issue: untrusted files): checkpoints whose training config
names a `_target_` to run, in serve.py's loader and load_trained (export.py, predict.py, serve.py); model.pt2 archives
that carry a pickle or Python; and a .pt2 torch cannot load is one plain line."""

import re
from pathlib import Path

import pytest
from conftest import run_script
from hostile_archives import (
    export_folder,
    pt2_calling,
    pt2_with_guard_code,
    pt2_with_pickled_sample_inputs,
    pt2_with_pickled_weight,
    rewritten_pt2,
)
from hostile_files import VICTIM_BYTES, checkpoint, checkpoint_with_model, default_model_node
from test_hostile_files import assert_one_line, hostile_checkpoint

from {{ cookiecutter.package }}.core.errors import UserError
from {{ cookiecutter.package }}.workflows.exporting import load_trained
from {{ cookiecutter.package }}.workflows.prediction import load_model


@pytest.mark.parametrize("kind", ["torch.load", "builtins.open"])
def test_a_checkpoints_model_target_runs_nothing_in_serves_loader(kind, tmp_path):
    path, marker, victim, refused = hostile_checkpoint(kind, tmp_path)
    with pytest.raises(UserError, match=re.escape(refused)):
        load_model(str(path))  # serve.py's model loading, as serving.serve calls it
    assert not marker.exists() and victim.read_bytes() == VICTIM_BYTES


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "model.channels=[-1] is not valid"),  # a value the model's rule refuses
        (5, "has model=5: a mapping of model.* keys is expected"),
        ("[1, 2]", "is [1,2], not a mapping of keys"),
        (3, "cannot be read"),
        ("resolver", "never a resolver"),
    ],
    ids=["model-value", "model-not-a-mapping", "config-a-list", "config-not-text", "resolver"],
)
def test_a_checkpoints_config_values_obey_the_config_rules(config, message, tmp_path):
    """export.py, predict.py and serve.py load through load_trained; evaluate.py through the same reader."""
    if config is None:
        path = checkpoint_with_model(tmp_path, default_model_node(channels=[-1]))
    elif config == 5:
        path = checkpoint_with_model(tmp_path, 5)
    elif config == "resolver":
        path = checkpoint_with_model(tmp_path, default_model_node(dropout="${oc.env:HOME}"))
    else:
        path = checkpoint(tmp_path, config)
    with pytest.raises(UserError, match=re.escape(message)) as err:
        load_trained(path)
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def genuine_pt2(tmp_path_factory) -> Path:
    return export_folder(tmp_path_factory.mktemp("export"))


HOSTILE_ARCHIVES = {
    "pickled sample inputs": (pt2_with_pickled_sample_inputs, "sample inputs that are not plain tensors"),
    "guard code": (pt2_with_guard_code, "guard code"),
    "pickled weight": (pt2_with_pickled_weight, "as a pickle"),
}


@pytest.mark.parametrize("case", list(HOSTILE_ARCHIVES))
def test_a_hostile_pt2_runs_nothing_in_predict_and_serves_loader(case, genuine_pt2, tmp_path):
    craft, message = HOSTILE_ARCHIVES[case]
    marker = tmp_path / "marker"
    archive = craft(genuine_pt2, tmp_path / "hostile" / "model.pt2", marker)
    with pytest.raises(UserError, match=message) as err:
        load_model(str(archive))  # predict.py's and serve.py's loader
    assert "trust_archive=true" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("target", ["torch.load", "torch.serialization.os.system", "torch.ops.aten.from_file.default"])
def test_a_pt2_whose_graph_calls_anything_but_aten_is_refused(target, genuine_pt2, tmp_path):
    archive = pt2_calling(genuine_pt2, tmp_path / "hostile" / "model.pt2", target)
    with pytest.raises(UserError, match="not an ATen operator"):
        load_model(str(archive))


def test_a_pt2_with_an_unexpected_entry_is_refused(genuine_pt2, tmp_path):
    archive = rewritten_pt2(
        genuine_pt2, tmp_path / "hostile" / "model.pt2", {"data/aotinductor/model/x.so": b"\x7fELF"}
    )
    with pytest.raises(UserError, match="holds the entry"):
        load_model(str(archive))


@pytest.mark.slow
def test_predict_py_refuses_the_issues_pt2_in_one_line_and_runs_nothing(genuine_pt2, tmp_path):
    marker = tmp_path / "marker"
    archive = pt2_with_pickled_sample_inputs(genuine_pt2, tmp_path / "hostile" / "model.pt2", marker)
    result = run_script("predict.py", tmp_path / "logs", f"model_path={archive}", f"inputs={tmp_path}")
    assert result.returncode == 1
    assert_one_line(result.stderr, "sample inputs that are not plain tensors", "trust_archive=true")
    assert not marker.exists()


def test_trust_archive_loads_unchecked_and_takes_only_a_boolean(genuine_pt2, tmp_path):
    archive = rewritten_pt2(genuine_pt2, tmp_path / "other" / "model.pt2", {"extra/note.txt": b"made by me"})
    with pytest.raises(UserError, match="holds the entry"):
        load_model(str(archive))
    assert load_model(str(archive), trust_archive=True).classes  # the user vouches for it: loaded as is
    with pytest.raises(UserError, match="trust_archive=yes is not valid: one of true, false"):
        load_model(str(archive), trust_archive="yes")


@pytest.mark.slow
def test_a_pt2_torch_cannot_load_is_one_line_without_torchs_warning(genuine_pt2, tmp_path):
    """torch.export.load logs a warning with a traceback before it raises: silenced, our line says it."""
    broken = rewritten_pt2(genuine_pt2, tmp_path / "broken" / "model.pt2", {"archive_version": b"999"})
    result = run_script(
        "predict.py", tmp_path / "logs", f"model_path={broken}", f"inputs={tmp_path}", "trust_archive=true"
    )
    assert result.returncode == 1
    assert_one_line(result.stderr, "cannot be loaded")
