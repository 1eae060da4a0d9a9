"""Every test a document names exists: a privacy claim's evidence cannot silently move away.

docs/privacy.md names the test that checks each claim, and other documents and docstrings
cite tests the same way (``tests/<folder>/<file>.py::<test>``, or ``...::<test>`` for the file
named last). A test renamed or moved to another tier's folder leaves such a citation dangling.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CITATION = re.compile(r"(tests/[\w/]+\.py)(?:::(\w+))?|(?<![/\w])\.\.\.::(\w+)")


@cache
def _defined(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return frozenset(node.name for node in ast.walk(tree) if isinstance(node, kinds))


def _citing_files() -> list[Path]:
    documents = [*ROOT.glob("docs/*.md"), ROOT / "README.md", ROOT / "bench" / "README.md"]
    return sorted([*documents, *ROOT.glob("src/residency/**/*.py")])


def dangling(text: str) -> list[str]:
    """The citations in ``text`` that name no existing file or test."""
    missing, last = [], None
    for match in CITATION.finditer(text):
        cited, name, short = match.groups()
        if cited is not None:
            last = ROOT / cited
            if not last.is_file():
                missing.append(cited)
                continue
        elif last is None or not last.is_file():
            missing.append(f"...::{short} (no file named before it)")
            continue
        test = name or short
        if test is not None and test not in _defined(last):
            missing.append(f"{last.relative_to(ROOT)}::{test}")
    return missing


def test_every_cited_test_exists() -> None:
    problems = {
        str(path.relative_to(ROOT)): found
        for path in _citing_files()
        if (found := dangling(path.read_text(encoding="utf-8")))
    }
    assert problems == {}


def test_a_moved_or_renamed_test_is_caught() -> None:
    here = "tests/unit/test_doc_references.py"
    assert dangling(f"`{here}::test_every_cited_test_exists`, `...::dangling`") == []
    assert dangling(f"`{here}::test_that_was_renamed`") == [f"{here}::test_that_was_renamed"]
    assert dangling("`tests/unit/test_gone.py::test_x`") == ["tests/unit/test_gone.py"]
    assert dangling("`...::test_x`") == ["...::test_x (no file named before it)"]
