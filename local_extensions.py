"""Jinja extensions of the template (cookiecutter loads this file through `_extensions` in cookiecutter.json).

A value is data, never code. cookiecutter renders every variable as Jinja before any hook runs, the values given
on the command line (`cookiecutter . project_name=...`, with or without --no-input) included: a value such as
`{{ cycler.__init__.__globals__.os.system('...') }}` would run when it is rendered, and `Model {{ 7*7 }}` would
quietly become `Model 49`. `Sandboxed` is loaded into every Jinja environment cookiecutter makes (to render the
variables, the files, the hooks), and before the environment renders anything it

* refuses any value that holds a template marker and is not one of the template's own strings (cookiecutter.json),
  with one line naming the variable: given on the command line, typed at the prompt or read from a replay file,
  it is refused before a variable is rendered or a file is written;
* puts the environment under Jinja's sandbox rules: no attribute that starts with `_` (no `__globals__`,
  `__class__`, `__mro__`), no unsafe callables, should a marker ever get through.
"""

import json
import keyword
import re
import sys
from pathlib import Path

from cookiecutter.exceptions import FailedHookException
from cookiecutter.utils import simple_filter
from jinja2 import Environment
from jinja2.ext import Extension
from jinja2.sandbox import SandboxedEnvironment, safe_range

TEMPLATE_MARKERS = ("{{", "{%", "{#")


def escaped(text: str, quote: str) -> str:
    """`text` between `quote`s, with `\\`-escapes for the quote, the backslash and anything not printable."""
    out = []
    for ch in text:
        if ch in quote + "\\":
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return quote + "".join(out) + quote


@simple_filter
def quoted(value: object) -> str:
    """Quote free text as one string that is valid, with the same value, in TOML, YAML and Python.

    The three languages share the double-quoted form with `\\"`, `\\\\`, `\\uXXXX` and `\\UXXXXXXXX`
    escapes; everything printable (unicode included) stays as it is.
    """
    return escaped(str(value), '"')


@simple_filter
def python_string(value: object) -> str:
    """Free text as the Python string literal that `ruff format` keeps: in double quotes unless the text holds more
    double than single quotes (then single quotes need fewer escapes, and ruff would switch to them)."""
    text = str(value)
    return escaped(text, "'" if text.count('"') > text.count("'") else '"')


class RefusedValue(FailedHookException):
    """A template input refused before anything was rendered or written (the cookiecutter CLI prints it: one line)."""


