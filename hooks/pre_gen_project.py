"""The second check of the template inputs, on the rendered values. The first, before anything is rendered or
written, is the template's Jinja extension (local_extensions.py), whose rules the `refused_value` filter applies
here again while cookiecutter renders this script: one line names the value and the rule."""

import sys

REFUSED = {{ cookiecutter | refused_value | quoted }}  # empty when every value keeps its rule

if __name__ == "__main__" and REFUSED:
    print(REFUSED, file=sys.stderr)
    sys.exit(1)
