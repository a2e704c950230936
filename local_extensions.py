"""Jinja extensions of the template (cookiecutter loads this file through `_extensions` in cookiecutter.json).

A value is data, never code. cookiecutter renders every variable as Jinja before any hook runs, the values given
on the command line (`cookiecutter . project_name=...`, with or without --no-input) included: a value such as
`{{ cycler.__init__.__globals__.os.system('...') }}` would run when it is rendered, and `Model {{ 7*7 }}` would
quietly become `Model 49`. `Sandboxed` is loaded into every Jinja environment cookiecutter makes (to render the
variables, the files, the hooks), and before the environment renders anything it

* refuses any value that holds a template marker and is not one of the template's own strings (cookiecutter.json),
  with one line naming the variable: given on the command line, typed at the prompt or read from a replay file,
  it is refused before a variable is rendered or a file is written;
* refuses what a replay file (`cookiecutter --replay-file`) can say that the prompt and the command line cannot:
  a choice outside its list, a non-boolean `include_tour`, a value that is not text, a variable the template does
  not have, and any private key (`_copy_without_render`, `_extensions`, `_jinja2_env_vars`, ...) that is not
  cookiecutter.json's own; cookiecutter uses a replay file's values as they are, unrendered and unchecked;
* puts the environment under Jinja's sandbox rules: no attribute that starts with `_` (no `__globals__`,
  `__class__`, `__mro__`), no unsafe callables, should a marker ever get through.
"""

import importlib
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


def on_disk() -> tuple[bytes, bytes]:
    """This file and cookiecutter.json as they are on disk now."""
    here = Path(__file__)
    return here.read_bytes(), here.with_name("cookiecutter.json").read_bytes()


LOADED_FROM = on_disk()
TEMPLATE_CONTEXT = json.loads(LOADED_FROM[1])
# The template's own expressions (the defaults of `project` and `package`): the only strings with markers allowed,
# and only before cookiecutter has rendered them.
TEMPLATE_EXPRESSIONS = {text for text in template_strings(TEMPLATE_CONTEXT)
                        if any(marker in text for marker in TEMPLATE_MARKERS)}
CHOICES = {key: value for key, value in TEMPLATE_CONTEXT.items() if isinstance(value, list) and not key.startswith("_")}
BOOLEANS = {key for key, value in TEMPLATE_CONTEXT.items() if isinstance(value, bool)}
TEXTS = {key for key, value in TEMPLATE_CONTEXT.items() if isinstance(value, str) and not key.startswith("_")}
# Private keys that cookiecutter itself sets after it has read a replay file: whatever the file says is replaced;
# and `_commit`, the template commit that cruft (`cruft create`, `cruft update`) records: no file reads it.
SET_BY_COOKIECUTTER = {"_template", "_output_dir", "_repo_dir", "_checkout", "_commit"}


