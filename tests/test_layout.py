"""The model library must stay free of Ray and LanceDB (DESIGN.md section 2)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_drn_never_imports_ray_or_lancedb() -> None:
    offenders = []
    for path in sorted((ROOT / "drn").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in {"ray", "lancedb"}:
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []
    assert any((ROOT / "drn").rglob("*.py"))
