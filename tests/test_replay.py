"""Replay files (`cookiecutter --replay-file`, or replay=True with a replay dir) obey the rules of the command line
and the prompt: cookiecutter takes a replay file's values as they are, unrendered and unchecked, and its private
keys (`_extensions`, `_copy_without_render`, ...) would steer the rendering. Each case is refused in one line that
names the value from the file, and nothing is written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cookiecutter.exceptions import FailedHookException
from cookiecutter.main import cookiecutter

from conftest import CONTEXT, TEMPLATE

# What cookiecutter itself writes to a replay file after a bake with the defaults.
VALID = {
    **{key: value[0] if isinstance(value, list) and not key.startswith("_") else value
       for key, value in CONTEXT.items() if not key.startswith("__")},
    "project": "pytorch-intro", "package": "pytorch_intro", "_template": str(TEMPLATE), "_output_dir": "/elsewhere",
    "_repo_dir": str(TEMPLATE), "_checkout": None,
}

REFUSED = [
    ({"dataset": "evil"}, "error: dataset 'evil' is not one of digits, mnist, fashion_mnist, cifar10"),
    ({"default_engine": "evil"}, "error: default_engine 'evil' is not one of lightning, raw"),
    ({"license": "GPL"}, "error: license 'GPL' is not one of MIT, BSD-3-Clause, Apache-2.0, none"),
    ({"include_tour": "maybe"}, "error: include_tour 'maybe' is not true or false (a JSON boolean in a replay file)"),
    ({"include_tour": "no"}, "error: include_tour 'no' is not true or false (a JSON boolean in a replay file)"),
    ({"package": ["torch"]}, 'error: package ["torch"] is a list, not text: give a string'),
    ({"project": ["..", "x"]}, 'error: project ["..", "x"] is a list, not text: give a string'),
    ({"author": 5}, "error: author 5 is a number, not text: give a string"),
    ({"project_name": None}, "error: project_name null is null, not text: give a string"),
    ({"description": {"a": 1}}, 'error: description {"a": 1} is an object, not text: give a string'),
    ({"dataset": ["mnist"]}, 'error: dataset ["mnist"] is not one of digits, mnist, fashion_mnist, cifar10'),
    ({"package": "torch"}, "error: package 'torch' would shadow the module 'torch'"),
    ({"project": "../x"}, "error: project '../x' is not a valid folder/distribution name"),
    ({"evil": 1}, "error: evil is not a variable of this template (cookiecutter.json): remove it"),
    # A replay file is never rendered: the template's own expression would become a folder named after it.
    ({"package": CONTEXT["package"]}, f"error: package {CONTEXT['package']!r} contains '{{{{'"),
    ({"_copy_without_render": ["*"]}, 'error: _copy_without_render ["*"] is not this template\'s own '
                                      "_copy_without_render (cookiecutter.json): keys that start with '_' steer how "
                                      "the template renders and cannot be set; remove it from the replay file"),
    ({"_jinja2_env_vars": {"variable_start_string": "<<"}}, "error: _jinja2_env_vars "),
    ({"_new_lines": "\r\n"}, "error: _new_lines "),
    ({"_extensions": [*CONTEXT["_extensions"], "jinja2.ext.do"]}, "error: _extensions "),
    ({"__prompts__": {"project_name": "x"}}, "error: __prompts__ "),
]


def bake(tmp_path: Path, changes: dict) -> Path:
    replay = tmp_path / "replay" / "changed.json"
    replay.parent.mkdir(exist_ok=True)
    replay.write_text(json.dumps({"cookiecutter": {**VALID, **changes}}))
    return replay


def config(tmp_path: Path) -> Path:
    """Replay files and clones in this test's folder, not in ~."""
    path = tmp_path / "cookiecutter-config.yaml"
    path.write_text(f"cookiecutters_dir: {tmp_path / 'cookiecutters'}\nreplay_dir: {tmp_path / 'replay'}\n")
    return path


