"""The demo: the whole project on a synthetic library, from videos to search (``python -m jobs.demo``).

``run_demo(DemoSettings(out=...))`` runs every step (``run``). What the demo can vary, where it writes and the
output folder's guard are in ``settings``; each step, calling library code only, in ``steps``; the step printer,
the printed tables and notes and the ``DemoReport`` in ``report``. Names load on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moments.demo.report import DemoReport
    from moments.demo.run import run_demo
    from moments.demo.settings import DemoPaths, DemoSettings, SettingError, prepare_output

_HOMES = {
    "run_demo": "moments.demo.run",
    "DemoReport": "moments.demo.report",
    "DemoPaths": "moments.demo.settings",
    "DemoSettings": "moments.demo.settings",
    "SettingError": "moments.demo.settings",
    "prepare_output": "moments.demo.settings",
}

__all__ = ["DemoPaths", "DemoReport", "DemoSettings", "SettingError", "prepare_output", "run_demo"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
