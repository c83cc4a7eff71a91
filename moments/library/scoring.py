"""Score one batch of videos against a whole query collection and turn the result into `segments` rows.

This is the body that every grounding actor runs (and that live grounding runs in-process): each video (or each
window of a long video) is pooled and projected once, each query was encoded once beforehand, and only the
pair-specific rest of the model runs per (query, window), ``pair_batch_size`` pairs at a time. A video that
cannot be scored (missing, NaN features, ...) becomes a failure row; the other videos of the batch go on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from drn.durations import timeline_duration
from drn.grid import pool_to_grid
from drn.inference import EncodedQueries, Grounder
from drn.store import VideoFeatures
from moments.index.live_inputs import VideoGrids
from moments.index.table import segments_schema, segments_table
from moments.library.batches import ERROR_COLUMN
from moments.library.windows import WindowRule, cut_windows, merge_windows


@dataclass
class QuerySide:
    """Everything about the queries that the rows need: ids, texts, MiniLM embeddings, the encoded model side."""

    ids: list[str]
    texts: list[str]
    embeddings: np.ndarray  # [Q, 384], unit rows
    encoded: EncodedQueries


@dataclass(frozen=True)
class RunLabels:
    run_id: str
    checkpoint_id: str


def output_schema() -> pa.Schema:
    """The rows an actor yields: the segments schema plus ``error`` (null, or why a video failed)."""
    return segments_schema().append(pa.field(ERROR_COLUMN, pa.string()))


class LibraryScorer:
    """A grounder with the encoded queries, a window rule and ``top_k``: videos in, `segments` rows out."""

    def __init__(self, grounder: Grounder, queries: QuerySide, rule: WindowRule, labels: RunLabels, *,
                 top_k: int = 5, pair_batch_size: int = 256) -> None:
        decode = dataclasses.replace(grounder.config.decode, top_n=top_k)
        self.grounder = Grounder(grounder.model, dataclasses.replace(grounder.config, decode=decode),
                                 grounder.vocab, grounder.device)
        self.queries = queries
        self.rule = rule
        self.labels = labels
        self.top_k = top_k
        self.pair_batch_size = pair_batch_size

    def score(self, videos: list[VideoFeatures], failures: list[tuple[str, str]] | None = None,
              queries_of: Mapping[str, Sequence[int]] | None = None) -> pa.Table:
        """Rows for every (query, video) of ``videos`` (top-k each) plus one error row per failed video.

        ``queries_of`` (video_id -> query indices) scores only those queries against each video (every window of
        a long video goes with its video's queries); None scores every query.
        """
        failures = list(failures or [])
        prepared: list[VideoGrids] = []
        for video in videos:
            try:
                prepared.append(self.prepare(video))
            except Exception as error:  # one bad video never stops the batch
                failures.append((video.video_id, f"{type(error).__name__}: {error}"))
        return self.score_grids(prepared, failures, queries_of)

    def prepare(self, video: VideoFeatures) -> VideoGrids:
        """A video cut into the rule's windows and pooled to the model's grid: what ``score_grids`` takes."""
        self.grounder.check_features(np.asarray(video.features).shape[-1], f"video {video.video_id!r}")
        return window_grids(video, self.rule, self.grounder.num_segments)

    def score_grids(self, videos: list[VideoGrids], failures: list[tuple[str, str]] | None = None,
                    queries_of: Mapping[str, Sequence[int]] | None = None) -> pa.Table:
        """:meth:`score` from prepared videos (e.g. read from the live inputs table): the same rows for the same
        grids. A video whose grids do not fit the model becomes an error row."""
        failures = list(failures or [])
        shape = (self.grounder.num_segments, self.grounder.config.model.feature_dim)
        kept = []
        for video in videos:
            if video.num_windows == 0 or video.grids.shape[1:] != shape:
                failures.append((video.video_id, f"ValueError: grids of shape {video.grids.shape}, the model "
                                                 f"takes [windows, {shape[0]}, {shape[1]}]"))
            else:
                kept.append(video)
        tables = []
        if kept:
            tables.append(self._rows(kept, queries_of))
        if failures:
            tables.append(_failure_rows(failures, self.labels))
        if not tables:
            return output_schema().empty_table()
        return pa.concat_tables(tables)

    def _rows(self, videos: list[VideoGrids], queries_of: Mapping[str, Sequence[int]] | None = None) -> pa.Table:
        owner = np.repeat(np.arange(len(videos)), [v.num_windows for v in videos])  # window -> video index
        offsets = np.concatenate([v.offsets_s for v in videos])
        if queries_of is None:  # every query against every window
            pairs = [(q, w) for q in range(len(self.queries.ids)) for w in range(len(owner))]
        else:  # each window with the queries of its video, query-major
            picked = [sorted({int(q) for q in queries_of.get(v.video_id, ())}) for v in videos]
            pairs = sorted((q, w) for w, v in enumerate(owner) for q in picked[v])
        if not pairs:
            return output_schema().empty_table()
        results = self.grounder.ground(
            np.concatenate([np.asarray(v.grids, dtype=np.float32) for v in videos]), self.queries.encoded,
            video_ids=[str(i) for i in range(len(owner))], durations=np.concatenate([v.durations_s for v in videos]),
            pair_batch_size=self.pair_batch_size, pairs=None if queries_of is None else pairs,
        )
        parts: dict[tuple[int, int], list[tuple[float, np.ndarray]]] = {}
        for (q, w), result in zip(pairs, results, strict=True):  # query-major, windows in order
            parts.setdefault((q, int(owner[w])), []).append((float(offsets[w]), result.segments))
        nms = self.grounder.config.decode.nms_threshold
        query_index, video_index, blocks = [], [], []
        for (q, v), video_parts in parts.items():
            merged = merge_windows(video_parts, videos[v].duration_s, nms, self.top_k)
            query_index.append(q)
            video_index.append(v)
            blocks.append(merged)
        return self._table(videos, query_index, video_index, blocks)

    def _table(self, videos: list[VideoGrids], query_index: list[int], video_index: list[int],
               blocks: list[np.ndarray]) -> pa.Table:
        sizes = np.array([len(b) for b in blocks], dtype=np.int64)
        rows_q = np.repeat(np.array(query_index, dtype=np.int64), sizes)
        rows_v = np.repeat(np.array(video_index, dtype=np.int64), sizes)
        ranks = np.concatenate([np.argsort(np.argsort(-b[:, 2], kind="stable"), kind="stable") for b in blocks])
        values = np.concatenate(blocks) if blocks else np.zeros((0, 5))
        count = len(values)
        table = pa.table({
            "run_id": pa.array([self.labels.run_id] * count, pa.string()),
            "checkpoint_id": pa.array([self.labels.checkpoint_id] * count, pa.string()),
            "query_id": pa.array(np.array(self.queries.ids, dtype=object)[rows_q], pa.string()),
            "query_text": pa.array(np.array(self.queries.texts, dtype=object)[rows_q], pa.string()),
            "video_id": pa.array(np.array([v.video_id for v in videos], dtype=object)[rows_v], pa.string()),
            "rank": pa.array(ranks.astype(np.int32)),
            "start_s": pa.array(values[:, 0]),
            "end_s": pa.array(values[:, 1]),
            "score": pa.array(values[:, 2].astype(np.float32)),
            "match_score": pa.array(values[:, 3].astype(np.float32)),
            "iou_score": pa.array(values[:, 4].astype(np.float32)),
        })
        table = segments_table(table)  # conforms the column order and types, and checks the values
        return table.append_column(ERROR_COLUMN, pa.nulls(table.num_rows, pa.string()))


def window_grids(video: VideoFeatures, rule: WindowRule, num_segments: int) -> VideoGrids:
    """One video cut into ``rule``'s windows (``cut_windows``), each pooled to ``num_segments`` segments."""
    cut = cut_windows(video, rule)
    if not cut:
        raise ValueError("no clip inside any window")
    return VideoGrids(
        video.video_id, timeline_duration(video.duration_s, video.clip_end_s),
        np.array([w.offset_s for w in cut], dtype=np.float64),
        np.array([timeline_duration(w.features.duration_s, w.features.clip_end_s) for w in cut], dtype=np.float64),
        np.stack([pool_to_grid(w.features, num_segments) for w in cut]),
    )


def _failure_rows(failures: list[tuple[str, str]], labels: RunLabels) -> pa.Table:
    schema = output_schema()
    count = len(failures)
    columns = {name: pa.nulls(count, schema.field(name).type) for name in schema.names}
    columns["run_id"] = pa.array([labels.run_id] * count, pa.string())
    columns["video_id"] = pa.array([vid for vid, _ in failures], pa.string())
    columns[ERROR_COLUMN] = pa.array([message for _, message in failures], pa.string())
    return pa.table(columns, schema=schema)

