"""The rows of the LanceDB `segments` table (DESIGN.md section 7): their Arrow schema, building them from
grounding output, and the checks every write passes.

One row per (run, query, video, rank): the segment's start and end in seconds, its final, matching and IoU
scores, the query text, the checkpoint id and the run id, plus the segment's rank among all segments of its query
across the library (`library_rank`). The query's MiniLM embedding lives once per (run, query) in the `queries`
table (``moments.index.queries``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from drn.errors import InputError

SEGMENTS_TABLE = "segments"
ROW_KEY = ("run_id", "query_id", "video_id", "rank")
_REQUIRED = (
    "run_id", "checkpoint_id", "query_id", "query_text", "video_id", "rank",
    "start_s", "end_s", "score", "match_score", "iou_score",
)


def segments_schema() -> pa.Schema:
    """The Arrow schema of the `segments` table."""
    return pa.schema(
        [
            pa.field("run_id", pa.string()),
            pa.field("checkpoint_id", pa.string()),
            pa.field("query_id", pa.string()),
            pa.field("query_text", pa.string()),
            pa.field("video_id", pa.string()),
            pa.field("rank", pa.int32()),
            pa.field("library_rank", pa.int32()),
            pa.field("start_s", pa.float64()),
            pa.field("end_s", pa.float64()),
            pa.field("score", pa.float32()),
            pa.field("match_score", pa.float32()),
            pa.field("iou_score", pa.float32()),
        ]
    )


def segment_rows(
    run_id: str,
    checkpoint_id: str,
    query_id: str | int,
    query_text: str,
    video_id: str,
    segments: np.ndarray | Sequence[Sequence[float]],
) -> list[dict[str, Any]]:
    """Rows for one (query, video) from grounding output `segments[K, 5]` = (start_s, end_s, score, match, iou).

    Ranks 0..K-1 follow the score, best first; `library_rank` is left empty (see `Index.update_library_ranks`).
    """
    array = np.asarray(segments, dtype=np.float64)
    if array.ndim != 2 or (array.size and array.shape[1] != 5):
        raise InputError(f"segments must be [K, 5] (start_s, end_s, score, match, iou), got shape {array.shape}")
    if not query_text or not query_text.strip():
        raise InputError(f"query {query_id}: the query text is empty")
    order = np.argsort(-array[:, 2], kind="stable") if array.size else np.zeros(0, dtype=np.int64)
    return [
        {
            "run_id": str(run_id),
            "checkpoint_id": str(checkpoint_id),
            "query_id": str(query_id),
            "query_text": query_text,
            "video_id": str(video_id),
            "rank": rank,
            "library_rank": None,
            "start_s": float(array[row, 0]),
            "end_s": float(array[row, 1]),
            "score": float(array[row, 2]),
            "match_score": float(array[row, 3]),
            "iou_score": float(array[row, 4]),
        }
        for rank, row in enumerate(order.tolist())
    ]


def segments_table(rows: pa.Table | Sequence[dict[str, Any]]) -> pa.Table:
    """Check rows against the schema and return them as an Arrow table; bad rows are an InputError."""
    table = conform_rows(rows, segments_schema(), _REQUIRED, "segment")
    _check_values(table)
    return table


def conform_rows(rows: pa.Table | Sequence[dict[str, Any]], schema: pa.Schema, required: Sequence[str],
                 what: str) -> pa.Table:
    """Rows (dicts or a table) as a table of ``schema``: required fields present, no unknown ones, absent optional
    columns empty, each column cast to its type; an InputError naming the row or column otherwise."""
    if not isinstance(rows, pa.Table):
        rows = list(rows)
        for number, row in enumerate(rows):
            unknown = sorted(set(row) - set(schema.names))
            missing = [name for name in required if name not in row]
            if unknown or missing:
                raise InputError(f"{what} row {number}: missing fields {missing}, unknown fields {unknown}")
        try:
            return pa.Table.from_pylist(rows, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as error:
            raise InputError(f"{what} rows do not fit the schema: {error}") from None
    missing = [name for name in required if name not in rows.column_names]
    unknown = [name for name in rows.column_names if name not in schema.names]
    if missing or unknown:
        raise InputError(f"{what} table: missing columns {missing}, unknown columns {unknown}")
    columns = []
    for field in schema:
        if field.name not in rows.column_names:
            columns.append(pa.nulls(rows.num_rows, field.type))
            continue
        try:
            columns.append(rows.column(field.name).cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as error:
            raise InputError(f"{what} table: column '{field.name}' is not {field.type}: {error}") from None
    return pa.Table.from_arrays(columns, schema=schema)


def check_filled(table: pa.Table, required: Sequence[str], what: str) -> None:
    """InputError when a ``required`` field of ``table`` is empty in some row, or its query_text is blank."""
    for name in required:
        nulls = table.column(name).null_count
        if nulls:
            raise InputError(f"{what}: field '{name}' is empty in {nulls} row(s)")
    if pc.any(pc.equal(pc.utf8_trim_whitespace(table.column("query_text")), "")).as_py():
        raise InputError(f"{what}: field 'query_text' is empty")


def check_unique(table: pa.Table, key: Sequence[str], what: str) -> None:
    """InputError when a row key appears more than once in ``table`` (one write)."""
    keys = table.select(list(key)).group_by(list(key)).aggregate([([], "count_all")])
    duplicated = keys.filter(pc.greater(keys.column("count_all"), 1))
    if duplicated.num_rows:
        first = {name: duplicated.column(name)[0].as_py() for name in key}
        raise InputError(f"{what}: the row key {first} appears more than once in one write")


def _check_values(table: pa.Table) -> None:
    if table.num_rows == 0:
        return
    check_filled(table, _REQUIRED, "segment rows")
    if pc.any(pc.less(table.column("rank"), 0)).as_py():
        raise InputError("segment rows: field 'rank' is negative")
    start = table.column("start_s").to_numpy()
    end = table.column("end_s").to_numpy()
    if not (np.isfinite(start).all() and np.isfinite(end).all()) or (end < start).any():
        raise InputError("segment rows: fields 'start_s'/'end_s' must be finite with start_s <= end_s")
    check_unique(table, ROW_KEY, "segment rows")


def same_schema(found: pa.Schema, expected: pa.Schema) -> bool:
    """The same column names and types in the same order (metadata aside)."""
    return [(f.name, f.type) for f in found] == [(f.name, f.type) for f in expected]


def schema_difference(found: pa.Schema, expected: pa.Schema) -> str:
    """What sets ``found`` apart from ``expected``, in one phrase."""
    missing = [name for name in expected.names if name not in found.names]
    unexpected = [name for name in found.names if name not in expected.names]
    retyped = [f"{f.name}: {found.field(f.name).type} instead of {f.type}"
               for f in expected if f.name in found.names and found.field(f.name).type != f.type]
    parts = [f"missing {missing}" if missing else "", f"unexpected {unexpected}" if unexpected else "",
             "; ".join(retyped)]
    return "; ".join(part for part in parts if part) or "column order differs"
