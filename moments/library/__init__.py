"""Jobs over a whole video library on Ray Data, and what they share.

- ``grounding``: a query collection x the library into the `segments` table (``run_grounding``);
- ``cell_indexing``: the retrieval stage's cells of every video into the `cells` table (``run_index_library``);
- ``every_video``: one new text grounded against every video now (``ground_every_video``);
- ``model`` (a checkpoint loaded for grounding, the encoded query side), ``ray_data`` (which videos, resources,
  the actor pool), ``scoring`` (videos x queries -> rows), ``windows`` (long videos), ``queries`` (collections),
  ``batches`` (actor output and buffered writes), ``corpus`` (corpus evaluation of a grounding run).

Names load on first use (PEP 562), so that importing the package costs nothing until a job runs.
"""

from __future__ import annotations

from drn.lazy import lazy_exports

_EXPORTS = {
    "GroundingJob": "moments.library.grounding",
    "GroundingSummary": "moments.library.grounding",
    "run_grounding": "moments.library.grounding",
    "IndexLibraryJob": "moments.library.cell_indexing",
    "IndexSummary": "moments.library.cell_indexing",
    "run_index_library": "moments.library.cell_indexing",
    "ground_every_video": "moments.library.every_video",
    "LoadedModel": "moments.library.model",
    "load_model": "moments.library.model",
    "Resources": "moments.library.ray_data",
    "WindowOptions": "moments.library.ray_data",
    "select_videos": "moments.library.ray_data",
    "Query": "moments.library.queries",
    "QueryCollection": "moments.library.queries",
    "read_queries": "moments.library.queries",
    "corpus_from_run": "moments.library.corpus",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
