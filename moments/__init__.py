"""The Ray and LanceDB programs of the product, in rooms by capability:

- ``moments.index``: the LanceDB tables (`segments`, `cells`, `runs`) and search over stored queries;
- ``moments.library``: jobs over a whole library on Ray Data (grounding, cell indexing, every-video grounding);
- ``moments.search``: two-stage search of a new sentence (cells by ANN, then DRN on the candidates);
- ``moments.train``: DRN's stages on Ray Train;
- ``moments.serve``: the search service on Ray Serve and its page;
- ``moments.demo``: the whole product on a generated library.

The names below load on first use (PEP 562), so ``import moments`` costs nothing::

    from moments import Index, TwoStageSearcher
    Index("index/").search("someone opens a door", k=5)
    TwoStageSearcher("index/").search("a red square appears", k=5)
"""

from drn.lazy import lazy_exports

_EXPORTS = {
    "Index": "moments.index",
    "SearchAnswer": "moments.index",
    "CellsTable": "moments.index",
    "format_results": "moments.index",
    "TwoStageSearcher": "moments.search",
    "TwoStageOptions": "moments.search",
    "GroundingJob": "moments.library",
    "run_grounding": "moments.library",
    "IndexLibraryJob": "moments.library",
    "run_index_library": "moments.library",
    "ground_every_video": "moments.library",
    "Resources": "moments.library",
    "WindowOptions": "moments.library",
    "fit_distributed": "moments.train",
    "run_demo": "moments.demo",
    "DemoSettings": "moments.demo",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
