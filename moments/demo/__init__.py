"""The demo: the whole project on a synthetic library, from videos to search (``python -m jobs.demo``).

``run_demo(DemoSettings(out=...))`` runs every step (``run``). What the demo can vary, where it writes and the
output folder's guard are in ``settings``; each step, calling library code only, in ``steps``; the step printer,
the printed tables and notes and the ``DemoReport`` in ``report``. Names load on first use (PEP 562).
"""

from __future__ import annotations

from drn.lazy import exported_names, lazy_exports

_EXPORTS = {
    "moments.demo.run": ("run_demo",),
    "moments.demo.settings": ("DemoPaths", "DemoSettings", "SettingError", "prepare_output"),
    "moments.demo.report": ("DemoReport",),
}
__all__ = exported_names(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
