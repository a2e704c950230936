"""The second check of the template inputs, on the rendered values. The first, before anything is rendered or
written, is the template's Jinja extension (local_extensions.py), whose rules the `refused_value` filter applies
here again while cookiecutter renders this script: one line names the value and the rule. A replay file can
replace the template's `_extensions`, and with them that filter: then this script refuses the file by itself."""

import sys

{% if "refused_value" is filter and "quoted" is filter -%}
REFUSED = {{ cookiecutter | refused_value(_cookiecutter | default({})) | quoted }}  # empty when every value keeps its rule
{%- else -%}
REFUSED = (
    "error: _extensions is not this template's own _extensions (cookiecutter.json): keys that start with '_' steer "
    "how the template renders and cannot be set; remove it from the replay file"
)
{%- endif %}

if __name__ == "__main__" and REFUSED:
    print(REFUSED, file=sys.stderr)
    sys.exit(1)
