"""scripts/check_doc_links.py: what it reads as a link, what it reports and what --fix rewrites (on small made-up
projects; tests/test_baked_docs.py runs it on a bake)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TEMPLATE

SCRIPT = TEMPLATE / "scripts" / "check_doc_links.py"
_spec = importlib.util.spec_from_file_location("check_doc_links", SCRIPT)
check_doc_links = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_doc_links)
LINK, candidate_lines, check_document, fix_document, heading_anchors, matches = (
    check_doc_links.LINK, check_doc_links.candidate_lines, check_doc_links.check_document,
    check_doc_links.fix_document, check_doc_links.heading_anchors, check_doc_links.matches)


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


def test_the_command_line_checks_fixes_and_refuses_a_folder_that_is_not_a_project(small_project):
    (small_project / "README.md").write_text("# Readme\n\n[`clip_gradients`](engine.py#L2)\n", encoding="utf-8")
    for document in ("COMPARISON.md", "benchmarks/README.md"):
        (small_project / document).parent.mkdir(exist_ok=True)
        (small_project / document).write_text("# Doc\n", encoding="utf-8")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)

    broken = run(str(small_project))
    assert broken.returncode == 1 and "README.md:3: engine.py#L2 should show `clip_gradients`" in broken.stdout
    fixed = run("--fix", str(small_project))
    assert fixed.returncode == 0 and "README.md: fixed 1 link(s)" in fixed.stdout, fixed.stdout
    assert "[`clip_gradients`](engine.py#L4)" in (small_project / "README.md").read_text()
    assert run(str(small_project)).stdout.strip() == "all links resolve"
    refused = run(str(small_project / "benchmarks" / "missing"))
    assert refused.returncode == 2 and "is not a project folder" in refused.stderr


def test_documents_follow_the_tour_folder(tmp_path: Path):
    assert check_doc_links.documents(tmp_path) == ("COMPARISON.md", "README.md", "benchmarks/README.md")
    (tmp_path / "tour").mkdir()
    assert check_doc_links.documents(tmp_path)[-1] == "tour/README.md"
