"""DRN training on Ray Train: ``fit_distributed`` trains the stages data-parallel on a Ray cluster, one TorchTrainer
per stage (``driver``), with the per-worker loop in ``worker`` and the retrieval stage in ``retrieval``; a run keeps
its checkpoints and summaries in a local folder or an object store (``storage``) and resumes from them, and
``progress`` follows a local run epoch by epoch. The command line is ``jobs.train --num-workers N``; training in
one process without Ray is ``drn.training.fit``. Names load on first use (PEP 562), so importing this package does
not import Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moments.train.driver import StageFailedError, fit_distributed
    from moments.train.progress import EpochWatcher
    from moments.train.storage import RunStorage

_HOMES = {
    "fit_distributed": "moments.train.driver",
    "StageFailedError": "moments.train.driver",
    "RunStorage": "moments.train.storage",
    "EpochWatcher": "moments.train.progress",
}

__all__ = ["EpochWatcher", "RunStorage", "StageFailedError", "fit_distributed"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
