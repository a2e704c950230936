"""The links in the project's Markdown documents (DOCUMENTS) point at files and lines that exist.

A link is relative to the folder of the document it is in. A link to a line, [`name`](src/pkg/engines/raw.py#L120),
must show `name` on that line. The engines change
often, so when a name moves the failure says where it is now, and

    python tests/test_comparison_doc.py --fix

rewrites every line number whose name is found on exactly one line (it works in the template checkout too,
where folder names are still template expressions). Rules for the name in backticks:

* the code must occur on the line, where `...` stands for anything (`self.log("lr", ...)`, whose closing
  bracket may be on a later line);
* a dotted name only needs its last part as a word on the line (`Classifier.training_step` matches
  `def training_step(`);
* the link text may contain `]` inside backticks (`progress["epoch"]`) and one level of nested brackets.
"""

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# tour/ is left out of a project baked with include_tour=no; when the folder is there, so must its README be.
DOCUMENTS = ("COMPARISON.md", "README.md", "benchmarks/README.md") + (
    ("tour/README.md",) if (PROJECT_ROOT / "tour").is_dir() else ()
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
    return "\n".join(map(str, problems)) + "\n(python tests/test_comparison_doc.py --fix rewrites the certain ones)"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_links_point_at_existing_files_and_lines(document):
    problems = check_document(PROJECT_ROOT, document)
    if problems:
        pytest.fail(report(problems), pytrace=False)


def test_comparison_links_to_lines_of_both_engines():
    text = (PROJECT_ROOT / "COMPARISON.md").read_text(encoding="utf-8")
    for engine in ("raw", "lightning"):
        assert re.search(rf"\]\(src/[^)]*/engines/{engine}\.py#L\d+\)", text), f"no link to a line of {engine}.py"


@pytest.fixture
def small_project(tmp_path: Path) -> Path:
    (tmp_path / "engine.py").write_text("import torch\n\n\ndef clip_gradients(model):\n    model.step()\n")
    return tmp_path


def write_doc(project: Path, body: str) -> str:
    (project / "DOC.md").write_text(f"# Doc\n\n{body}\n", encoding="utf-8")
    return "DOC.md"


def test_a_moved_name_is_reported_with_its_new_line_and_fixed(small_project):
    document = write_doc(small_project, "[`clip_gradients`](engine.py#L2) and [`model.step()`](engine.py#L5)")
    problems = check_document(small_project, document)
    assert [str(p) for p in problems] == ["DOC.md:3: engine.py#L2 should show `clip_gradients`, which is now at line 4"]
    assert fix_document(small_project, document, problems) == 1
    assert "[`clip_gradients`](engine.py#L4)" in (small_project / document).read_text()
    assert check_document(small_project, document) == []


@pytest.mark.parametrize(
    ("link", "message"),
    [
        ("[`torch`](missing.py#L1)", "points at missing.py, which does not exist"),
        (
            "[`clip_gradients`](engine.py#L40)",
            "engine.py#L40 should show `clip_gradients` (it has 5 lines), which is now at line 4",
        ),
        ("[`zero_grad`](engine.py#L1)", "which no longer occurs in engine.py"),
        ("[the clip](engine.py#L4)", "write the name it shows there in backticks"),
        ("[doc](DOC.md#no-such-heading)", "has no heading with the anchor #no-such-heading"),
    ],
)
def test_broken_links_are_reported(small_project, link, message):
    problems = check_document(small_project, write_doc(small_project, link))
    assert len(problems) == 1 and message in str(problems[0]), problems


def test_a_link_whose_text_holds_brackets_is_checked_and_fixed(small_project):
    (small_project / "loop.py").write_text('progress = {"epoch": 0}\nprogress["epoch"] += 1\n')
    document = write_doc(small_project, '[`progress["epoch"]`](loop.py#L1), [see [1]](missing.md) and [`a]`](gone.py)')
    problems = check_document(small_project, document)
    assert [str(p) for p in problems] == [
        'DOC.md:3: loop.py#L1 should show `progress["epoch"]`, which is now at line 2',
        "DOC.md:3: [see [1]](missing.md) points at missing.md, which does not exist",
        "DOC.md:3: [`a]`](gone.py) points at gone.py, which does not exist",
    ]
    assert fix_document(small_project, document, problems) == 1
    assert '[`progress["epoch"]`](loop.py#L2)' in (small_project / document).read_text()
    assert len(check_document(small_project, document)) == 2


@pytest.mark.parametrize(
    ("line", "links"),
    [
        ('[`progress["epoch"]`](a.py#L1)', [('`progress["epoch"]`', "a.py#L1")]),
        ("[`x[0]` and `y]`](a.py)", [("`x[0]` and `y]`", "a.py")]),
        ("[see [1]](a.md)", [("see [1]", "a.md")]),
        ("[a] [b](c.md) [d]", [("b", "c.md")]),  # brackets that are not a link stay out of the next link's text
        ("[a [b](c.md)", [("b", "c.md")]),
        ("![plot](p.png) and [`f`](x.py#L2)", [("plot", "p.png"), ("`f`", "x.py#L2")]),
        ("[`unclosed](a.py)", []),  # a lone backtick is not a code span: not a link this test can read
    ],
)
def test_what_counts_as_a_link(line, links):
    assert [(m["text"], m["target"]) for m in LINK.finditer(line)] == links


def test_links_are_relative_to_the_folder_of_their_document(small_project):
    (small_project / "sub").mkdir()
    (small_project / "sub" / "DOC.md").write_text(
        "# Sub\n\n[up](../engine.py), [`clip_gradients`](../engine.py#L4), [here](DOC.md#sub), [top](#sub) and "
        "[not here](engine.py)\n",
        encoding="utf-8",
    )
    problems = check_document(small_project, "sub/DOC.md")
    assert [str(p) for p in problems] == [
        "sub/DOC.md:3: [not here](engine.py) points at engine.py, which does not exist"
    ]


def test_what_counts_as_showing_a_name():
    assert matches("Classifier.training_step", "    def training_step(self, batch):")
    assert matches('self.log("lr", ...)', '        self.log("lr", self.optimizers().param_groups[0]["lr"])')
    assert not matches("step", "    global_steps += 1")
    assert not matches("scaler.step(optimizer)", "    optimizer.step()")
    assert matches("trainer.test(module, ...)", "    trainer.test(module, datamodule=data,")
    assert candidate_lines("EarlyStopping", ["x = EarlyStopping()", "class EarlyStopping:"]) == [2]
    assert "heading-two" in heading_anchors("# One\n## Heading two\n```\n# not a heading\n```\n")


if __name__ == "__main__":
    all_problems = {document: check_document(PROJECT_ROOT, document) for document in DOCUMENTS}
    if "--fix" in sys.argv[1:]:
        for document, problems in all_problems.items():
            if problems:
                print(f"{document}: fixed {fix_document(PROJECT_ROOT, document, problems)} link(s)")
        all_problems = {document: check_document(PROJECT_ROOT, document) for document in DOCUMENTS}
    remaining = [problem for problems in all_problems.values() for problem in problems]
    print(report(remaining) if remaining else "all links resolve")
    sys.exit(1 if remaining else 0)
