"""The links in the generated project's Markdown documents point at files and lines that exist.

    python scripts/check_doc_links.py [--fix] [PROJECT]

PROJECT is a baked project, or by default the project as it stands in this template checkout (where folder names
are still template expressions: a link's `{{ cookiecutter.package }}` names the folder `{{cookiecutter.package}}`).
The template's tests run it on a bake (tests/test_baked_docs.py).

A link is relative to the folder of the document it is in. A link to a line, [`name`](src/pkg/engines/raw.py#L120),
must show `name` on that line. The engines change often, so when a name moves the report says where it is now, and
`--fix` rewrites every line number whose name is found on exactly one line (edit the template, not a bake: run it
without PROJECT). Rules for the name in backticks:

* the code must occur on the line, where `...` stands for anything (`self.log("lr", ...)`, whose closing
  bracket may be on a later line);
* a dotted name only needs its last part as a word on the line (`Classifier.training_step` matches
  `def training_step(`);
* the link text may contain `]` inside backticks (`progress["epoch"]`) and one level of nested brackets.
"""

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

# The generated project as it stands in the template checkout (folder names still template expressions).
TEMPLATE_PROJECT = Path(__file__).resolve().parents[1] / "{{cookiecutter.project}}"


def documents(root: Path) -> tuple[str, ...]:
    """The Markdown documents whose links are checked; tour/ is left out of a project baked with include_tour=no,
    and when the folder is there, so must its README be."""
    return ("COMPARISON.md", "README.md", "benchmarks/README.md") + (
        ("tour/README.md",) if (root / "tour").is_dir() else ()
    )


# [text](target). The text: code spans (which may hold brackets: [`progress["epoch"]`](...)), one level of
# nested brackets ([see [1]](...)), and anything else but brackets. A target may contain template expressions
# with spaces (only in the template checkout).
CODE_SPAN = r"`[^`\n]*`"
NESTED = rf"\[(?:{CODE_SPAN}|[^\[\]`\n])*\]"
LINK = re.compile(
    rf"\[(?P<text>(?:{CODE_SPAN}|{NESTED}|[^\[\]`\n])*)\]"
    r"\((?P<target>(?:\{\{[^}]*\}\}|[^)\s])+)\)"
)
CODE_TEXT = re.compile(r"^`(?P<code>[^`]+)`$")
LINE_ANCHOR = re.compile(r"^L(?P<line>\d+)$")
DOTTED_NAME = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # https:, mailto:, ...
TEMPLATE_EXPRESSION = re.compile(r"\{\{\s*(?P<name>[\w.]+)\s*\}\}")


@dataclass
class Problem:
    document: str
    line: int  # 1-based line of the document
    message: str
    target: str = ""  # the link target as written, and the target that fixes it (when one is certain)
    fixed_target: str = ""
    text: str = ""  # the link text: with the target, it singles out the link on its line

    def __str__(self) -> str:
        return f"{self.document}:{self.line}: {self.message}"


def resolve(root: Path, path: str) -> Path:
    """The file a link names. In the template checkout, a template expression in a link (double braces with
    spaces inside) names a folder written without the spaces."""
    direct = root / path
    if direct.exists():
        return direct
    return root / TEMPLATE_EXPRESSION.sub(lambda m: "{" * 2 + m.group("name") + "}" * 2, path)


def matches(code: str, line: str) -> bool:
    """Whether the code of a link's text is on `line` (see the module docstring)."""
    if DOTTED_NAME.match(code):
        return re.search(rf"\b{re.escape(code.rsplit('.', 1)[-1])}\b", line) is not None
    code = re.sub(r"\.\.\.[)\]}]*$", "...", code)  # `call(...)`: the closing bracket may be on a later line
    pattern = ".*".join(re.escape(" ".join(part.split())) for part in code.split("..."))
    return re.search(pattern, " ".join(line.split())) is not None


def candidate_lines(code: str, lines: list[str]) -> list[int]:
    """1-based lines that show `code`; for a dotted name its definition (def/class/yaml key) if there is one."""
    found = [number for number, line in enumerate(lines, 1) if matches(code, line)]
    if DOTTED_NAME.match(code) and len(found) > 1:
        name = re.escape(code.rsplit(".", 1)[-1])
        definition = re.compile(rf"\s*(?:(?:async\s+)?def|class)\s+{name}\b|\s*{name}:")
        definitions = [n for n in found if definition.match(lines[n - 1])]
        return definitions or found
    return found


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", strip_code_blocks(markdown), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchor, suffix = slug, 1
        while anchor in anchors:
            anchor, suffix = f"{slug}-{suffix}", suffix + 1
        anchors.add(anchor)
    return anchors


