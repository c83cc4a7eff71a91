"""The `runs` table beside `segments`: one row per grounding run, saying what produced its rows.

Search reads it to tell users when scores are not comparable across videos: a run grounded with a checkpoint
trained without negative pairs (``train.negatives.per_positive = 0``, or a checkpoint of format version 1) ranks
segments within a video well but videos across the library poorly. Writes merge on ``run_id``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from moments.index.db import connect

RUNS_TABLE = "runs"


def runs_schema() -> pa.Schema:
    return pa.schema([
        pa.field("run_id", pa.string()),
        pa.field("kind", pa.string()),  # "batch" (jobs.ground) or "live" (jobs.search --exhaustive --save)
        pa.field("checkpoint_id", pa.string()),
        pa.field("checkpoint_uri", pa.string()),
        pa.field("features_uri", pa.string()),
        pa.field("negatives_per_positive", pa.int32()),
        pa.field("recorded_at", pa.string()),
        # how the run chose its pairs: "exhaustive" (every query x every video) or "candidates" (each query's
        # `candidates` videos from the cells table); rows kept per query across the library (0: unbounded)
        pa.field("mode", pa.string()),
        pa.field("candidates", pa.int32()),
        pa.field("keep_per_query", pa.int32()),
    ])


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    kind: str
    checkpoint_id: str
    checkpoint_uri: str
    features_uri: str
    negatives_per_positive: int
    recorded_at: str = ""
    mode: str = "exhaustive"  # "exhaustive" or "candidates"
    candidates: int = 0  # videos per query in candidate mode (0: every video)
    keep_per_query: int = 0  # moments kept per query across the library (0: unbounded, as before issue 19)

    @property
    def calibrated(self) -> bool:
        """Trained with negative pairs: its scores compare across videos."""
        return self.negatives_per_positive > 0


def record_run(db: str, record: RunRecord, storage_options: dict[str, str] | None = None) -> None:
    """Write (or update) the run's row; ``s3://`` gets the environment's settings (``moments.index.db.connect``)."""
    row = asdict(record)
    row["recorded_at"] = row["recorded_at"] or time.strftime("%Y-%m-%dT%H:%M:%S")
    data = pa.Table.from_pylist([row], schema=runs_schema())
    connection = connect(db, storage_options)
    try:
        table = connection.open_table(RUNS_TABLE)
    except (ValueError, FileNotFoundError):
        table = connection.create_table(RUNS_TABLE, schema=runs_schema(), exist_ok=True)
    _add_missing_columns(table)
    table.merge_insert("run_id").when_matched_update_all().when_not_matched_insert_all().execute(data)


def read_runs(db: str | Any, storage_options: dict[str, str] | None = None) -> dict[str, RunRecord]:
    """Every recorded run of the index at ``db`` (a URI or an open connection); empty for an index written before
    runs were recorded."""
    connection = connect(db, storage_options) if isinstance(db, str) else db
    try:
        table = connection.open_table(RUNS_TABLE)
    except (ValueError, FileNotFoundError):
        return {}
    return _records(table)


@dataclass
class RunsSnapshot:
    """The runs table's records as of one table version (``table``: the open table, None while there is none)."""

    table: Any
    version: int | None
    records: dict[str, RunRecord]


def runs_snapshot(connection: Any, previous: RunsSnapshot | None = None) -> RunsSnapshot:
    """The runs table's records, read again only when its version moved since ``previous`` (a search reads them
    every time: checking the version costs a fraction of reading the table)."""
    table = previous.table if previous is not None else None
    if table is None:
        try:
            table = connection.open_table(RUNS_TABLE)
        except (ValueError, FileNotFoundError):
            return RunsSnapshot(None, None, {})
    else:
        table.checkout_latest()
    version = table.version
    if previous is not None and previous.table is not None and previous.version == version:
        return previous
    return RunsSnapshot(table, version, _records(table))


def _records(table: Any) -> dict[str, RunRecord]:
    known = set(runs_schema().names)
    records = {}
    for row in table.to_arrow().to_pylist():
        values = {name: value for name, value in row.items() if name in known and value is not None}
        records[row["run_id"]] = RunRecord(**values)
    return records


def _add_missing_columns(table: Any) -> None:
    """Bring a runs table written before a column existed up to today's schema (the new columns empty)."""
    have = set(table.schema.names)
    missing = [field for field in runs_schema() if field.name not in have]
    if missing:
        table.add_columns(pa.schema(missing))
