"""Lazy package exports (PEP 562): a package's ``__init__`` names what it exports and where each name lives, and
the module holding it is imported on first use, so that importing the package stays cheap (a job checks its input
before torch or Ray load)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def exported_names(exports: Mapping[str, Sequence[str]]) -> list[str]:
    """Every name of an ``{module: names}`` table, sorted: a package's ``__all__``."""
    return sorted(name for names in exports.values() for name in names)


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps each module to the names it gives the package.

    Usage in a package's ``__init__``::

        _EXPORTS = {"moments.index.table": ("Index",)}
        __all__ = exported_names(_EXPORTS)
        __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
    """
    home = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home[name]), name)
        setattr(sys.modules[package], name, value)  # the next access is a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *home})

    return __getattr__, __dir__
