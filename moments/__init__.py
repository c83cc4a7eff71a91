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

from drn.lazy import exported_names, lazy_exports

_EXPORTS = {
    "moments.index": ("Index", "SearchAnswer", "CellsTable", "format_results"),
    "moments.search": ("TwoStageSearcher", "TwoStageOptions"),
    "moments.library": (
        "GroundingJob", "run_grounding", "IndexLibraryJob", "run_index_library", "ground_every_video", "Resources",
        "WindowOptions",
    ),
    "moments.train": ("fit_distributed",),
    "moments.demo": ("run_demo", "DemoSettings"),
}
__all__ = exported_names(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
