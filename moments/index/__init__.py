"""The LanceDB tables and search over stored queries; no torch, no Ray.

- ``db``: the one connection (S3 settings included), SQL literals, the writability check;
- ``segments`` and ``table``: the `segments` table of grounded moments (``Index``);
- ``answer``: search over stored queries (``Index.answer``, ``SearchAnswer``);
- ``results``: the result columns of every search, the library-wide ranking, the printed table;
- ``cells``: the retrieval stage's `cells` table; ``runs``: the `runs` table.
"""

from moments.index.answer import SAME_QUERY_COSINE, SearchAnswer, match_kind
from moments.index.cells import CELLS_TABLE, CellsInfo, CellsTable
from moments.index.db import connect, default_db_uri
from moments.index.results import (
    RESULT_COLUMNS,
    empty_result,
    format_results,
    rank_across_library,
    result_schema,
    top_results,
    with_match_columns,
)
from moments.index.runs import RunRecord, read_runs, record_run
from moments.index.segments import ROW_KEY, SEGMENTS_TABLE, segment_rows, segments_schema, segments_table
from moments.index.table import Index

__all__ = [
    "CELLS_TABLE", "RESULT_COLUMNS", "ROW_KEY", "SAME_QUERY_COSINE", "SEGMENTS_TABLE", "CellsInfo", "CellsTable",
    "Index", "RunRecord", "SearchAnswer", "connect", "default_db_uri", "empty_result", "format_results",
    "match_kind", "rank_across_library", "read_runs", "record_run", "result_schema", "segment_rows",
    "segments_schema", "segments_table", "top_results", "with_match_columns",
]
