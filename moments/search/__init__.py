"""Search of a sentence nobody grounded, across the library, in two stages (``two_stage``): the retrieval stage's
nearest cells in the `cells` table, then DRN on the candidate videos only. Depends on model loading
(``moments.library.model``) and the tables (``moments.index``), never on the batch jobs."""

from __future__ import annotations

from drn.lazy import exported_names, lazy_exports

_EXPORTS = {
    "moments.search.two_stage": ("TwoStageSearcher", "TwoStageOptions", "fuse"),
}
__all__ = exported_names(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
