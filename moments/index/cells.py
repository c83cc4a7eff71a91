"""The LanceDB `cells` table: one row per video cell of a checkpoint's retrieval stage (DESIGN.md section 7).

Columns: ``video_id``, ``cell`` (the cell's number within its video: windows of a long video in order, then the
cells of ``drn.retrieval.cell_spans``), ``start_s``/``end_s`` in seconds, ``vector`` (the unit cell vector) and
``checkpoint_id``. Rows merge on (video_id, cell), so rewriting a video leaves its rows once. The table's Arrow
schema metadata names what built it (``CellsInfo``: the checkpoint file, its id and sha256, the feature store, the
vector size and the window rule), so that search needs only the database. A cosine IVF-PQ index on ``vector``
is built once the table holds ``vector_index_min_rows`` rows (below that, exact search is fast), and a B-tree on
``video_id``; both are brought up to date as videos are added.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
from lancedb.index import BTree, IvfPq

from drn.errors import InputError
from moments.index.db import DescribedTable, in_list, sql_literal

CELLS_TABLE = "cells"
CELL_KEY = ("video_id", "cell")
VECTOR_INDEX_MIN_ROWS = 50_000
METADATA_PREFIX = "drn.cells."


@dataclass(frozen=True)
class CellsInfo:
    """What a cells table was built from; kept in the table's schema metadata."""

    checkpoint_id: str
    checkpoint: str  # the checkpoint file or URI the index job read
    sha256: str
    features: str  # the feature store URI
    dim: int
    window: str  # JSON [window_s, stride_s, max_whole_s]

    def to_metadata(self) -> dict[bytes, bytes]:
        return {f"{METADATA_PREFIX}{k}".encode(): str(v).encode() for k, v in asdict(self).items()}

    @classmethod
    def from_metadata(cls, metadata: dict[bytes, bytes] | None, source: str) -> CellsInfo:
        values = {}
        for name, kind in (("checkpoint_id", str), ("checkpoint", str), ("sha256", str), ("features", str),
                           ("dim", int), ("window", str)):
            raw = (metadata or {}).get(f"{METADATA_PREFIX}{name}".encode())
            if raw is None:
                raise InputError(f"the cells table lacks its metadata '{METADATA_PREFIX}{name}'; rebuild it with "
                                 "python -m jobs.index_library --overwrite", path=source)
            values[name] = kind(raw.decode())
        return cls(**values)

    @property
    def window_settings(self) -> tuple[float, float, float]:
        window_s, stride_s, max_whole_s = json.loads(self.window)
        return float(window_s), float(stride_s), float(max_whole_s)


def cells_schema(info: CellsInfo) -> pa.Schema:
    return pa.schema(
        [
            pa.field("video_id", pa.string()),
            pa.field("cell", pa.int32()),
            pa.field("start_s", pa.float64()),
            pa.field("end_s", pa.float64()),
            pa.field("vector", pa.list_(pa.float32(), info.dim)),
            pa.field("checkpoint_id", pa.string()),
        ],
        metadata=info.to_metadata(),
    )


def cell_rows(info: CellsInfo, video_id: str, spans_s: np.ndarray, vectors: np.ndarray) -> pa.Table:
    """The rows of one video: ``spans_s [C, 2]`` seconds and ``vectors [C, R]`` in cell order."""
    count = len(spans_s)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.table({
        "video_id": pa.array([video_id] * count, pa.string()),
        "cell": pa.array(np.arange(count, dtype=np.int32)),
        "start_s": pa.array(spans_s[:, 0].astype(np.float64)),
        "end_s": pa.array(spans_s[:, 1].astype(np.float64)),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), info.dim),
        "checkpoint_id": pa.array([info.checkpoint_id] * count, pa.string()),
    }, schema=cells_schema(info))


