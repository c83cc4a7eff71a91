"""Jobs over a whole video library on Ray Data, and what they share.

- ``grounding``: a query collection x the library into the `segments` table (``run_grounding``);
- ``cell_indexing``: the retrieval stage's cells of every video into the `cells` table (``run_index_library``);
- ``every_video``: one new text grounded against every video now (``ground_every_video``);
- ``model`` (a checkpoint loaded for grounding, the encoded query side), ``ray_data`` (which videos, resources,
  the actor pool), ``scoring`` (videos x queries -> rows), ``windows`` (long videos), ``queries`` (collections),
  ``batches`` (actor output and buffered writes), ``bounded`` (each query's best M rows), ``corpus`` (corpus
  evaluation of a grounding run).

Names load on first use (PEP 562), so that importing the package costs nothing until a job runs.
"""

from __future__ import annotations

from drn.lazy import exported_names, lazy_exports

_EXPORTS = {
    "moments.library.grounding": ("GroundingJob", "GroundingSummary", "run_grounding"),
    "moments.library.cell_indexing": ("IndexLibraryJob", "IndexSummary", "run_index_library"),
    "moments.library.every_video": ("ground_every_video",),
    "moments.library.model": ("LoadedModel", "load_model"),
    "moments.library.ray_data": ("Resources", "WindowOptions", "select_videos"),
    "moments.library.queries": ("Query", "QueryCollection", "read_queries"),
    "moments.library.corpus": ("corpus_from_run",),
}
__all__ = exported_names(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
