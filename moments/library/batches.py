"""Ray actors' output batches: rows plus an ``error`` column, and their buffered writing to a LanceDB table.

Grounding (`segments`) and cell indexing (`cells`) both map batches of video ids to one Arrow table each: the
rows to write, and one row per failed video whose ``error`` column says why. ``write_in_batches`` splits them,
records the failures and writes the rows in large batches (every LanceDB write is a new table version).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

ERROR_COLUMN = "error"


@dataclass(kw_only=True)
class LibraryProgress:
    """The counters every job over a library's videos reports; ``write_in_batches`` keeps the write side."""

    videos_total: int = 0
    videos_skipped: int = 0  # done by an earlier run (resume)
    videos_done: int = 0
    videos_failed: int = 0
    rows_written: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (video_id, error)

    def to_do(self, video_ids: list[str], done: set[str], max_videos: int | None) -> list[str]:
        """The videos of ``video_ids`` not in ``done`` (counted as skipped), at most ``max_videos`` of them."""
        todo = [vid for vid in video_ids if vid not in done]
        self.videos_skipped = len(video_ids) - len(todo)
        return todo if max_videos is None else todo[: max(0, max_videos)]


def split_output(table: pa.Table) -> tuple[pa.Table, list[tuple[str, str]]]:
    """An actor's output as (rows ready to write, failures as ``(video_id, error)``)."""
    errors = table.column(ERROR_COLUMN)
    if errors.null_count == table.num_rows:
        return table.drop_columns([ERROR_COLUMN]), []
    failed = errors.is_valid()
    bad = table.filter(failed)
    good = table.filter(pc.invert(failed)).drop_columns([ERROR_COLUMN])
    return good, list(zip(bad.column("video_id").to_pylist(), bad.column(ERROR_COLUMN).to_pylist(), strict=True))


def write_in_batches(batches: Iterable[pa.Table], write: Callable[[pa.Table], int], progress: LibraryProgress,
                     batch_rows: int, on_write: Callable[[int, int], None] | None = None,
                     fail_after_writes: int | None = None, *, keep: Callable[[pa.Table], pa.Table] | None = None,
                     on_videos: Callable[[list[str]], None] | None = None) -> None:
    """Write the rows of ``batches`` with ``write`` once ``batch_rows`` rows were produced, and at the end.

    ``progress`` counts the videos written and failed as it goes; ``on_write(videos, rows)`` follows each write.
    ``keep`` filters each output's rows before they wait to be written (their videos still count as done), and
    ``on_videos(video_ids)`` follows each write with the videos it finished (before ``on_write``).
    ``fail_after_writes`` (a test hook) raises after that many writes, to show a job resumes where it stopped.
    """
    pending: list[pa.Table] = []
    produced, writes = 0, 0
    pending_videos: dict[str, None] = {}

    def flush() -> None:
        nonlocal pending, produced, pending_videos, writes
        rows = pa.concat_tables(pending) if pending else None
        if rows is not None and rows.num_rows:
            progress.rows_written += write(rows)
        if on_videos is not None:
            on_videos(list(pending_videos))
        progress.videos_done += len(pending_videos)
        pending, produced, pending_videos = [], 0, {}
        writes += 1
        if on_write is not None:
            on_write(progress.videos_done + progress.videos_failed, progress.rows_written)
        if fail_after_writes is not None and writes >= fail_after_writes:
            raise RuntimeError(f"stopped after {writes} write(s) (fail_after_writes test hook)")

    for output in batches:
        rows, failures = split_output(output)
        progress.videos_failed += len(failures)
        progress.failures += failures
        if rows.num_rows:
            pending_videos.update(dict.fromkeys(rows.column("video_id").to_pylist()))
            produced += rows.num_rows
            rows = keep(rows) if keep is not None else rows
            if rows.num_rows:
                pending.append(rows)
        if produced >= batch_rows:
            flush()
    if pending_videos:
        flush()
