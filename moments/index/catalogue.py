"""The stored queries' details in memory, read once per version of the `queries` table.

Search ranks stored queries with two LanceDB lists (vector and full text) that return only keys and row ids; what
it then needs of each hit (text, checkpoint, embedding, ``top_moments``) comes from here by row id, without a third
read of the table. The catalogue is read in one scan when a search first finds the table at a new version (after a
grounding job wrote to it, say), and only while the table holds at most ``CATALOGUE_MAX_ROWS`` rows; above that,
search reads the hits' rows by row id instead (``moments.index.answer``), so memory stays bounded.

Memory: about 2.2 KB per stored query (the 384-d float32 embedding, 10 moments, text and keys; benchmarks/RESULTS.md,
issue 20): 21 MB for 10,000 stored queries, 215 MB for 100,000, read in 0.06 and 0.45 s.

Up to ``EXACT_LIST_MAX_ROWS`` stored queries the catalogue also answers the vector list itself (``nearest``): an
exact cosine over its unit embeddings, cheaper there than a LanceDB query (whose own cost, 2-4 ms on 2 cores, does
not shrink with the table) and exact where LanceDB's IVF-PQ index is approximate. Above it the matrix product would
cost about as much as the index's list (benchmarks/RESULTS.md, issue 20), and LanceDB gives the list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Above this many stored queries the catalogue is not kept (it would take about 430 MB at this size).
CATALOGUE_MAX_ROWS = 200_000
# Up to this many, the vector list is an exact cosine in memory (``QueryCatalogue.nearest``).
EXACT_LIST_MAX_ROWS = 20_000


@dataclass(frozen=True)
class QueryCatalogue:
    """The columns ``rows`` of every row of one version of the queries table, found by row id."""

    version: int
    row_ids: np.ndarray  # sorted int64
    rows: pa.Table  # in row-id order
    unit_vectors: np.ndarray | None = None  # [rows, dim] float32, each embedding over its norm; None: no exact list

    @classmethod
    def read(cls, table: Any, columns: Sequence[str], embedding_column: str | None = None,
             exact_list_max_rows: int = EXACT_LIST_MAX_ROWS) -> QueryCatalogue:
        """Scan ``columns`` of the table's checked-out version; with ``embedding_column`` (one of them), keep its
        unit vectors for ``nearest`` while the table holds at most ``exact_list_max_rows`` rows."""
        version = table.version
        rows = table.search().select(list(columns)).with_row_id(True).limit(None).to_arrow()
        row_ids = rows.column("_rowid").to_numpy()
        order = np.argsort(row_ids, kind="stable")
        rows = rows.select(list(columns)).take(pa.array(order, pa.int64())).combine_chunks()
        unit_vectors = None
        if (embedding_column is not None and rows.num_rows <= exact_list_max_rows
                and rows.column(embedding_column).null_count == 0):
            unit_vectors = unit_rows(rows.column(embedding_column))
        return cls(version, row_ids[order].astype(np.int64), rows, unit_vectors)

    def nearest(self, vector: np.ndarray, limit: int, columns: Sequence[str], run_id: str | None = None
                ) -> pa.Table:
        """``columns`` and ``_rowid`` of the ``limit`` rows (of ``run_id``, when given) nearest to ``vector`` by
        cosine, nearest first (ties in row-id order). Only for a catalogue that keeps its unit vectors."""
        if self.unit_vectors is None:
            raise ValueError("this catalogue keeps no unit vectors (above its exact_list_max_rows)")
        cosine = self.unit_vectors @ np.asarray(vector, dtype=np.float32)
        if run_id is not None:
            cosine[~pc.equal(self.rows.column("run_id"), run_id).to_numpy(zero_copy_only=False)] = -np.inf
        count = min(limit, int(np.isfinite(cosine).sum()))
        best = np.argpartition(-cosine, count - 1)[:count] if 0 < count < len(cosine) else np.flatnonzero(
            np.isfinite(cosine))
        best = best[np.lexsort((best, -cosine[best]))]
        rows = self.rows.select(list(columns)).take(pa.array(best, pa.int64()))
        return rows.append_column("_rowid", pa.array(self.row_ids[best], pa.uint64()))

    def take(self, row_ids: Sequence[int]) -> pa.Table | None:
        """The rows of ``row_ids`` in that order, or None when one of them is not in this version."""
        wanted = np.asarray(row_ids, dtype=np.int64)
        if len(self.row_ids) == 0:
            return None if len(wanted) else self.rows.slice(0, 0)
        places = np.minimum(np.searchsorted(self.row_ids, wanted), len(self.row_ids) - 1)
        if not np.array_equal(self.row_ids[places], wanted):
            return None
        return self.rows.take(pa.array(places, pa.int64()))

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes + self.row_ids.nbytes)


def unit_rows(column: pa.ChunkedArray) -> np.ndarray:
    """A fixed-size-list float column as a float32 matrix, each row over its norm (zero rows stay zero)."""
    array = column.combine_chunks()
    matrix = array.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(array),
                                                                                       array.type.list_size)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)
