"""Fixtures for the template's tests. pytest-cookies keeps cookiecutter's replay files out of ~."""

import json
import os
import tempfile
from pathlib import Path

import pytest

TEMPLATE = Path(__file__).resolve().parents[1]
CONTEXT = json.loads((TEMPLATE / "cookiecutter.json").read_text())


@pytest.fixture(scope="session", autouse=True)
def isolated_tmpdir(tmp_path_factory):
    """cookiecutter writes its rendered hook scripts to $TMPDIR: keep them in this session's folder."""
    previous = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("tmpdir"))
    tempfile.tempdir = None  # forget the cached default so the new TMPDIR is used
    yield
    if previous is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = previous
    tempfile.tempdir = None


@pytest.fixture(scope="session")
def default_bake(cookies_session):
    """The template baked once with its defaults, shared by the tests that only read it."""
    result = cookies_session.bake(template=str(TEMPLATE))
    assert result.exit_code == 0, result.exception
    return result.project_path


def pytest_collection_modifyitems(items):
    """The longest tests at the head of each half of the collection: make test's two xdist workers (worksteal) each
    take one half, so each starts with a long test and the two finish together."""
    heads = (  # per half: the tests that start it, in order
        ("test_baked_project_slow_tier_passes[rest]", "test_the_minimal_bake_passes_its_fast_tier"),
        ("test_baked_project_slow_tier_passes[run]", "test_the_quick_starts_pytest_passes_with_only_the_dev_extra"),
    )
    first, second = ([item for name in half for item in items if item.name == name] for half in heads)
    rest = [item for item in items if item not in first and item not in second]
    middle = max(len(items) // 2 - len(first), 0)
    items[:] = first + rest[:middle] + second + rest[middle:]
