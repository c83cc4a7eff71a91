"""The layers import downwards only: drn/ never Ray or LanceDB, moments/ never jobs/ (DESIGN.md section 2)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports_of(package: str, forbidden: set[str]) -> list[str]:
    """``'path: module'`` for every import of a ``forbidden`` top-level package in ``package``, at any depth
    (function-local imports included)."""
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in forbidden:
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
    return offenders


def test_drn_never_imports_ray_or_lancedb() -> None:
    assert imports_of("drn", {"ray", "lancedb"}) == []
    assert any((ROOT / "drn").rglob("*.py"))


def test_moments_never_imports_jobs() -> None:
    assert imports_of("moments", {"jobs"}) == []
    assert any((ROOT / "moments").rglob("*.py"))
