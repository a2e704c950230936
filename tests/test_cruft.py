"""Template updates with cruft (`cruft create`, `cruft check`, `cruft update`), for real: a git repository of the
template as it is now, bakes made by the `cruft` command, a user's commits, a later template commit. cruft
clones the template with git and renders it with cookiecutter's own functions (generate_context, prompt_for_config,
generate_files), loading local_extensions.py from the clone: the input rules and the sandbox apply as they do to
`cookiecutter`. No network: the template is a local path."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TEMPLATE

pytestmark = pytest.mark.timeout(600)

COMMAND_TIMEOUT = 180  # seconds for one cruft, cookiecutter or git command (one takes about a second unloaded)
USER_SEED, TEMPLATE_SEED = "seed: 7", "seed: 43"  # both edit configs/train.yaml's `seed: 42`: a conflict
NEW_OPTION = "include_update_example"  # a variable the later template commit adds to cookiecutter.json
UNTOUCHED_CHANGE = "# a line the later template commit adds to a file the user never touched\n"


def environment(tmp_path: Path) -> dict:
    """git with an identity and no user or system config; cookiecutter's config (replay files, clones) in tmp."""
    (tmp_path / "gitconfig").write_text("")
    (tmp_path / "cookiecutter.yaml").write_text(
        f"cookiecutters_dir: {tmp_path / 'cookiecutters'}\nreplay_dir: {tmp_path / 'replay'}\n")
    return {
        **os.environ,
        "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.com",
        "GIT_CONFIG_GLOBAL": str(tmp_path / "gitconfig"), "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CEILING_DIRECTORIES": str(tmp_path),  # a plain folder here is not inside some other repository
        "COOKIECUTTER_CONFIG": str(tmp_path / "cookiecutter.yaml"),
    }


def run(command: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if check:
        assert result.returncode == 0, f"{command}: {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def cruft(*args: str, cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "cruft", *args], cwd, env, check)


def git(*args: str, cwd: Path, env: dict) -> str:
    return run(["git", *args], cwd, env).stdout


@pytest.fixture
def env(tmp_path):
    return environment(tmp_path)


@pytest.fixture
def template_repo(tmp_path, env) -> Path:
    """The template's files as they are now (committed, changed or new; not the ignored ones), committed once."""
    repo = tmp_path / "template"
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], TEMPLATE, env).stdout
    for name in filter(None, listed.split("\0")):
        source = TEMPLATE / name
        if source.is_file():  # a file deleted but not yet committed is listed too
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    git("init", "-q", cwd=repo, env=env)
    git("add", "-A", cwd=repo, env=env)
    git("commit", "-q", "-m", "the template", cwd=repo, env=env)
    return repo


def head(repo: Path, env: dict) -> str:
    return git("rev-parse", "HEAD", cwd=repo, env=env).strip()


def files(root: Path) -> dict[str, tuple[bytes, bool]]:
    """Every file under root: its bytes and whether it is executable."""
    return {path.relative_to(root).as_posix(): (path.read_bytes(), os.access(path, os.X_OK))
            for path in sorted(root.rglob("*")) if path.is_file()}


def test_cruft_create_bakes_what_cookiecutter_bakes(tmp_path, template_repo, env):
    values = {"project_name": "Kept Up To Date", "dataset": "mnist", "default_engine": "raw", "include_tour": False}
    cruft("create", "--no-input", "--output-dir", str(tmp_path / "cruft"), str(template_repo), "--extra-context",
          json.dumps(values), cwd=tmp_path, env=env)
    crufted = tmp_path / "cruft" / "kept-up-to-date"
    run([sys.executable, "-m", "cookiecutter", "--no-input", "-o", str(tmp_path / "cookiecutter"), str(template_repo),
         *(f"{key}={'no' if value is False else value}" for key, value in values.items())], tmp_path, env)
    baked = tmp_path / "cookiecutter" / "kept-up-to-date"

    crufted_files = files(crufted)
    state = json.loads(crufted_files.pop(".cruft.json")[0])
    assert crufted_files.keys() == files(baked).keys()
    assert [name for name, content in crufted_files.items() if files(baked)[name] != content] == []
    assert "tour/README.md" not in crufted_files and "src/kept_up_to_date/engines/raw.py" in crufted_files

    commit = head(template_repo, env)
    assert state["template"] == str(template_repo) and state["commit"] == commit
    assert {key: state["context"]["cookiecutter"][key] for key in values} == values
    assert state["context"]["cookiecutter"]["_commit"] == commit


