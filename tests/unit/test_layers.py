"""Every import arrow in ``src/residency`` points down (docs/architecture.md, "Layout").

``cli`` composes everything; the node (``client``), the coordinator (``server``) and the
auditor import ``common`` and themselves only, so an auditor's checks never run node code
and neither side can reach into the other; ``common`` imports nothing above it. Imports are
read from the source (deferred and ``TYPE_CHECKING`` ones too), so no arrow hides.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "residency"
ALLOWED = {
    "common": {"common"},
    "client": {"common", "client"},
    "server": {"common", "server"},
    "auditor": {"common", "auditor"},
    "cli": {"common", "client", "server", "auditor", "cli"},
}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "residency" else None


def arrows(path: Path) -> set[tuple[str, int]]:
    """Each ``residency.X`` module ``path`` imports, with the line it is imported on."""
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add((node.module, node.lineno))
            if node.module == "residency":
                found.update((f"residency.{a.name}", node.lineno) for a in node.names)
    return found


def test_every_layer_is_known() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(ALLOWED)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_no_import_points_up_or_across(layer: str) -> None:
    wrong = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for module, line in sorted(arrows(path)):
            target = _layer(module)
            if target is not None and target not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    assert not wrong, f"{layer} may import only {sorted(ALLOWED[layer])}:\n" + "\n".join(wrong)


def test_the_check_sees_an_arrow_that_points_up(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from residency.client import trainer\n"
        "def f():\n    import residency.server.simulated_app\n",
        encoding="utf-8",
    )
    assert {m for m, _ in arrows(module)} >= {"residency.client", "residency.server.simulated_app"}
