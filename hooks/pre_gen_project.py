"""Refuse template inputs that would bake a broken project. One line names the value and the rule."""

import keyword
import re
import sys

# Rendered by cookiecutter; `quoted` makes any text a valid Python string literal.
PROJECT_NAME = {{ cookiecutter.project_name | quoted }}
PROJECT = {{ cookiecutter.project | quoted }}
PACKAGE = {{ cookiecutter.package | quoted }}
DESCRIPTION = {{ cookiecutter.description | quoted }}
AUTHOR = {{ cookiecutter.author | quoted }}
EMAIL = {{ cookiecutter.email | quoted }}

# Modules the generated project imports (or that its layout uses at top level): a package of the same
# name would shadow them.
SHADOWED = {
    "torch", "torchvision", "torchmetrics", "lightning", "pytorch_lightning", "lightning_utilities",
    "lightning_fabric", "hydra", "omegaconf", "tensorboard", "sklearn", "numpy", "tqdm", "matplotlib",
    "yaml", "pytest", "tests", "test", "configs", "tour", "train", "evaluate", "compare", "src",
}
DISTRIBUTION_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")  # PEP 508 name
EMAIL_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
TEMPLATE_MARKERS = ("{{ '{{' }}", "{{ '{%' }}", "{{ '{#' }}")


def problem() -> str | None:
    """The first broken rule, as one sentence, or None."""
    for field, value in [("project_name", PROJECT_NAME), ("description", DESCRIPTION), ("author", AUTHOR),
                         ("email", EMAIL)]:
        for marker in TEMPLATE_MARKERS:
            if marker in value:
                return f"{field} {value!r} contains {marker!r}: template markers are not allowed in values"
        if not value.isprintable():
            return f"{field} {value!r} must be one line of printable text (no newlines or control characters)"
    if not PROJECT_NAME.strip():
        return "project_name is empty: give the project a name"
    if not DISTRIBUTION_NAME.match(PROJECT):
        return (f"project {PROJECT!r} is not a valid folder/distribution name: use letters, digits, '-', '_' "
                "and '.', starting and ending with a letter or digit (e.g. 'pytorch-intro')")
    if not (PACKAGE.isidentifier() and PACKAGE == PACKAGE.lower() and PACKAGE.isascii()):
        return (f"package {PACKAGE!r} is not a lower-case Python identifier: use a-z, 0-9 and '_', "
                "not starting with a digit (e.g. 'pytorch_intro')")
    if keyword.iskeyword(PACKAGE):
        return f"package {PACKAGE!r} is a Python keyword: choose another import name (e.g. '{PACKAGE}_project')"
    if PACKAGE in SHADOWED or PACKAGE in sys.stdlib_module_names:
        return (f"package {PACKAGE!r} would shadow the module {PACKAGE!r} that the project imports: "
                f"choose another import name (e.g. '{PACKAGE}_project')")
    if EMAIL and not EMAIL_ADDRESS.match(EMAIL):
        return f"email {EMAIL!r} is not an email address (name@domain.tld) or empty"
    return None


if __name__ == "__main__":
    message = problem()
    if message:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
