"""Bake the template with its defaults and with each value of every option; refuse every bad input."""

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import CONTEXT, TEMPLATE

TOUR_FILES = {
    "tour/00_why_pytorch.py", "tour/01_tensors.py", "tour/02_autograd.py", "tour/03_nn.py", "tour/04_data.py",
    "tour/05_training_loop.py", "tour/06_saving_loading.py", "tour/07_devices.py", "tour/08_tensorboard.py",
    "tour/09_ecosystem.py", "tour/10_debugging.py", "tour/11_vs_other_frameworks.py", "tour/12_further_learning.py",
    "tour/outline.md", "tour/README.md",
    "tests/test_tour.py",
}
# The package, layer by layer (bottom first), and the tests that mirror it.
PACKAGE_FILES = {f"src/pytorch_intro/{name}.py" for name in (
    "__init__", "doctor",
    "core/__init__", "core/data", "core/errors", "core/task", "core/tensor_loader",
    *(f"core/datasets/{name}" for name in ("__init__", "_files", "_torchvision", "cifar10", "digits", "mnist")),
    *(f"core/models/{name}" for name in ("__init__", "checks", "cnn", "mlp", "resnet")),
    *(f"run/{name}" for name in ("__init__", "checkpoint", "config_rules", "console", "device", "distributed",
                                 "guards", "rundir")),
    "watching/__init__", "watching/loggers", "watching/summaries",
    "engines/__init__", "engines/minimal", "engines/fabric", "engines/raw", "engines/lightning",
    "engines/lightning_parity",
    *(f"workflows/{name}" for name in ("__init__", "comparison", "evaluation", "launch", "worker")),
)}
TEST_FILES = {f"tests/{name}.py" for name in (
    "conftest", "datasets_on_disk", "in_process", "workflows/hostile_files",
    "test_configs", "test_doctor", "test_experiments", "test_layers", "test_tooling",
    "core/test_add_a_dataset", "core/test_add_a_model", "core/test_data", "core/test_tensor_loader",
    *(f"engines/test_{name}" for name in ("debug", "device_settings", "engines", "ladder", "lightning_parity",
                                          "parity", "random_parity", "raw_engine", "raw_startup", "token_inputs")),
    "run/test_ddp", "run/test_kill", "run/test_multinode", "run/test_outputs", "run/test_run_folders",
    "run/test_validation",
    "watching/test_loggers", "watching/test_tensorboard", "watching/test_tensorboard_browser",
    *(f"workflows/test_{name}" for name in ("compare", "evaluate", "hostile_files")),
    "gpu/test_gpu",
)}
CONFIG_FILES = {f"configs/{name}.yaml" for name in (
    "train", "eval", "compare",
    "callbacks/default", "callbacks/early_stopping", "hydra/default", "paths/default",
    *(f"engine/{name}" for name in ("minimal", "fabric", "raw", "lightning")),
    *(f"experiment/{name}" for name in ("digits", "mnist", "fashion_mnist", "cifar10")),
    *(f"data/{name}" for name in ("digits", "mnist", "fashion_mnist", "cifar10")),
    *(f"debug/{name}" for name in ("none", "anomaly", "fdr", "limit", "overfit", "profiler")),
    *(f"logger/{name}" for name in ("tensorboard", "csv", "many", "none")),
    *(f"model/{name}" for name in ("mlp", "cnn", "resnet")),
    *(f"optimizer/{name}" for name in ("sgd", "adam", "adamw", "rmsprop")),
    *(f"scheduler/{name}" for name in ("none", "step", "cosine", "onecycle", "plateau")),
    *(f"trainer/{name}" for name in ("default", "cpu", "cuda", "gpu", "mps", "ddp", "ddp_cpu")),
)}
# The files each include_* option adds (hooks/post_gen_project.py removes them when it is off).
OPTION_FILES = {
    "include_tour": TOUR_FILES,
    "include_deployment": {
        "export.py", "predict.py", "serve.py", "configs/export.yaml", "configs/predict.yaml", "configs/serve.yaml",
        *(f"src/pytorch_intro/workflows/{name}.py" for name in ("exporting", "prediction", "serving")),
        *(f"tests/workflows/{name}.py" for name in ("test_export", "test_predict", "test_serve", "hostile_archives",
                                                    "test_hostile_archives")),
    },
    "include_search": {"search.py", "configs/search.yaml", "configs/hparams_search/optuna.yaml",
                       "src/pytorch_intro/workflows/hparam_search.py", "tests/workflows/test_search.py"},
    "include_benchmarks": {
        *(f"benchmarks/{name}" for name in ("README.md", "engine_overhead.py", "data_loading.py", "gpu.py",
                                            "gpu_check.py")),
        "tests/test_benchmark.py", "tests/test_loader_benchmarks.py",
    },
    "include_slurm": {"slurm/train.sbatch", "configs/hydra/launcher/slurm.yaml", "tests/test_slurm.py"},
    "include_extra_loggers": {"configs/logger/mlflow.yaml", "configs/logger/wandb.yaml",
                              "src/pytorch_intro/watching/extra_loggers.py", "tests/watching/test_extra_loggers.py"},
}
EXPECTED_FILES = PACKAGE_FILES | TEST_FILES | CONFIG_FILES | set().union(*OPTION_FILES.values()) | {
    ".github/workflows/ci.yml", ".gitignore", ".pre-commit-config.yaml", ".vscode/launch.json", "LICENSE",
    "README.md", "COMPARISON.md", "Makefile", "pyproject.toml", "train.py", "evaluate.py", "compare.py",
}
# Every value but the default (the first), for every choice variable; booleans flipped.
OPTION_VALUES = [(key, value) for key, values in CONTEXT.items() if isinstance(values, list) and not key.startswith("_") for value in values[1:]]
OPTION_VALUES += [(key, not value) for key, value in CONTEXT.items() if isinstance(value, bool)]


