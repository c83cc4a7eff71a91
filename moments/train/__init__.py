"""DRN training on Ray Train: ``fit_distributed`` trains the stages data-parallel on a Ray cluster, one TorchTrainer
per stage (``driver``), with the per-worker loop in ``worker`` and the retrieval stage in ``retrieval``; a run keeps
its checkpoints and summaries in a local folder or an object store (``storage``) and resumes from them, and
``progress`` follows a local run epoch by epoch. The command line is ``jobs.train --num-workers N``; training in
one process without Ray is ``drn.training.fit``. Names load on first use (PEP 562), so importing this package does
not import Ray.
"""

from __future__ import annotations

from drn.lazy import exported_names, lazy_exports

_EXPORTS = {
    "moments.train.driver": ("StageFailedError", "fit_distributed"),
    "moments.train.storage": ("RunStorage",),
    "moments.train.progress": ("EpochWatcher",),
}
__all__ = exported_names(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