@pytest.mark.parametrize(("changes", "line"), REFUSED, ids=[str(c) for c, _ in REFUSED])
def test_a_replay_value_that_breaks_a_rule_is_refused_in_one_line(tmp_path, changes, line):
    replay = bake(tmp_path, changes)
    with pytest.raises(FailedHookException) as refused:
        cookiecutter(str(TEMPLATE), replay=str(replay), output_dir=str(tmp_path / "out"),
                     config_file=str(config(tmp_path)))
    assert str(refused.value).startswith(line) and "\n" not in str(refused.value), str(refused.value)
    assert not (tmp_path / "out").exists()


def test_a_valid_replay_file_bakes_what_it_says(tmp_path):
    """The rules refuse nothing that cookiecutter's own replay files hold: a bake replays as it was."""
    replay = bake(tmp_path, {"dataset": "mnist", "include_tour": False, "project": "replayed", "package": "again"})
    project = Path(cookiecutter(str(TEMPLATE), replay=str(replay), output_dir=str(tmp_path / "out"),
                                config_file=str(config(tmp_path))))
    assert project == tmp_path / "out" / "replayed" and (project / "src" / "again").is_dir()
    assert not (project / "tour").exists() and "data: mnist" in (project / "configs" / "train.yaml").read_text()


@pytest.mark.parametrize("extensions", [[], ["jinja2.ext.do"], CONTEXT["_extensions"][1:]])
def test_a_replay_file_that_replaces_the_extensions_is_refused_by_the_pre_generate_hook(tmp_path, extensions):
    """Without the template's extensions nothing checks the values while cookiecutter renders: the pre-generate
    hook, rendered with Jinja's own filters only, refuses the file (cookiecutter logs its hook failure first)."""
    replay = bake(tmp_path, {"_extensions": extensions, "_copy_without_render": ["*"], "dataset": "evil"})
    result = subprocess.run([sys.executable, "-m", "cookiecutter", "--replay-file", str(replay), "-o",
                             str(tmp_path / "out"), str(TEMPLATE)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COOKIECUTTER_CONFIG": str(config(tmp_path))})
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: _extensions ") and last.endswith(
        "is not this template's own _extensions (cookiecutter.json): keys that start with '_' steer how the "
        "template renders and cannot be set; remove it from the replay file"), result.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_the_replay_file_of_the_cli_is_refused_in_one_line(tmp_path):
    """Through the command line: exit code 1, the one line, no traceback, nothing written."""
    replay = bake(tmp_path, {"_copy_without_render": ["*"]})
    result = subprocess.run([sys.executable, "-m", "cookiecutter", "--replay-file", str(replay), "-o",
                             str(tmp_path / "out"), str(TEMPLATE)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COOKIECUTTER_CONFIG": str(config(tmp_path))})
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert result.stdout.strip() == REFUSED[15][1]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("given", "line"), [
    (["project_name=🔥 Torch 🚀"], "error: project_name '🔥 Torch 🚀' gives no usable package name: 'torch', derived "
                                  "from it, would shadow the module 'torch'"),
    (["project=torch"], "error: project 'torch' gives no usable package name: 'torch', derived from it, would "
                        "shadow the module 'torch'"),
    (["project_name=🔥 🚀 !!", "project=-x"], "error: project '-x' is not a valid folder/distribution name"),
])
def test_a_refused_derived_name_names_the_value_the_user_gave(tmp_path, given, line):
    """package follows from project, project from project_name: a refusal names what was typed, and says to pass
    package=/project=."""
    result = subprocess.run([sys.executable, "-m", "cookiecutter", "--no-input", "-o", str(tmp_path / "out"),
                             str(TEMPLATE), *given], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COOKIECUTTER_CONFIG": str(config(tmp_path))})
    assert result.returncode == 1 and result.stdout.strip().startswith(line), result.stdout + result.stderr
    if "derived" in line:
        assert result.stdout.strip().endswith("pass package=<name> (and project=<name>) as well")
    assert "\n" not in result.stdout.strip() and not (tmp_path / "out").exists()
