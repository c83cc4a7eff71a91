"""The LanceDB tables and search over stored queries; no torch, no Ray.

- ``db``: the one connection (S3 settings included), SQL literals, the writability check;
- ``segments`` and ``table``: the `segments` table of grounded moments (``Index``);
- ``queries``: the `queries` table beside it (one row per run and query: text, key, embedding), where search
  finds the stored queries, and the migration of indices written before it;
- ``answer``: search over stored queries (``Index.answer``, ``SearchAnswer``);
- ``results``: the result columns of every search, the library-wide ranking, the printed table;
- ``cells``: the retrieval stage's `cells` table; ``live_inputs``: beside it, each video's model-side grids, which
  live search reads by key instead of the feature store; ``runs``: the `runs` table; ``run_videos``: the videos each
  grounding run has finished (what a resumed or grown run skips).

Names load on first use (PEP 562): the service's client and the printed table need no LanceDB.
"""

from drn.lazy import exported_names, lazy_exports

_EXPORTS = {
    "moments.index.answer": ("SAME_QUERY_COSINE", "SearchAnswer", "match_kind"),
    "moments.index.cells": ("CELLS_TABLE", "CellsInfo", "CellsTable"),
    "moments.index.db": ("connect", "default_db_uri", "sql_literal", "in_list"),
    "moments.index.live_inputs": ("InputsInfo", "LiveInputsTable", "VideoGrids", "inputs_table_name"),
    "moments.index.results": (
        "RESULT_COLUMNS", "empty_result", "format_results", "rank_across_library", "result_schema", "top_results",
        "with_match_columns",
    ),
    "moments.index.queries": (
        "QUERIES_TABLE", "QUERY_ROW_KEY", "QueriesTable", "queries_schema", "queries_table", "queries_table_name",
        "query_rows",
    ),
    "moments.index.runs": ("RunRecord", "read_runs", "record_run"),
    "moments.index.run_videos": ("RUN_VIDEOS_TABLE", "RunVideos"),
    "moments.index.segments": ("ROW_KEY", "SEGMENTS_TABLE", "segment_rows", "segments_schema", "segments_table"),
    "moments.index.table": ("Index",),
}
__all__ = exported_names(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
