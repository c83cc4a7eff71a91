"""The public API: every name the README's Python section imports, and every name of ``drn.__all__`` and
``moments.__all__``, resolves; importing the packages loads neither torch nor Ray (jobs check input first)."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_python_imports() -> list[tuple[str, str]]:
    """``(module, name)`` for each name imported in the Python blocks of the README's "From Python" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### From Python", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    pairs = []
    for block in re.findall(r"```python\n(.*?)```", section, flags=re.S):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom):
                pairs += [(node.module, alias.name) for alias in node.names]
    return pairs


def test_the_readme_python_section_imports_names_that_exist() -> None:
    pairs = readme_python_imports()
    assert {module for module, _ in pairs} == {"drn", "moments"}
    assert len(pairs) >= 10
    for module, name in pairs:
        assert name in importlib.import_module(module).__all__, f"{module}.{name} is not in __all__"
        assert getattr(importlib.import_module(module), name) is not None


@pytest.mark.parametrize("package", ["drn", "moments", "moments.index", "moments.library", "moments.search",
                                     "moments.train", "moments.serve", "moments.demo", "drn.store", "drn.text"])
def test_every_exported_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__doc__ and module.__doc__.strip(), f"{package} says in a docstring what lives there"
    assert module.__all__ and len(set(module.__all__)) == len(module.__all__)
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
        assert name in dir(module)
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


def test_importing_the_packages_loads_neither_torch_nor_ray() -> None:
    code = ("import sys, drn, moments, moments.library, moments.search, moments.train, moments.demo; "
            "print(sorted(m for m in ('torch', 'ray', 'lancedb') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
