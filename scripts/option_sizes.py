"""What each bake option adds to a generated project, measured: bakes the template with all options on, with each
one off, and with all off (the minimal bake), and prints a markdown table.

    python scripts/option_sizes.py           # print the table
    python scripts/option_sizes.py --write   # and put it in README.md between its markers

An option's size is the files it adds (in the full bake, not in the bake without it) with their lines, plus the
lines it adds to the files both bakes have (README.md, Makefile, pyproject.toml, ...): a diff of the two bakes, its
added lines counted. tests/test_options.py checks that README.md's table is this script's output.
"""

import argparse
import contextlib
import difflib
import json
import os
import sys
import tempfile
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[1]
README = TEMPLATE / "README.md"
BEGIN, END = "<!-- option sizes: begin (scripts/option_sizes.py --write) -->", "<!-- option sizes: end -->"
CONTEXT = json.loads((TEMPLATE / "cookiecutter.json").read_text())
OPTIONS = [key for key, value in CONTEXT.items() if key.startswith("include_") and isinstance(value, bool)]


@contextlib.contextmanager
def quiet():
    """stdout to /dev/null, the hooks' (subprocesses) included: the post-gen hook prints its next steps."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def bake(output: Path, **options: bool) -> Path:
    """The template baked with its defaults and `options`, into `output`: the project folder. Its replay file
    stays under `output` (a user config there), not in ~/.cookiecutter_replay."""
    output.mkdir(parents=True)
    config = output / "cookiecutter-config.yaml"
    config.write_text(f"replay_dir: {json.dumps(str(output / 'replay'))}\n")
    extra = {key: "yes" if value else "no" for key, value in options.items()}
    with quiet():
        project = cookiecutter(
            str(TEMPLATE), no_input=True, output_dir=str(output / "bake"), extra_context=extra, config_file=str(config)
        )
    return Path(project)


def files(project: Path) -> dict[str, list[str]]:
    """Every file of a bake (relative path -> its lines); binary files count as no lines."""
    contents = {}
    for path in sorted(project.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            try:
                contents[path.relative_to(project).as_posix()] = path.read_text().splitlines()
            except UnicodeDecodeError:
                contents[path.relative_to(project).as_posix()] = []
    return contents


def added(full: dict[str, list[str]], without: dict[str, list[str]]) -> tuple[int, int, int]:
    """(files added, their lines, lines added to the shared files) going from `without` to `full`."""
    new = [name for name in full if name not in without]
    shared_lines = sum(
        1
        for name in full
        if name in without
        for line in difflib.unified_diff(without[name], full[name], lineterm="", n=0)
        if line.startswith("+") and not line.startswith("+++")
    )
    return len(new), sum(len(full[name]) for name in new), shared_lines


def table() -> str:
    """The markdown table of the options' sizes and the minimal bake's."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        full = files(bake(root / "all"))
        rows = ["| option | files it adds | lines in those files | lines it adds to shared files |", "| --- | ---: | ---: | ---: |"]
        for option in OPTIONS:
            count, lines, shared = added(full, files(bake(root / option, **{option: False})))
            rows.append(f"| `{option}` | {count} | {lines} | {shared} |")
        minimal = files(bake(root / "minimal", **dict.fromkeys(OPTIONS, False)))
    size = f"{len(minimal)} files, {sum(map(len, minimal.values()))} lines"
    full_size = f"{len(full)} files, {sum(map(len, full.values()))} lines"
    return "\n".join([*rows, "", f"All options off (the minimal bake): {size}. All on (the default): {full_size}."])


def write_readme(text: str) -> None:
    readme = README.read_text()
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    README.write_text(f"{readme[:start]}\n{text}\n{readme[end:]}")


def readme_table() -> str:
    """The table README.md holds now."""
    readme = README.read_text()
    return readme[readme.index(BEGIN) + len(BEGIN) : readme.index(END)].strip("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="put the table in README.md between its markers")
    text = table()
    print(text)
    if parser.parse_args().write:
        write_readme(text)
        print(f"written to {README.relative_to(TEMPLATE)}", file=sys.stderr)


if __name__ == "__main__":
    main()