# Modules the generated project imports, its dependencies import, or its layout uses: a package of the same name
# would shadow them. The dependencies' top-level modules, transitively, from the pinned environment
# (tests/test_bake.py checks that the list stays complete), and the names Python itself treats specially.
SHADOWED = {
    "tests", "test", "configs", "tour", "train", "evaluate", "compare", "export", "predict", "serve", "src",
    "benchmarks", "slurm", "__main__", "sitecustomize", "usercustomize", "pkg_resources", "submitit",
    "hydra_plugins", "cookiecutter", "pytest_timeout",
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


def shown(value: object) -> str:
    """A value as an error message quotes it: in full, or its start and its length."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if len(text) <= 60:
        return repr(value) if isinstance(value, str) else text
    return f"{text[:40]!r}... ({len(text)} characters)"


JSON_TYPES = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object",
              type(None): "null"}


def type_problem(key: str, value: object) -> str | None:
    """What is wrong with the kind of one value (as a replay file can give any JSON value), or None."""
    if key in CHOICES:
        if not isinstance(value, str) or value not in CHOICES[key]:
            return f"is not one of {', '.join(CHOICES[key])}"
    elif key in BOOLEANS:
        if not isinstance(value, bool):
            return "is not true or false (a JSON boolean in a replay file)"
    elif key in TEXTS:
        if not isinstance(value, str):
            return f"is {JSON_TYPES.get(type(value), 'not text')}, not text: give a string"
    return None


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


def check_private_keys(values: dict) -> None:
    """A private key (`_...`) steers how cookiecutter renders (`_extensions`, `_copy_without_render`,
    `_jinja2_env_vars`, ...): only cookiecutter.json's own are taken, never one a replay file adds or changes."""
    for key, value in values.items():
        if key.startswith("_") and key not in SET_BY_COOKIECUTTER and TEMPLATE_CONTEXT.get(key, ...) != value:
            raise RefusedValue(
                f"error: {key} {shown(value)} is not this template's own {key} (cookiecutter.json): keys that start "
                "with '_' steer how the template renders and cannot be set; remove it from the replay file"
            )


def derived_from(key: str, value: str, originals: dict) -> str | None:
    """The variable `key`'s value was derived from (project from project_name, package from project), when the
    template rendered it from its own expression: None if the user gave it."""
    if originals.get(key) not in TEMPLATE_EXPRESSIONS or value == originals.get(key):
        return None
    if key == "package" and originals.get("project") not in TEMPLATE_EXPRESSIONS:
        return "project"
    return "project_name"


def check_values(values: dict, originals: dict | None = None, rendered: bool = False) -> None:
    """Refuse the first bad value with one line. Before cookiecutter renders the variables, the template's own
    expressions (the defaults of `project` and `package` in cookiecutter.json) are not values yet; once `rendered`
    (or read from a replay file, which cookiecutter never renders), every value must be plain. `originals` are the
    values before rendering (cookiecutter's `_cookiecutter`): a refused name that the template derived is
    reported as the name the user gave, which is what needs changing."""
    originals = originals or {}
    check_private_keys(values)
    for key, value in values.items():
        if key.startswith("_"):
            continue
        if key not in TEMPLATE_CONTEXT:
            raise RefusedValue(f"error: {key} is not a variable of this template (cookiecutter.json): remove it")
        # Before rendering the choices are still their lists; a text or a yes/no given as a list or an object (a
        # JSON --extra-context, as cruft takes) would be rendered as a choice, its Jinja run.
        message = type_problem(key, value) if rendered or key not in CHOICES else None
        if message:
            raise RefusedValue(f"error: {key} {shown(value)} {message}")
        if not isinstance(value, str) or (value in TEMPLATE_EXPRESSIONS and not rendered):
            continue
        message = problem(key, value)
        source = derived_from(key, value, originals) if key in ("project", "package") else None
        if message and source:
            other = "project" if key == "package" else "package"
            raise RefusedValue(
                f"error: {source} {shown(values.get(source))} gives no usable {key} name: {shown(value)}, derived "
                f"from it, {message}; pass {key}=<name> (and {other}=<name>) as well"
            )
        if message:
            raise RefusedValue(f"error: {key} {shown(value)} {message}")


@simple_filter
def refused_value(values: dict, originals: dict | None = None) -> str:
    """The error line for the first value of `values` that breaks its rule, or "" (hooks/pre_gen_project.py, which
    cookiecutter renders once the values are: `originals` is its `_cookiecutter`, the values before rendering)."""
    try:
        check_values(dict(values), dict(originals or {}), rendered=True)
    except RefusedValue as refused:
        return str(refused)
    return ""


def context_being_loaded() -> dict:
    """The context cookiecutter is making this environment for ({"cookiecutter": values, "_cookiecutter": values
    before rendering, ...}): the `context` argument of its create_env_with_context / StrictEnvironment, found up
    the stack ({} if this cookiecutter passes none)."""
    frame = sys._getframe(1)
    while frame is not None:
        context = frame.f_locals.get("context")
        if isinstance(context, dict) and isinstance(context.get("cookiecutter"), dict):
            return context
        frame = frame.f_back
    return {}


def run_by_cruft_command_line() -> bool:
    """Whether the `cruft` command (cruft create / update) is what renders the template."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "cruft._cli":
            return True
        frame = frame.f_back
    return False


class Sandboxed(Extension):
    """Checks the values, then gives this environment Jinja's sandbox (see the module docstring)."""

    def __init__(self, environment: Environment) -> None:
        if on_disk() != LOADED_FROM:
            # `cruft update` renders two commits of the template in one process, the second checked out over the
            # first: without a reload the second would be checked by the first's rules and cookiecutter.json.
            importlib.reload(sys.modules[__name__])
        super().__init__(environment)
        context = context_being_loaded()
        values = context.get("cookiecutter", {})
        try:
            # cookiecutter adds _template (and _output_dir, ...) once the values are final: prompted and rendered,
            # or read from a replay file, which it never renders.
            check_values(values, context.get("_cookiecutter"), rendered="_template" in values)
        except RefusedValue as refused:
            if not run_by_cruft_command_line():
                raise  # cookiecutter's command line prints it as one line
            # cruft's would show a page of traceback around it
            print(refused, file=sys.stderr)
            raise SystemExit(1) from None
        if not isinstance(environment, SandboxedEnvironment):
            # cookiecutter builds its own StrictEnvironment: give this one the sandbox's methods (getattr, call,
            # is_safe_attribute, ...) and the compiler's `sandboxed` flag, as SandboxedEnvironment.__init__ would.
            base = type(environment)
            environment.__class__ = type(f"Sandboxed{base.__name__}", (SandboxedEnvironment, base), {})
            environment.globals["range"] = safe_range
            environment.binop_table = SandboxedEnvironment.default_binop_table.copy()
            environment.unop_table = SandboxedEnvironment.default_unop_table.copy()
