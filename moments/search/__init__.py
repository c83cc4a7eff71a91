"""Search of a sentence nobody grounded, across the library, in two stages (``two_stage``): the retrieval stage's
nearest cells in the `cells` table, then DRN on the candidate videos only. Depends on model loading
(``moments.library.model``) and the tables (``moments.index``), never on the batch jobs."""

from __future__ import annotations

from drn.lazy import lazy_exports

_EXPORTS = {
    "TwoStageSearcher": "moments.search.two_stage",
    "TwoStageOptions": "moments.search.two_stage",
    "fuse": "moments.search.two_stage",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
