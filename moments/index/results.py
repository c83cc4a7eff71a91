"""Search results, whichever search made them: their columns, the one library-wide ranking of moments, and the
text table that ``jobs.search`` and the demo print.

A result row has ``result_rank``, the columns of ``RESULT_COLUMNS`` and the match columns: ``matched_query`` (the
stored query whose moments the row shows), ``query_similarity`` (its cosine to the searched text),
``query_match`` ("same", "paraphrase" or "other"), ``query_relevance`` and ``calibrated`` (the run's checkpoint
was trained with negative pairs, so its scores compare across videos; null when unknown).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from moments.index.segments import segments_schema

RESULT_COLUMNS = ("run_id", "query_id", "query_text", "video_id", "start_s", "end_s", "score", "match_score",
                  "iou_score", "rank", "library_rank", "checkpoint_id")
MATCH_FIELDS = (pa.field("matched_query", pa.string()), pa.field("query_similarity", pa.float32()),
                pa.field("query_match", pa.string()), pa.field("query_relevance", pa.float32()),
                pa.field("calibrated", pa.bool_()))


def result_schema(extra: Sequence[pa.Field] = ()) -> pa.Schema:
    """The columns of a result table, with ``extra`` fields after the match columns."""
    schema = segments_schema()
    return pa.schema([pa.field("result_rank", pa.int32()), *(schema.field(name) for name in RESULT_COLUMNS),
                      *MATCH_FIELDS, *extra])


def empty_result(extra: Sequence[pa.Field] = ()) -> pa.Table:
    """A result table with no rows (made once per ``extra``: Arrow tables do not change)."""
    return _empty_result(tuple(extra))


@functools.lru_cache(maxsize=16)
def _empty_result(extra: tuple[pa.Field, ...]) -> pa.Table:
    return result_schema(extra).empty_table()


def with_match_columns(rows: pa.Table, matched_query: str, similarity: float, match: str,
                       calibrated: bool | None) -> pa.Table:
    """Rows of one query (a live search) with the match columns that stored-query search adds, so both read alike."""
    count = rows.num_rows
    values = (matched_query, similarity, match, 1.0, calibrated)
    for field, value in zip(MATCH_FIELDS, values, strict=True):
        rows = rows.append_column(field, pa.array([value] * count, field.type))
    return rows


def rank_across_library(rows: pa.Table) -> pa.Table:
    """Segments of one query from many videos, best score first (ties: video id, then rank), with
    ``library_rank`` set to that order."""
    ranked = rows.sort_by([("score", "descending"), ("video_id", "ascending"), ("rank", "ascending")])
    return ranked.set_column(ranked.schema.get_field_index("library_rank"), "library_rank",
                             pa.array(np.arange(ranked.num_rows, dtype=np.int32)))


def top_results(ranked: pa.Table, k: int, *, text: str, calibrated: bool | None, min_score: float | None = None,
                extra: Sequence[str] = ()) -> pa.Table:
    """The ``k`` first rows of a ranking of one text's moments (``rank_across_library``) as a result table: those
    scoring at least ``min_score``, with ``result_rank``, the match columns and then the ``extra`` columns."""
    best = ranked.slice(0, k)
    if min_score is not None:
        best = best.filter(pc.greater_equal(best.column("score"), pa.scalar(float(min_score), pa.float32())))
    kept = best.select(list(extra))
    best = best.select(list(RESULT_COLUMNS))
    best = best.add_column(0, "result_rank", pa.array(np.arange(best.num_rows, dtype=np.int32)))
    best = with_match_columns(best, text, 1.0, "same", calibrated)
    for name in kept.column_names:
        best = best.append_column(kept.schema.field(name), kept.column(name))
    return best


def format_results(results: pa.Table) -> str:
    """A readable table: rank, query matched, whether it is the searched text, video, start-end in seconds, score."""
    if results.num_rows == 0:
        return "no segments found"
    rows = results.to_pylist()
    header = ("#", "query matched", "match", "video", "start-end (s)", "score")
    lines = [
        (str(row["result_rank"] + 1), shorten(row["query_text"], 48), match_label(row), shorten(row["video_id"], 24),
         f"{row['start_s']:.2f}-{row['end_s']:.2f}", f"{row['score']:.3f}")
        for row in rows
    ]
    widths = [max(len(header[c]), *(len(line[c]) for line in lines)) for c in range(len(header))]
    out = ["  ".join(text.ljust(width) for text, width in zip(header, widths, strict=True))]
    out.append("  ".join("-" * width for width in widths))
    out += ["  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


def match_label(row: dict) -> str:
    """``same``, ``paraphrase 0.98`` or ``OTHER 0.81``: whether a row answers the searched text
    (``moments.index.table.Index.answer``); rows without the column (older callers) read as ``same``."""
    match = row.get("query_match") or "same"
    if match == "same":
        return "same"
    return f"{'paraphrase' if match == 'paraphrase' else 'OTHER'} {row.get('query_similarity') or 0:.2f}"


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, the last one an ellipsis when it was cut."""
    return text if len(text) <= width else text[: width - 1] + "…"
