"""The stored queries' details in memory, read once per version of the `queries` table.

Search ranks stored queries with two LanceDB lists (vector and full text) that return only keys and row ids; what
it then needs of each hit (text, checkpoint, embedding, ``top_moments``) comes from here by row id, without a third
read of the table. The catalogue is read in one scan when a search first finds the table at a new version (after a
grounding job wrote to it, say), and only while the table holds at most ``CATALOGUE_MAX_ROWS`` rows; above that,
search reads the hits' rows by row id instead (``moments.index.answer``), so memory stays bounded.

Memory: about 2.2 KB per stored query (the 384-d float32 embedding, 10 moments, text and keys; benchmarks/RESULTS.md,
issue 20): 21 MB for 10,000 stored queries, 215 MB for 100,000, read in 0.06 and 0.45 s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

# Above this many stored queries the catalogue is not kept (it would take about 430 MB at this size).
CATALOGUE_MAX_ROWS = 200_000


@dataclass(frozen=True)
class QueryCatalogue:
    """The columns ``rows`` of every row of one version of the queries table, found by row id."""

    version: int
    row_ids: np.ndarray  # sorted int64
    rows: pa.Table  # in row-id order

    @classmethod
    def read(cls, table: Any, columns: Sequence[str]) -> QueryCatalogue:
        """Scan ``columns`` of the table's checked-out version."""
        version = table.version
        rows = table.search().select(list(columns)).with_row_id(True).limit(None).to_arrow()
        row_ids = rows.column("_rowid").to_numpy()
        order = np.argsort(row_ids, kind="stable")
        rows = rows.select(list(columns)).take(pa.array(order, pa.int64())).combine_chunks()
        return cls(version, row_ids[order].astype(np.int64), rows)

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