class CellsTable(DescribedTable):
    """The cells table at a LanceDB URI: ``info`` (None while there is no table), writes, search."""

    def __init__(self, uri: str | os.PathLike, table: str = CELLS_TABLE, *,
                 vector_index_min_rows: int = VECTOR_INDEX_MIN_ROWS) -> None:
        self.vector_index_min_rows = vector_index_min_rows
        self._vector_indexed: bool | None = None  # asked once, and again after ensure_indices
        super().__init__(uri, table, CellsInfo.from_metadata)
        self.missing = ("build it with python -m jobs.index_library --checkpoint CHECKPOINT --features STORE "
                        f"--db {self.uri}")

    def create(self, info: CellsInfo, overwrite: bool = False) -> None:
        """Create the (empty) table for ``info``; with ``overwrite`` an existing one is replaced."""
        self._create(cells_schema(info), info, overwrite)

    def write(self, rows: pa.Table) -> int:
        """Merge rows on (video_id, cell): one atomic commit. Returns the number of rows given."""
        if rows.num_rows == 0:
            return 0
        (self.table.merge_insert(list(CELL_KEY)).when_matched_update_all().when_not_matched_insert_all()
         .execute(rows))
        return rows.num_rows

    def video_ids(self) -> set[str]:
        """The videos with cells (a video's cells are written in one commit, so these are complete)."""
        if self._table is None or self.count() == 0:
            return set()
        column = self._table.search().where("cell = 0").select(["video_id"]).limit(None).to_arrow()
        return set(column.column("video_id").to_pylist())

    def ensure_indices(self) -> list[str]:
        """B-tree on video_id; cosine IVF-PQ on vector once the table is large enough; new rows indexed."""
        table = self.table
        rows = table.count_rows()
        existing = {tuple(config.columns): config for config in table.list_indices()}
        created = []
        if rows and ("video_id",) not in existing:
            table.create_index("video_id", config=BTree())
            created.append("video_id")
        if rows >= self.vector_index_min_rows and ("vector",) not in existing:
            dim = self.info.dim if self.info else 0
            sub_vectors = next(n for n in (dim // 8, dim // 4, dim // 2, 1) if n >= 1 and dim % n == 0)
            table.create_index("vector", config=IvfPq(distance_type="cosine",
                                                      num_partitions=max(1, int(math.sqrt(rows))),
                                                      num_sub_vectors=sub_vectors))
            created.append("vector")
        stale = [name for name, config in existing.items() if (config.num_unindexed_rows or 0) > 0]
        if stale:
            table.optimize()
        self._vector_indexed = None
        return created

    def has_vector_index(self) -> bool:
        """Whether the vector index exists (asked once, and again after ``ensure_indices``)."""
        if self._vector_indexed is None:
            self._vector_indexed = self._table is not None and any(
                tuple(c.columns) == ("vector",) for c in self._table.list_indices())
        return self._vector_indexed

    def nearest(self, vector: np.ndarray, limit: int, *, nprobes: int = 20, refine_factor: int = 5) -> pa.Table:
        """The ``limit`` cells nearest to ``vector`` by cosine: video_id, cell, start_s, end_s, similarity."""
        query = (self.table.search(np.asarray(vector, dtype=np.float32), vector_column_name="vector")
                 .distance_type("cosine").select(["video_id", "cell", "start_s", "end_s", "_distance"])
                 .limit(int(limit)))
        if self.has_vector_index():
            query = query.nprobes(int(nprobes)).refine_factor(int(refine_factor))
        hits = query.to_arrow()
        similarity = 1.0 - hits.column("_distance").to_numpy()
        return hits.drop_columns(["_distance"]).append_column("similarity", pa.array(similarity, pa.float32()))

    def nearest_many(self, vectors: np.ndarray, limit: int, *, nprobes: int = 20, refine_factor: int = 5,
                     queries_per_search: int = 256) -> pa.Table:
        """:meth:`nearest` for many vectors ``[Q, R]`` at once: query_index (row of ``vectors``), video_id, cell,
        start_s, end_s, similarity; ``queries_per_search`` vectors per LanceDB search."""
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
        parts = []
        for first in range(0, len(vectors), queries_per_search):
            chunk = vectors[first:first + queries_per_search]
            query = (self.table.search(list(chunk), vector_column_name="vector").distance_type("cosine")
                     .select(["video_id", "cell", "start_s", "end_s", "_distance"]).limit(int(limit)))
            if self.has_vector_index():
                query = query.nprobes(int(nprobes)).refine_factor(int(refine_factor))
            hits = query.to_arrow()
            if "query_index" not in hits.column_names:  # one vector: LanceDB leaves the column out
                hits = hits.append_column("query_index", pa.array(np.zeros(hits.num_rows, np.int32)))
            index = hits.column("query_index").to_numpy().astype(np.int32) + first
            similarity = 1.0 - hits.column("_distance").to_numpy()
            parts.append(pa.table({"query_index": index, **{name: hits.column(name) for name in
                                                          ("video_id", "cell", "start_s", "end_s")},
                                   "similarity": pa.array(similarity, pa.float32())}))
        if not parts:
            return pa.table({"query_index": pa.array([], pa.int32()), "video_id": pa.array([], pa.string()),
                             "cell": pa.array([], pa.int32()), "start_s": pa.array([], pa.float64()),
                             "end_s": pa.array([], pa.float64()), "similarity": pa.array([], pa.float32())})
        return pa.concat_tables(parts)

    def video_similarity(self, vector: np.ndarray, video_id: str) -> float | None:
        """The best cosine between ``vector`` and the cells of one video, exactly (None: the video has no cells)."""
        table = (self.table.search().where(f"video_id = {sql_literal(video_id)}").select(["vector"]).limit(None)
                 .to_arrow())
        if table.num_rows == 0:
            return None
        cells = table.column("vector").combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
        cells = cells / np.maximum(np.linalg.norm(cells, axis=1, keepdims=True), 1e-12)
        query = np.asarray(vector, dtype=np.float32)
        return float(np.max(cells @ (query / max(float(np.linalg.norm(query)), 1e-12))))

    def delete_videos(self, video_ids: list[str]) -> None:
        if video_ids:
            self.table.delete(in_list("video_id", video_ids))


def best_videos(hits: pa.Table, count: int) -> dict[str, float]:
    """``video_id -> best cell similarity`` of the ``count`` best videos among the ANN hits, best first."""
    if hits.num_rows == 0:
        return {}
    best = hits.group_by("video_id").aggregate([("similarity", "max")])
    best = best.sort_by([("similarity_max", "descending"), ("video_id", "ascending")]).slice(0, count)
    return dict(zip(best.column("video_id").to_pylist(), best.column("similarity_max").to_pylist(), strict=True))