def strip_code_blocks(markdown: str) -> str:
    """The text with fenced code blocks blanked out, line numbers kept: links there are not links."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return "\n".join(lines)


def check_link(root: Path, document: str, line_number: int, text: str, target: str) -> Problem | None:
    def problem(message: str, fixed_target: str = "") -> Problem:
        return Problem(document, line_number, message, target, fixed_target, text)

    path, _, anchor = target.partition("#")
    if not path:  # a heading of this document
        path = Path(document).name
    file = resolve((root / document).parent, path)  # relative to the document's folder, as GitHub reads it
    if not file.exists():
        return problem(f"[{text}]({target}) points at {path}, which does not exist")
    if not anchor:
        return None
    line_anchor = LINE_ANCHOR.match(anchor)
    if line_anchor is None:
        if file.suffix == ".md" and anchor not in heading_anchors(file.read_text(encoding="utf-8")):
            return problem(f"[{text}]({target}): {path} has no heading with the anchor #{anchor}")
        return None
    code_text = CODE_TEXT.match(text.strip())
    if code_text is None:
        return problem(
            f"[{text}]({target}) links to a line: write the name it shows there in backticks as the "
            "link text, so that this test can follow it when the line moves"
        )
    code = code_text["code"]
    lines = file.read_text(encoding="utf-8").splitlines()
    line = int(line_anchor["line"])
    if 1 <= line <= len(lines) and matches(code, lines[line - 1]):
        return None
    where = "" if 1 <= line <= len(lines) else f" (it has {len(lines)} lines)"
    found = candidate_lines(code, lines)
    if len(found) == 1:
        return problem(
            f"{path}#L{line} should show `{code}`{where}, which is now at line {found[0]}", f"{path}#L{found[0]}"
        )
    if found:
        return problem(
            f"{path}#L{line} should show `{code}`{where}, which is now on lines {', '.join(map(str, found))}: pick one"
        )
    return problem(f"{path}#L{line} should show `{code}`{where}, which no longer occurs in {path}: rewrite the link")


def check_document(root: Path, document: str) -> list[Problem]:
    problems = []
    text = strip_code_blocks((root / document).read_text(encoding="utf-8"))
    for line_number, line in enumerate(text.splitlines(), 1):
        for link in LINK.finditer(line):
            target = link["target"]
            if EXTERNAL.match(target):
                continue
            found = check_link(root, document, line_number, link["text"], target)
            if found is not None:
                problems.append(found)
    return problems


def fix_document(root: Path, document: str, problems: list[Problem]) -> int:
    """Rewrite the targets that have one certain fix; returns how many were rewritten."""
    path = root / document
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    fixed = 0
    for problem in problems:
        old = f"[{problem.text}]({problem.target})"
        if problem.fixed_target and old in lines[problem.line - 1]:
            new = f"[{problem.text}]({problem.fixed_target})"
            lines[problem.line - 1] = lines[problem.line - 1].replace(old, new, 1)
            fixed += 1
    path.write_text("".join(lines), encoding="utf-8")
    return fixed


def report(problems: list[Problem]) -> str:
    return "\n".join(map(str, problems)) + "\n(python scripts/check_doc_links.py --fix rewrites the certain ones)"


def check_project(root: Path) -> dict[str, list[Problem]]:
    return {document: check_document(root, document) for document in documents(root)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check (and with --fix, update) the links of the project's documents.")
    parser.add_argument("project", nargs="?", type=Path, default=TEMPLATE_PROJECT,
                        help="a baked project (default: the project in this template checkout)")
    parser.add_argument("--fix", action="store_true", help="rewrite the line numbers that have one certain fix")
    args = parser.parse_args(argv)
    if not (args.project / "README.md").is_file():
        parser.error(f"{args.project} is not a project folder (it has no README.md)")
    all_problems = check_project(args.project)
    if args.fix:
        for document, problems in all_problems.items():
            if problems:
                print(f"{document}: fixed {fix_document(args.project, document, problems)} link(s)")
        all_problems = check_project(args.project)
    remaining = [problem for problems in all_problems.values() for problem in problems]
    print(report(remaining) if remaining else "all links resolve")
    return 1 if remaining else 0


if __name__ == "__main__":
    sys.exit(main())