def template_strings(value: object) -> set[str]:
    """Every string in cookiecutter.json."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set().union(*(template_strings(k) | template_strings(v) for k, v in value.items()))
    if isinstance(value, list):
        return set().union(*(template_strings(v) for v in value))
    return set()


# The template's own expressions (the defaults of `project` and `package`): the only strings with markers allowed.
TEMPLATE_EXPRESSIONS = {text for text in template_strings(json.loads(Path(__file__).with_name("cookiecutter.json")
                                                                      .read_text()))
                        if any(marker in text for marker in TEMPLATE_MARKERS)}


# Modules the generated project imports, its dependencies import, or its layout uses: a package of the same name
# would shadow them. The dependencies' top-level modules, transitively, from the pinned environment
# (tests/test_bake.py checks that the list stays complete), and the names Python itself treats specially.
SHADOWED = {
    "tests", "test", "configs", "tour", "train", "evaluate", "compare", "export", "predict", "serve", "src",
    "benchmarks", "slurm", "__main__", "sitecustomize", "usercustomize", "pkg_resources", "submitit",
    "hydra_plugins", "cookiecutter",
    "absl", "antlr4", "cloudpickle", "contourpy", "cuda", "cycler", "dateutil", "filelock", "fonttools", "fsspec",
    "functorch", "google", "grpc", "hydra", "iniconfig", "isympy", "jinja2", "joblib", "kiwisolver", "lightning",
    "lightning_fabric", "lightning_utilities", "markdown", "markupsafe", "matplotlib", "mpl_toolkits", "mpmath",
    "narwhals", "networkx", "numpy", "nvidia", "omegaconf", "packaging", "pil", "pip", "pluggy", "py",
    "pydevd_plugins", "pygments", "pylab", "pyparsing", "pytest", "pytorch_lightning", "ruff", "scipy",
    "setuptools", "sklearn", "sympy", "tensorboard", "tensorboard_data_server", "threadpoolctl", "torch",
    "torchgen", "torchmetrics", "torchvision", "tqdm", "triton", "typing_extensions", "tzdata", "werkzeug",
    "wheel", "yaml", "pre_commit", "pre_commit_hooks", "cfgv", "distlib", "identify", "nodeenv", "platformdirs",
    "python_discovery", "ruamel", "virtualenv",
    # the export and serve extras
    "onnx", "onnx_ir", "onnxruntime", "onnxscript", "ml_dtypes", "flatbuffers", "opentelemetry", "importlib_metadata",
    "zipp", "fastapi", "uvicorn", "starlette", "pydantic", "pydantic_core", "annotated_doc", "annotated_types",
    "typing_inspection", "anyio", "click", "h11", "idna",
    # search.py's Optuna, and the mlflow and wandb extras (their own names: their web stacks are not installed here)
    "optuna", "sqlalchemy", "alembic", "colorlog", "mako", "mlflow", "wandb",
}
FREE_TEXT = ("project_name", "description", "author", "email")
MAX_TEXT, MAX_NAME = 500, 100  # characters; the names become folder names (most file systems allow 255 bytes)
DISTRIBUTION_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")  # PEP 508
EMAIL_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def shown(value: str) -> str:
    """A value as an error message quotes it: in full, or its start and its length."""
    return repr(value) if len(value) <= 60 else f"{value[:40]!r}... ({len(value)} characters)"


def problem(key: str, value: str) -> str | None:
    """What is wrong with one value, as the rest of the error line, or None."""
    for marker in TEMPLATE_MARKERS:
        if marker in value:
            return f"contains {marker!r}: template markers are not allowed in values"
    if key in FREE_TEXT:
        if not value.isprintable():
            return "must be one line of printable text (no newlines or control characters)"
        if len(value) > MAX_TEXT:
            return f"is longer than {MAX_TEXT} characters"
    if key == "project_name" and not value.strip():
        return "is empty: give the project a name"
    if key == "email" and value and not EMAIL_ADDRESS.match(value):
        return "is not an email address (name@domain.tld) or empty"
    if key in ("project", "package") and len(value) > MAX_NAME:
        return f"is longer than {MAX_NAME} characters: it becomes a folder name"
    if key == "project" and not DISTRIBUTION_NAME.match(value):
        return ("is not a valid folder/distribution name: use letters, digits, '-', '_' and '.', starting and "
                "ending with a letter or digit (e.g. 'pytorch-intro')")
    if key == "package":
        if not (value.isidentifier() and value == value.lower() and value.isascii()) or value.startswith("_"):
            return ("is not a lower-case Python identifier: use a-z, 0-9 and '_', starting with a letter "
                    "(e.g. 'pytorch_intro')")
        if keyword.iskeyword(value):
            return f"is a Python keyword: choose another import name (e.g. '{value}_project')"
        if value in SHADOWED or value in sys.stdlib_module_names:
            return (f"would shadow the module {value!r} that the project or its dependencies import: choose "
                    f"another import name (e.g. '{value}_project')")
    return None


def check_values(values: dict) -> None:
    """Refuse the first bad value with one line. The template's own expressions (defaults in cookiecutter.json that
    cookiecutter renders later) are not values yet: they are checked once rendered."""
    for key, value in values.items():
        if key.startswith("_") or not isinstance(value, str) or value in TEMPLATE_EXPRESSIONS:
            continue
        message = problem(key, value)
        if message:
            raise RefusedValue(f"error: {key} {shown(value)} {message}")


@simple_filter
def refused_value(values: dict) -> str:
    """The error line for the first value of `values` that breaks its rule, or "" (hooks/pre_gen_project.py)."""
    try:
        check_values(dict(values))
    except RefusedValue as refused:
        return str(refused)
    return ""


def context_being_loaded() -> dict:
    """The values of the context cookiecutter is making this environment for: the `context` argument of its
    create_env_with_context / StrictEnvironment, found up the stack ({} if this cookiecutter passes none)."""
    frame = sys._getframe(1)
    while frame is not None:
        context = frame.f_locals.get("context")
        if isinstance(context, dict) and isinstance(context.get("cookiecutter"), dict):
            return context["cookiecutter"]
        frame = frame.f_back
    return {}


class Sandboxed(Extension):
    """Checks the values, then gives this environment Jinja's sandbox (see the module docstring)."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        check_values(context_being_loaded())
        if not isinstance(environment, SandboxedEnvironment):
            # cookiecutter builds its own StrictEnvironment: give this one the sandbox's methods (getattr, call,
            # is_safe_attribute, ...) and the compiler's `sandboxed` flag, as SandboxedEnvironment.__init__ would.
            base = type(environment)
            environment.__class__ = type(f"Sandboxed{base.__name__}", (SandboxedEnvironment, base), {})
            environment.globals["range"] = safe_range
            environment.binop_table = SandboxedEnvironment.default_binop_table.copy()
            environment.unop_table = SandboxedEnvironment.default_unop_table.copy()