def file_set(project: Path) -> set[str]:
    return {p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()}


def check_rendered_and_valid(project: Path) -> None:
    """No template markers left, and every TOML, YAML and Python file parses."""
    for path in project.rglob("*"):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\{\{|\{%|\{#", text), f"unrendered template marker in {path}"
        assert "cookiecutter" not in text, f"cookiecutter variable left in {path}"
        if path.suffix == ".toml":
            tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            yaml.safe_load(text)
        elif path.suffix == ".py":
            ast.parse(text, filename=str(path))


def ruff_check(project: Path) -> None:
    """What the generated CI, `make lint` and pre-commit run: the lint rules and the formatter's layout."""
    for command in (["check"], ["format", "--check"]):
        result = subprocess.run([sys.executable, "-m", "ruff", *command, "--no-cache", "."], cwd=project,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_default_bake_has_exactly_the_expected_files(default_bake):
    assert file_set(default_bake) == EXPECTED_FILES
    assert default_bake.name == "pytorch-intro"
    check_rendered_and_valid(default_bake)
    ruff_check(default_bake)
    train_yaml = yaml.safe_load((default_bake / "configs" / "train.yaml").read_text())
    assert {"engine": "lightning"} in train_yaml["defaults"] and {"data": "digits"} in train_yaml["defaults"]
    pyproject = tomllib.loads((default_bake / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "pytorch-intro"
    assert pyproject["project"]["license"] == "MIT"


def test_every_option_is_covered():
    assert {key for key, _ in OPTION_VALUES} == {"dataset", "default_engine", "license", *OPTION_FILES}


@pytest.mark.parametrize(("key", "value"), OPTION_VALUES, ids=[f"{k}={v}" for k, v in OPTION_VALUES])
def test_each_option_value_bakes(cookies, key, value):
    result = cookies.bake(template=str(TEMPLATE), extra_context={key: value})
    assert result.exit_code == 0, result.exception
    project = result.project_path
    expected = set(EXPECTED_FILES)
    if (key, value) == ("license", "none"):
        expected.discard("LICENSE")
    if key in OPTION_FILES and not value:
        expected -= OPTION_FILES[key]
    assert file_set(project) == expected
    check_rendered_and_valid(project)
    ruff_check(project)

    defaults = yaml.safe_load((project / "configs" / "train.yaml").read_text())["defaults"]
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    readme = (project / "README.md").read_text()
    if key == "dataset":
        assert {"data": value} in defaults
    elif key == "default_engine":
        assert {"engine": value} in defaults
    elif key == "license" and value == "none":
        assert "license" not in pyproject and "## License" not in readme
    elif key == "license":
        first_line = {"BSD-3-Clause": "BSD 3-Clause License", "Apache-2.0": "Apache License"}[value]
        assert (project / "LICENSE").read_text().strip().startswith(first_line)
        assert pyproject["license"] == value
    elif key == "include_tour":
        assert "tour/" not in readme


def test_python_string_is_the_literal_ruff_format_keeps():
    """__init__.py's PROJECT_NAME: the value back from the literal, and a literal that ruff format leaves as it is
    (it prefers double quotes unless single ones need fewer escapes)."""
    sys.path.insert(0, str(TEMPLATE))
    try:
        from jinja2 import Environment
        from local_extensions import python_string
    finally:
        sys.path.remove(str(TEMPLATE))
    values = ['Say "hi"', "It's", "\"a\" 'b'", "''\"", 'Ünïcode "Net" \\ back\'slash', "plain", "back\\slash", "x\u200by"]
    render = Environment(extensions=[python_string]).from_string("{{ value | python_string }}").render
    literals = [render(value=value) for value in values]
    assert [ast.literal_eval(literal) for literal in literals] == values
    source = "".join(f"NAME = {literal}\n" for literal in literals)
    formatted = subprocess.run([sys.executable, "-m", "ruff", "format", "--no-cache", "--stdin-filename", "name.py",
                                "-"], input=source, capture_output=True, text=True, check=True).stdout
    assert formatted == source


ODD_TEXT = {
    "project_name": 'Ünïcode "Net" \\ back\'slash',
    "description": 'Say "hi" \\ to ünïcode, émoji 🤖 and a tab\there',
    "author": "Seán O'Brien \"Bob\" \\",
}


def test_quotes_backslashes_and_unicode_bake_into_valid_files(cookies):
    result = cookies.bake(template=str(TEMPLATE), extra_context=ODD_TEXT)
    assert result.exit_code != 0  # a tab is a control character: refused ...
    result = cookies.bake(template=str(TEMPLATE), extra_context={**ODD_TEXT, "description": ODD_TEXT[
        "description"].replace("\t", " ")})  # ... everything else bakes
    assert result.exit_code == 0, result.exception
    project = result.project_path
    assert project.name == "unicode-net-back-slash"
    check_rendered_and_valid(project)
    ruff_check(project)
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    assert pyproject["description"] == ODD_TEXT["description"].replace("\t", " ")
    assert pyproject["authors"][0]["name"] == ODD_TEXT["author"]
    workflow = yaml.safe_load((project / ".github" / "workflows" / "ci.yml").read_text())
    assert workflow["name"] == ODD_TEXT["project_name"]
    init = ast.parse((project / "src" / "unicode_net_back_slash" / "__init__.py").read_text())
    [assignment] = [node for node in init.body if isinstance(node, ast.Assign)
                    and node.targets[0].id == "PROJECT_NAME"]
    assert ast.literal_eval(assignment.value) == ODD_TEXT["project_name"]


LONG = "x" * 5000
INVALID = [
    ({"project": "my project"}, "project 'my project' is not a valid folder/distribution name"),
    ({"project": "a/b"}, "project 'a/b' is not a valid folder/distribution name"),
    ({"project": LONG}, f"project {LONG[:40]!r}... (5000 characters) is longer than 100 characters"),
    ({"package": LONG}, f"package {LONG[:40]!r}... (5000 characters) is longer than 100 characters"),
    ({"project_name": LONG}, "project_name 'xxxxxxxx"),
    *(({"package": name}, f"package {name!r} would shadow the module {name!r}") for name in (
        "scipy", "typing_extensions", "sitecustomize", "setuptools", "pip", "jinja2", "yaml")),
    ({"package": "_"}, "package '_' is not a lower-case Python identifier"),
    ({"package": "__main__"}, "package '__main__' is not a lower-case Python identifier"),
    ({"package": "_private"}, "package '_private' is not a lower-case Python identifier"),
    ({"project": "-lead"}, "project '-lead' is not a valid folder/distribution name"),
    ({"package": "torch"}, "package 'torch' would shadow the module 'torch'"),
    ({"package": "lightning"}, "package 'lightning' would shadow the module 'lightning'"),
    ({"package": "hydra"}, "package 'hydra' would shadow the module 'hydra'"),
    ({"package": "tests"}, "package 'tests' would shadow the module 'tests'"),
    ({"package": "json"}, "package 'json' would shadow the module 'json'"),
    ({"package": "My_Package"}, "package 'My_Package' is not a lower-case Python identifier"),
    ({"package": "my-package"}, "package 'my-package' is not a lower-case Python identifier"),
    ({"package": "2fast"}, "package '2fast' is not a lower-case Python identifier"),
    ({"package": "class"}, "package 'class' is a Python keyword"),
    ({"email": "not-an-email"}, "email 'not-an-email' is not an email address"),
    ({"description": "two\nlines"}, "description 'two\\nlines' must be one line of printable text"),
    ({"project_name": " "}, "project_name ' ' is empty"),
]


@pytest.mark.parametrize(("context", "message"), INVALID, ids=[str(c) for c, _ in INVALID])
def test_bad_input_is_refused_with_one_clear_line(cookies, tmp_path, context, message):
    """Refused by the template's Jinja extension before anything is rendered: the bake's folder stays empty."""
    result = cookies.bake(template=str(TEMPLATE), extra_context=context)
    assert result.exit_code != 0
    error = str(result.exception)
    assert error.startswith("error: ") and "\n" not in error and message in error, error
    left = [p for p in (tmp_path / "cookies").rglob("*")]  # not even an empty folder (project=a/b once left a/)
    assert not left, f"left behind: {left}"


def test_the_rules_run_again_on_the_rendered_values_in_the_pre_generate_hook(tmp_path):
    """The hook is the second line: rendered with values that break a rule, it refuses them with the same line."""
    from cookiecutter.utils import create_env_with_context

    sys.path.insert(0, str(TEMPLATE))  # as cookiecutter does to load local_extensions
    try:
        from local_extensions import context_being_loaded

        env = create_env_with_context({"cookiecutter": {"_extensions": CONTEXT["_extensions"]}})
        hook = env.from_string((TEMPLATE / "hooks" / "pre_gen_project.py").read_text())
        for package, code in (("pip", 1), ("fine_name", 0)):
            values = {"project_name": "ok", "project": "ok", "package": package, "description": "d", "author": "a",
                      "email": ""}
            script = tmp_path / f"{package}.py"
            script.write_text(hook.render(cookiecutter=values))
            result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
            assert result.returncode == code, result.stderr
        assert result.stderr == "" and context_being_loaded() == {}
    finally:
        sys.path.remove(str(TEMPLATE))
    refused = subprocess.run([sys.executable, str(tmp_path / "pip.py")], capture_output=True, text=True, timeout=60)
    assert refused.stderr.strip() == ("error: package 'pip' would shadow the module 'pip' that the project or its "
                                      "dependencies import: choose another import name (e.g. 'pip_project')")


# The classic server-side template injection payloads: each would run code (or leak internals) if rendered.
INJECTIONS = [
    "{{ cycler.__init__.__globals__.os.system('touch MARK') }}",
    "{{ joiner.__init__.__globals__.os.system('touch MARK') }}",
    "{{ lipsum.__globals__['os'].system('touch MARK') }}",
    "{{ namespace.__init__.__globals__.os.system('touch MARK') }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ self.__init__.__globals__ }}",
    "{{ config }}",
    "{% for x in range(3) %}{{ x }}{% endfor %}",
    "Model {{ 7*7 }}",
]


def refusal(value: str, key: str = "project_name") -> str:
    """The one line a refused value gets: long values are quoted by their start and their length."""
    marker = next(m for m in ("{{", "{%", "{#") if m in value)
    quoted = repr(value) if len(value) <= 60 else f"{value[:40]!r}... ({len(value)} characters)"
    return f"error: {key} {quoted} contains {marker!r}: template markers are not allowed in values"


@pytest.mark.parametrize("payload", INJECTIONS)
def test_a_template_injection_on_the_command_line_is_refused_before_it_is_rendered(tmp_path, payload):
    """`cookiecutter --no-input . key=value` renders values as Jinja: the template refuses them first."""
    payload = payload.replace("MARK", str(tmp_path / "ran"))
    result = subprocess.run([sys.executable, "-m", "cookiecutter", "--no-input", "-o", str(tmp_path / "out"),
                             str(TEMPLATE), f"project_name={payload}"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COOKIECUTTER_CONFIG": str(cookiecutter_config(tmp_path))})
    assert result.returncode == 1
    assert result.stdout.strip() == refusal(payload) and "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out").exists()


def test_a_template_injection_typed_at_the_prompt_is_refused(tmp_path):
    """At the prompt cookiecutter keeps what was typed as it is; the template refuses it before writing."""
    payload = INJECTIONS[0].replace("MARK", str(tmp_path / "ran"))
    prompts = [key for key in CONTEXT if not key.startswith("_")]  # one answer per variable, the first refused
    answers = "\n".join([payload, *[""] * (len(prompts) - 1)]) + "\n"
    result = subprocess.run([sys.executable, "-m", "cookiecutter", "-o", str(tmp_path / "out"), str(TEMPLATE)],
                            input=answers, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COOKIECUTTER_CONFIG": str(cookiecutter_config(tmp_path))})
    assert result.returncode == 1
    assert result.stdout.strip().splitlines()[-1].endswith(refusal(payload))
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out").exists()


def test_a_template_injection_in_a_replay_file_is_refused(tmp_path):
    payload = INJECTIONS[0].replace("MARK", str(tmp_path / "ran"))
    replay = tmp_path / "replay.json"
    context = {**{k: v for k, v in CONTEXT.items() if not k.startswith("__")}, "project_name": payload,
               "project": "evil", "package": "evil", "dataset": "digits", "default_engine": "lightning",
               "license": "MIT"}
    replay.write_text(json.dumps({"cookiecutter": context}))
    result = subprocess.run([sys.executable, "-m", "cookiecutter", "--replay-file", str(replay), "-o",
                             str(tmp_path / "out"), str(TEMPLATE)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COOKIECUTTER_CONFIG": str(cookiecutter_config(tmp_path))})
    assert result.returncode == 1 and result.stdout.strip() == refusal(payload), result.stdout + result.stderr
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("payload", INJECTIONS[:7])
def test_every_environment_of_the_bake_is_sandboxed(payload, tmp_path):
    """The second defence: should a marker reach Jinja, the sandbox refuses what the payloads need."""
    from cookiecutter.utils import create_env_with_context
    from jinja2.exceptions import SecurityError, UndefinedError

    sys.path.insert(0, str(TEMPLATE))  # as cookiecutter does to load local_extensions
    try:
        env = create_env_with_context({"cookiecutter": {"_extensions": CONTEXT["_extensions"]}})
        with pytest.raises((SecurityError, UndefinedError)):
            env.from_string(payload.replace("MARK", str(tmp_path / "ran"))).render(cookiecutter={})
        assert env.from_string("{{ cookiecutter.name | slugify }}").render(cookiecutter={"name": "A B"}) == "a-b"
    finally:
        sys.path.remove(str(TEMPLATE))
    assert not (tmp_path / "ran").exists()


def test_the_shadowed_names_cover_every_module_the_dependencies_install(default_bake):
    """A package named like any top-level module of the project's dependencies (transitively, as installed here
    from the pins) would shadow it: local_extensions.SHADOWED must list them all."""
    import importlib.metadata as metadata

    sys.path.insert(0, str(TEMPLATE))
    try:
        from local_extensions import SHADOWED
    finally:
        sys.path.remove(str(TEMPLATE))

    def normal(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    project = tomllib.loads((default_bake / "pyproject.toml").read_text())["project"]
    pending = [re.split(r"[ ;<>=!~\[(]", requirement, maxsplit=1)[0] for requirement in
               [*project["dependencies"], *(requirement for extra in ("dev", "export", "serve")
                                            for requirement in project["optional-dependencies"][extra])]]
    installed: set[str] = set()
    while pending:
        name = normal(pending.pop())
        if name in installed:
            continue
        try:
            requirements = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        installed.add(name)
        pending += [re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0] for r in requirements if "extra ==" not in r]
    assert {"torch", "lightning", "scipy", "jinja2"} <= installed  # the walk found the real dependency tree
    modules = {module.lower() for module, distributions in metadata.packages_distributions().items()
               if module.isidentifier() and not module.startswith("_")
               and any(normal(d) in installed for d in distributions)}
    assert modules - SHADOWED - set(sys.stdlib_module_names) == set()


def cookiecutter_config(tmp_path: Path) -> Path:
    """A cookiecutter config that keeps replay files and clones in this test's folder, not in ~."""
    config = tmp_path / "cookiecutter-config.yaml"
    config.write_text(f"cookiecutters_dir: {tmp_path / 'cookiecutters'}\nreplay_dir: {tmp_path / 'replay'}\n")
    return config


def test_template_markers_typed_at_the_prompt_are_refused(monkeypatch, tmp_path, _cookiecutter_config_file):
    """What was typed is kept as it is, markers included: the template refuses it before writing anything."""
    from cookiecutter import prompt
    from cookiecutter.exceptions import FailedHookException
    from cookiecutter.main import cookiecutter

    typed = {"project_name": "My {{ evil }} project", "author": "{% raw %}"}
    monkeypatch.setattr(prompt, "read_user_variable", lambda key, default, *a, **k: typed.get(key, default))
    monkeypatch.setattr(prompt, "read_user_choice", lambda key, options, *a, **k: options[0])
    monkeypatch.setattr(prompt, "read_user_yes_no", lambda key, default, *a, **k: default)
    with pytest.raises(FailedHookException) as refused:
        cookiecutter(str(TEMPLATE), output_dir=str(tmp_path), config_file=str(_cookiecutter_config_file))
    assert str(refused.value) == refusal("My {{ evil }} project")
    assert not list(tmp_path.iterdir())