@pytest.mark.parametrize("in_git", [True, False], ids=["git-repository", "plain-folder"])
def test_cruft_update_brings_a_template_commit_and_keeps_the_users_work(tmp_path, template_repo, env, in_git):
    """A git repository: git's three-way merge, conflict markers where both sides changed a line. A plain folder:
    `git apply --reject`, the refused hunk in a .rej file beside the user's file. Never silently overwritten."""
    cruft("create", "--no-input", "--output-dir", str(tmp_path / "projects"), str(template_repo), cwd=tmp_path,
          env=env)
    project = tmp_path / "projects" / "pytorch-intro"
    if in_git:
        git("init", "-q", cwd=project, env=env)
        git("add", "-A", cwd=project, env=env)
        git("commit", "-q", "-m", "baked with cruft", cwd=project, env=env)

    # The user's work: a model of their own, a config value of their own.
    model = project / "src" / "pytorch_intro" / "core" / "models" / "tiny.py"
    model.write_text('"""My own model."""\n\nWIDTH = 3\n')
    config = project / "configs" / "train.yaml"
    assert config.read_text().count("\nseed: 42\n") == 1
    config.write_text(config.read_text().replace("\nseed: 42\n", f"\n{USER_SEED}\n"))
    untouched = project / "configs" / "model" / "mlp.yaml"
    untouched_before = untouched.read_text()
    if in_git:
        git("add", "-A", cwd=project, env=env)
        git("commit", "-q", "-m", "my model and my seed", cwd=project, env=env)
    assert "up to date" in cruft("check", cwd=project, env=env).stdout

    # The template moves on: the same config line, a file the user did not touch, and a new option.
    inner = template_repo / "{{cookiecutter.project}}"
    template_config = inner / "configs" / "train.yaml"
    template_config.write_text(template_config.read_text().replace("\nseed: 42\n", f"\n{TEMPLATE_SEED}\n"))
    with (inner / "configs" / "model" / "mlp.yaml").open("a") as file:
        file.write(UNTOUCHED_CHANGE)
    context = json.loads((template_repo / "cookiecutter.json").read_text())
    context = {NEW_OPTION: True, **context}  # the reloaded rules accept it (see local_extensions.Sandboxed)
    (template_repo / "cookiecutter.json").write_text(json.dumps(context, indent=2, ensure_ascii=False) + "\n")
    git("commit", "-q", "-a", "-m", "the template, later", cwd=template_repo, env=env)

    checked = cruft("check", cwd=project, env=env, check=False)
    assert checked.returncode == 1 and "out of date" in checked.stdout, checked.stdout + checked.stderr

    updated = cruft("update", "--skip-apply-ask", cwd=project, env=env)
    assert untouched.read_text() == untouched_before + UNTOUCHED_CHANGE
    assert model.read_text() == '"""My own model."""\n\nWIDTH = 3\n'
    state = json.loads((project / ".cruft.json").read_text())
    assert state["commit"] == head(template_repo, env) and state["context"]["cookiecutter"][NEW_OPTION] is True

    merged = config.read_text()
    assert USER_SEED in merged, merged
    if in_git:
        assert "Applied patch to 'configs/train.yaml' with conflicts." in updated.stderr, updated.stderr
        assert f"<<<<<<< ours\n{USER_SEED}\n=======\n{TEMPLATE_SEED}\n>>>>>>> theirs\n" in merged, merged
        status = git("status", "--porcelain", cwd=project, env=env).splitlines()
        assert "UU configs/train.yaml" in status and "M  configs/model/mlp.yaml" in status, status
        assert "my model and my seed" in git("log", "--format=%s", cwd=project, env=env)
        # The user settles the conflict their way and commits: the project is up to date.
        config.write_text(merged.replace(f"<<<<<<< ours\n{USER_SEED}\n=======\n{TEMPLATE_SEED}\n>>>>>>> theirs\n",
                                         f"{USER_SEED}\n"))
        git("add", "-A", cwd=project, env=env)
        git("commit", "-q", "-m", "the template's update", cwd=project, env=env)
        assert "up to date" in cruft("check", cwd=project, env=env).stdout
    else:
        assert TEMPLATE_SEED not in merged and "*.rej files" in updated.stdout + updated.stderr
        rejected = (project / "configs" / "train.yaml.rej").read_text()
        assert f"-seed: 42\n+{TEMPLATE_SEED}\n" in rejected, rejected
        assert [path.name for path in project.rglob("*.rej")] == ["train.yaml.rej"]


REFUSED = [
    ({"package": "1x"}, "error: package '1x' is not a lower-case Python identifier"),
    ({"project": "torch"}, "error: package 'torch' would shadow the module 'torch'"),
    ({"description": "Model {{ 7*7 }}"}, "error: description 'Model {{ 7*7 }}' contains '{{': template markers"),
    ({"project_name": "{{ cycler.__init__.__globals__.os.system('touch PWNED') }}"},
     "error: project_name \"{{ cycler.__init__.__globals__.os.system('touch PWNED') }}\" contains '{{'"),
    # JSON can give a list, which cookiecutter would render as a choice, Jinja and all
    ({"author": ["{{ 7*7 }}"]}, 'error: author ["{{ 7*7 }}"] is a list, not text: give a string'),
    ({"include_tour": ["{% if true %}yes{% endif %}"]}, "error: include_tour "),
    # a private key that cookiecutter.json has can be overwritten by --extra-context
    ({"_extensions": ["local_extensions.Sandboxed", "local_extensions.quoted"]},
     ("error: _extensions [\"local_extensions.Sandboxed\", \"local_extensions.quoted\"] is not this template's own "
      "_extensions (cookiecutter.json)")),
]


@pytest.mark.parametrize(("values", "line"), REFUSED, ids=[str(values) for values, _ in REFUSED])
def test_cruft_create_refuses_a_bad_value_in_one_line_and_writes_nothing(tmp_path, template_repo, env, values,
                                                                          line):
    result = cruft("create", "--no-input", "--output-dir", str(tmp_path / "out"), str(template_repo),
                   "--extra-context", json.dumps(values), cwd=tmp_path, env=env, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith(line) and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == "" and not (tmp_path / "out").exists() and not (tmp_path / "PWNED").exists()


def test_cruft_create_with_other_extensions_is_refused_by_the_pre_generate_hook(tmp_path, template_repo, env):
    """Extensions without Sandboxed load none of the rules: the pre-generate hook refuses the bake (its line, then
    cruft's traceback of the hook's failure), and cookiecutter removes the half-made project."""
    result = cruft("create", "--no-input", "--output-dir", str(tmp_path / "out"), str(template_repo),
                   "--extra-context", json.dumps({"_extensions": [], "package": "1x"}), cwd=tmp_path, env=env,
                   check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: _extensions is not this template's own _extensions"), result.stderr
    assert not list((tmp_path / "out").iterdir())
