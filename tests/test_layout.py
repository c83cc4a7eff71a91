"""The layers import downwards only, and no module imports itself round a circle (DESIGN.md section 2,
docs/ARCHITECTURE.md "Import rules").

Imports are read from the source (``ast``), at any depth: an import placed inside a function counts like one at the
top of the file, and so do the names a package exports lazily (its ``_EXPORTS`` table, see ``drn.lazy``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("drn", "pipeline", "moments", "jobs")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Every module of the project's packages under ``root``: dotted name -> file."""
    return {module_name(path, root): path for package in packages for path in sorted((root / package).rglob("*.py"))}


def imported_names(path: Path, module: str) -> list[str]:
    """The dotted names ``module`` (the file at ``path``) imports, at any depth: ``import a.b`` gives ``a.b``,
    ``from a.b import c`` gives ``a.b.c`` (a module or a name in ``a.b``), relative imports resolved, plus the
    modules of a lazy ``_EXPORTS`` table (``{module: names}``, see ``drn.lazy``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names += [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            if isinstance(node.value, ast.Dict):
                names += [key.value for key in node.value.keys
                          if isinstance(key, ast.Constant) and isinstance(key.value, str)]
    return names


def import_graph(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    """module -> the project modules it imports (``from a import b``: ``a.b`` when that is a module, else ``a``)."""
    modules = project_modules(root, packages)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for imported in imported_names(path, name):
            target = imported if imported in modules else imported.rpartition(".")[0]
            if target in modules and target != name:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``: one path per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def forbidden_imports(root: Path, package: str, forbidden: Iterable[str]) -> list[str]:
    """``'module: name'`` for every import, at any depth, by a module of ``package`` (a dotted prefix) of a name
    under one of the ``forbidden`` dotted prefixes."""
    prefixes = tuple(forbidden)
    top = package.split(".")[0]
    offenders = []
    for name, path in project_modules(root, [top]).items():
        if name != package and not name.startswith(package + "."):
            continue
        for imported in imported_names(path, name):
            if any(imported == prefix or imported.startswith(prefix + ".") for prefix in prefixes):
                offenders.append(f"{name}: {imported}")
    return offenders


# (package, prefixes it must never import, why)
RULES = [
    ("drn", ["ray", "lancedb", "pipeline", "moments", "jobs"], "the model library knows no Ray, LanceDB or programs"),
    ("pipeline", ["lancedb", "moments", "jobs"], "the video side knows no index and no programs"),
    ("moments", ["jobs"], "library code knows no command line"),
    ("moments.index", ["torch", "ray", "moments.library", "moments.search", "moments.serve", "moments.train",
                       "moments.demo"], "the LanceDB layer sits below every program"),
    ("moments.library", ["moments.search", "moments.serve", "moments.train", "moments.demo"],
     "library jobs never reach up to search, the service, training or the demo"),
    ("moments.search", ["moments.library.grounding", "moments.library.cell_indexing", "moments.library.every_video",
                        "moments.serve", "moments.train", "moments.demo"],
     "search depends on model loading and the tables, never on a batch job"),
    ("moments.train", ["moments.library", "moments.search", "moments.serve", "moments.demo"],
     "training is its own room"),
    ("moments.serve", ["moments.library.grounding", "moments.library.cell_indexing", "moments.train", "moments.demo"],
     "the service searches; it runs no batch job"),
]


def test_every_layer_imports_downwards_only() -> None:
    for package, forbidden, why in RULES:
        assert any(name.startswith(package) for name in project_modules(ROOT, [package.split(".")[0]])), package
        assert forbidden_imports(ROOT, package, forbidden) == [], why


def test_no_import_cycle_between_the_projects_modules() -> None:
    graph = import_graph(ROOT)
    assert len(graph) > 100 and sum(len(edges) for edges in graph.values()) > 300  # the walk saw the project
    assert cycles(graph) == []


def test_the_lancedb_layer_loads_neither_torch_nor_ray() -> None:
    code = ("import sys, moments.index, moments.index.answer, moments.index.cells, moments.index.runs; "
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def plant(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_a_planted_cycle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    plant(tmp_path, {
        "moments/__init__.py": "",
        "moments/index/__init__.py": "from moments.index.table import Index\n",
        "moments/index/table.py": "class Index:\n    def live(self):\n        from moments.search.two import go\n",
        "moments/search/__init__.py": "",
        "moments/search/two.py": "from moments.index import Index\n\ndef go():\n    return Index\n",
        "moments/library/__init__.py": "_EXPORTS = {'moments.library.job': ('run',)}\n",
        "moments/library/job.py": "import moments.library\n",
    })
    found = cycles(import_graph(tmp_path, ["moments"]))
    assert ["moments.index", "moments.index.table", "moments.search.two"] in found
    assert ["moments.library", "moments.library.job"] in found  # through a lazy export
    assert len(found) == 2


def test_a_planted_forbidden_import_is_found(tmp_path: Path) -> None:
    plant(tmp_path, {
        "moments/__init__.py": "",
        "moments/index/__init__.py": "",
        "moments/index/table.py": "def f():\n    import torch\n    from ray import data\n",
        "moments/search/__init__.py": "",
        "moments/search/two.py": "from ..library import grounding\nfrom moments.library.model import load\n",
        "moments/library/__init__.py": "",
        "moments/library/grounding.py": "",
        "moments/library/model.py": "",
    })
    assert forbidden_imports(tmp_path, "moments.index", ["torch", "ray"]) == [
        "moments.index.table: torch", "moments.index.table: ray.data"]
    assert forbidden_imports(tmp_path, "moments.search", ["moments.library.grounding"]) == [
        "moments.search.two: moments.library.grounding"]
    assert cycles(import_graph(tmp_path, ["moments"])) == []
