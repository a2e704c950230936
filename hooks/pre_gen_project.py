"""The second check of the template inputs (the first, before anything is rendered or written, is the template's
Jinja extension): the same rules, from local_extensions.py, on the rendered values. One line names the value and
the rule."""

import sys

sys.path.insert(0, {{ cookiecutter._repo_dir | quoted }})  # the template's folder: local_extensions.py

from local_extensions import RefusedValue, check_values  # noqa: E402

VALUES = {  # rendered by cookiecutter; `quoted` makes any text a valid Python string literal
    "project_name": {{ cookiecutter.project_name | quoted }},
    "project": {{ cookiecutter.project | quoted }},
    "package": {{ cookiecutter.package | quoted }},
    "description": {{ cookiecutter.description | quoted }},
    "author": {{ cookiecutter.author | quoted }},
    "email": {{ cookiecutter.email | quoted }},
}

if __name__ == "__main__":
    try:
        check_values(VALUES)
    except RefusedValue as refused:
        print(refused, file=sys.stderr)
        sys.exit(1)
