"""Bounded rows: a grounding run keeps each query's best M moments across the library.

``BestPerQuery`` holds each query's M best scores seen so far (those of the run's rows already in the index, then
those of every batch), so the driver drops a row before writing it once M better or equal ones exist: it could
never enter its query's best M. Ties are kept; the exact cut happens after the library ranks
(``Index.keep_best``), so the rows left are the same whatever order the videos came in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class BestPerQuery:
    """The ``keep`` best scores of each query of ``query_ids`` so far (an array ``[Q, keep]``, best first)."""

    def __init__(self, query_ids: Sequence[str], keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, not {keep}")
        self.ids = pa.array([str(q) for q in query_ids], pa.string())
        self.keep = int(keep)
        self.best = np.full((len(self.ids), self.keep), -np.inf, dtype=np.float32)

    def offer(self, query_ids: pa.Array | pa.ChunkedArray, scores: np.ndarray) -> np.ndarray:
        """Take rows' scores into account; True for the rows that may still be among their query's best
        (rows of a query not in ``query_ids`` are always kept)."""
        scores = np.asarray(scores, dtype=np.float32)
        found = pc.index_in(query_ids, value_set=self.ids)
        known = found.is_valid().to_numpy(zero_copy_only=False)
        index = found.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        maybe = ~known | (scores >= self.best[index, -1])
        take = maybe & known
        if take.any():
            self._merge(index[take], scores[take])
        return ~known | (scores >= self.best[index, -1])

    def filter(self, rows: pa.Table) -> pa.Table:
        """The rows (with ``query_id`` and ``score``) that may still be among their query's best."""
        if rows.num_rows == 0:
            return rows
        mask = self.offer(rows.column("query_id"), rows.column("score").to_numpy())
        return rows if mask.all() else rows.filter(pa.array(mask))

    def _merge(self, index: np.ndarray, scores: np.ndarray) -> None:
        """Merge new scores into the best of the queries they belong to (only those rows are touched)."""
        touched = np.unique(index)
        groups = np.concatenate([np.repeat(np.arange(len(touched)), self.keep), np.searchsorted(touched, index)])
        values = np.concatenate([self.best[touched].ravel(), scores])
        order = np.lexsort((-values, groups))
        groups, values = groups[order], values[order]
        first = np.searchsorted(groups, np.arange(len(touched)))
        top = np.arange(len(groups)) - first[groups] < self.keep  # each group has at least keep values
        self.best[touched] = values[top].reshape(len(touched), self.keep)
