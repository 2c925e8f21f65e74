"""Rules of the code's shape, checked rather than hoped for (docs/architecture.md, tests):

- every file in models/ and nodes/ reads in one sitting (at most 450 lines);
- models/ keeps no module-level mutable state: a cache there would outlive what ComfyUI holds (the model objects own
  their caches, models/components.py); constants are UPPER_CASE and weak registries hold nothing alive;
- every pointer in a comment or docstring leads to a file of this repository: `docs/<file>.md, <section>` names an
  existing file and one of its headings, and nothing points at documents a person who clones the pack does not have.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CODE = sorted((REPO_ROOT / "models").rglob("*.py")) + sorted((REPO_ROOT / "nodes").rglob("*.py"))
SOURCES = (
    CODE
    + sorted(path for folder in ("tools", "benchmarks") for path in (REPO_ROOT / folder).rglob("*.py"))
    + [REPO_ROOT / "__init__.py", REPO_ROOT / "install.py"]
)
MAX_LINES = 450
MUTABLE_CALLS = {"dict", "list", "set", "OrderedDict", "defaultdict", "deque", "Counter"}
MUTABLE_LITERALS = (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)
DOC_POINTER = re.compile(r"docs/([A-Za-z0-9_-]+\.md)(?:,\s*([^)\n;:.]+))?")


def _relative(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


@pytest.mark.parametrize("path", CODE, ids=_relative)
def test_each_file_of_models_and_nodes_reads_in_one_sitting(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{_relative(path)} has {lines} lines; split it by concept"


def module_level_mutables(source: str) -> list[str]:
    """Names bound at module level to a mutable container, except UPPER_CASE constants and `__all__`."""
    found = []
    for node in ast.parse(source).body:
        if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
            continue
        value = node.value
        called = getattr(value.func, "id", getattr(value.func, "attr", None)) if isinstance(value, ast.Call) else None
        if not (isinstance(value, MUTABLE_LITERALS) or called in MUTABLE_CALLS):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        found += [t.id for t in targets if isinstance(t, ast.Name) and not t.id.isupper() and t.id != "__all__"]
    return found


def test_the_mutable_state_check_sees_a_module_level_cache():
    assert module_level_mutables("_cache: dict = {}\nseen = OrderedDict()\nKNOWN = {}\n__all__ = []\n") == [
        "_cache",
        "seen",
    ]


def test_models_keep_no_module_level_mutable_state():
    found = {
        _relative(path): names
        for path in CODE
        if _relative(path).startswith("models")
        for names in [module_level_mutables(path.read_text(encoding="utf-8"))]
        if names
    }
    assert not found, f"module-level mutable state (give it an owner object): {found}"


def _headings(doc: Path) -> list[str]:
    return [
        line.lstrip("#").strip().lower() for line in doc.read_text(encoding="utf-8").splitlines() if line[:1] == "#"
    ]


def test_every_docs_pointer_names_an_existing_file_and_heading():
    broken = []
    for path in SOURCES:
        for match in DOC_POINTER.finditer(path.read_text(encoding="utf-8")):
            doc = REPO_ROOT / "docs" / match.group(1)
            if not doc.is_file():
                broken.append(f"{_relative(path)}: {match.group(0)} (no such file)")
                continue
            section = (match.group(2) or "").strip().lower()
            if section and not any(section in heading or heading in section for heading in _headings(doc)):
                broken.append(f"{_relative(path)}: {match.group(0)} (no such heading)")
    assert not broken, "\n".join(broken)


def test_no_comment_points_outside_the_repository():
    outside = re.compile(r"\.\./shared|shared" + "/reference|\u00a7")  # spelled so that this line does not match
    texts = sorted((REPO_ROOT / "docs").glob("*.md")) + sorted((REPO_ROOT / "tests").glob("*.py"))
    found = [
        f"{_relative(path)}:{number}"
        for path in SOURCES + texts + [REPO_ROOT / "README.md"]
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if outside.search(line)
    ]
    assert not found, f"pointers to documents outside the repository: {found}"
