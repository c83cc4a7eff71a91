"""The `run_videos` table beside `segments`: the videos each grounding run has finished.

A job merges a row per (segments table, run, video) right after that video's rows were written, so a killed job,
or a rerun over a grown library, skips exactly the videos already done. The rows of a segments table cannot say
it themselves once a run keeps only each query's best moments, or grounds each video with only some queries.
Runs written before this table existed fall back to ``Index.completed_videos``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from moments.index.db import check_db_writable, connect, local_folder, sql_literal
from moments.index.segments import SEGMENTS_TABLE

RUN_VIDEOS_TABLE = "run_videos"
RUN_VIDEOS_KEY = ("segments_table", "run_id", "video_id")


def run_videos_schema() -> pa.Schema:
    return pa.schema([pa.field(name, pa.string()) for name in RUN_VIDEOS_KEY])


class RunVideos:
    """The finished videos of the runs of one segments table (``segments_table``) in the LanceDB at ``uri``."""

    def __init__(self, uri: str | os.PathLike, segments_table: str = SEGMENTS_TABLE,
                 table: str = RUN_VIDEOS_TABLE) -> None:
        self.uri = os.fspath(uri)
        self.segments_table = segments_table
        self.name = table
        self._db: Any = None
        self._table: Any = None

    def _open(self, create: bool = False) -> Any:
        if self._table is None:
            local = local_folder(self.uri)
            if not create and local is not None and not local.is_dir():
                return None  # reading creates nothing
            if self._db is None:
                self._db = connect(self.uri)
            try:
                self._table = self._db.open_table(self.name)
            except (ValueError, FileNotFoundError):
                if not create:
                    return None
                check_db_writable(self.uri)
                self._table = self._db.create_table(self.name, schema=run_videos_schema(), exist_ok=True)
        return self._table

    def _where(self, run_id: str) -> str:
        return f"segments_table = {sql_literal(self.segments_table)} AND run_id = {sql_literal(run_id)}"

    def done(self, run_id: str) -> set[str]:
        """The videos recorded as finished in ``run_id`` (empty when none are, or there is no table)."""
        table = self._open()
        if table is None:
            return set()
        rows = table.search().where(self._where(run_id)).select(["video_id"]).limit(None).to_arrow()
        return set(rows.column("video_id").to_pylist())

    def add(self, run_id: str, video_ids: Iterable[str]) -> int:
        """Record ``video_ids`` as finished in ``run_id`` (one merge; recording twice changes nothing)."""
        ids = sorted(set(video_ids))
        if not ids:
            return 0
        data = pa.table({"segments_table": [self.segments_table] * len(ids), "run_id": [run_id] * len(ids),
                         "video_id": ids}, schema=run_videos_schema())
        table = self._open(create=True)
        table.merge_insert(list(RUN_VIDEOS_KEY)).when_matched_update_all().when_not_matched_insert_all().execute(data)
        return len(ids)

    def delete_run(self, run_id: str) -> None:
        """Forget every finished video of ``run_id``."""
        table = self._open()
        if table is not None:
            table.delete(self._where(run_id))
