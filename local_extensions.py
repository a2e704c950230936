"""Jinja filters for the template (cookiecutter loads this file through `_extensions`)."""

from cookiecutter.utils import simple_filter


@simple_filter
def quoted(value: object) -> str:
    """Quote free text as one string that is valid, with the same value, in TOML, YAML and Python.

    The three languages share the double-quoted form with `\\"`, `\\\\`, `\\uXXXX` and `\\UXXXXXXXX`
    escapes; everything printable (unicode included) stays as it is.
    """
    out = []
    for ch in str(value):
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'
