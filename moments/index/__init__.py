"""The LanceDB tables: `segments` (grounded moments, ``table``), `cells` (the retrieval stage's vectors, ``cells``)
and `runs` (what produced each grounding run, ``runs``), with search over stored queries. No torch, no Ray."""

from moments.index.cells import CELLS_TABLE, CellsInfo, CellsTable
from moments.index.results import format_results
from moments.index.runs import RunRecord, read_runs, record_run
from moments.index.table import (
    RESULT_COLUMNS,
    ROW_KEY,
    SAME_QUERY_COSINE,
    SEGMENTS_TABLE,
    Index,
    SearchAnswer,
    default_db_uri,
    match_kind,
    segment_rows,
    segments_schema,
    segments_table,
    with_match_columns,
)

__all__ = [
    "CELLS_TABLE", "RESULT_COLUMNS", "ROW_KEY", "SAME_QUERY_COSINE", "SEGMENTS_TABLE", "CellsInfo", "CellsTable",
    "Index", "RunRecord", "SearchAnswer", "default_db_uri", "format_results", "match_kind", "read_runs",
    "record_run", "segment_rows", "segments_schema", "segments_table", "with_match_columns",
]
