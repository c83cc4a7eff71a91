"""The LanceDB table of DRN's inputs for two-stage live search: each indexed video's pooled grids, read by key.

Stage two of live search grounds a few candidate videos. What DRN needs of a video is not its raw clips but the
grid of each of its grounding windows (``drn.grid.pool_to_grid`` of the window's clips, ``[T, D]``) and the
seconds that place the window. ``jobs.index_library`` pools those grids anyway to encode the cells, and writes
them here, beside the `cells` table (default name ``<cells table>_inputs``). A search reads its candidates with
one ``video_id IN (...)`` read through a B-tree on ``video_id``: its cost does not depend on how the feature
store's Parquet files were written, nor on where the store lives. One row per window (one for a short video):

| column | type | meaning |
|---|---|---|
| ``video_id`` | string | the video |
| ``window`` | int32 | the window's number in the video (time order; 0 for a video grounded whole) |
| ``offset_s`` | float64 | where the window starts in the video |
| ``duration_s`` | float64 | the window's timeline duration (the video's for a video grounded whole) |
| ``video_duration_s`` | float64 | the video's timeline duration (where merged moments are clipped) |
| ``grid`` | fixed_size_list<float16 or float32, T x D> | the window's grid, row-major ``[T, D]`` |

The grid is stored in the feature store's dtype: a grid is a max-pool of stored clip features, so this is
lossless (a float16 store gives float16 grids, exactly). The schema metadata holds the ``CellsInfo`` of the build
(``drn.cells.*``: checkpoint sha256, store, window rule) and ``drn.inputs.*`` (T, D, dtype). Rows merge on
(video_id, window) and a video's rows are written in one commit, so its windows are complete or absent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from lancedb.index import BTree

from drn.errors import InputError
from moments.index.cells import CellsInfo
from moments.index.db import DescribedTable, in_list

INPUTS_KEY = ("video_id", "window")
INPUTS_PREFIX = "drn.inputs."
INPUT_DTYPES = ("float16", "float32")


def inputs_table_name(cells_table: str) -> str:
    """The inputs table that goes with a cells table: ``cells`` -> ``cells_inputs``."""
    return f"{cells_table}_inputs"


@dataclass(frozen=True)
class InputsInfo:
    """What an inputs table was built from (the cells table's ``CellsInfo``) and the shape of its grids."""

    cells: CellsInfo
    num_segments: int
    feature_dim: int
    dtype: str  # float16 or float32

    def __post_init__(self) -> None:
        if self.dtype not in INPUT_DTYPES:
            raise InputError(f"grid dtype must be one of {INPUT_DTYPES}, not {self.dtype!r}")

    def to_metadata(self) -> dict[bytes, bytes]:
        own = {"num_segments": self.num_segments, "feature_dim": self.feature_dim, "dtype": self.dtype}
        return {**self.cells.to_metadata(), **{f"{INPUTS_PREFIX}{k}".encode(): str(v).encode() for k, v in own.items()}}

    @classmethod
    def from_metadata(cls, metadata: dict[bytes, bytes] | None, source: str) -> InputsInfo:
        cells = CellsInfo.from_metadata(metadata, source)
        values = {}
        for name in ("num_segments", "feature_dim", "dtype"):
            raw = (metadata or {}).get(f"{INPUTS_PREFIX}{name}".encode())
            if raw is None:
                raise InputError(f"the inputs table lacks its metadata '{INPUTS_PREFIX}{name}'; rebuild it with "
                                 "python -m jobs.index_library --overwrite", path=source)
            values[name] = raw.decode()
        return cls(cells, int(values["num_segments"]), int(values["feature_dim"]), values["dtype"])

    @property
    def grid_bytes(self) -> int:
        """Bytes of one window's grid."""
        return self.num_segments * self.feature_dim * np.dtype(self.dtype).itemsize


@dataclass
class VideoGrids:
    """What DRN needs of one video: its timeline duration and, per window, offset, duration and grid."""

    video_id: str
    duration_s: float  # the video's timeline duration
    offsets_s: np.ndarray  # [W]
    durations_s: np.ndarray  # [W], each window's timeline duration
    grids: np.ndarray  # [W, T, D]

    @property
    def num_windows(self) -> int:
        return int(len(self.offsets_s))


def inputs_schema(info: InputsInfo) -> pa.Schema:
    value = pa.float16() if info.dtype == "float16" else pa.float32()
    return pa.schema(
        [
            pa.field("video_id", pa.string()),
            pa.field("window", pa.int32()),
            pa.field("offset_s", pa.float64()),
            pa.field("duration_s", pa.float64()),
            pa.field("video_duration_s", pa.float64()),
            pa.field("grid", pa.list_(value, info.num_segments * info.feature_dim)),
        ],
        metadata=info.to_metadata(),
    )


def input_rows(info: InputsInfo, videos: list[VideoGrids]) -> pa.Table:
    """The rows of ``videos`` (every window of each), grids cast to the table's dtype."""
    schema = inputs_schema(info)
    if not videos:
        return schema.empty_table()
    size = info.num_segments * info.feature_dim
    for video in videos:
        if video.grids.shape[1:] != (info.num_segments, info.feature_dim):
            raise InputError(f"video {video.video_id!r}: grids of shape {video.grids.shape[1:]}, the table holds "
                             f"({info.num_segments}, {info.feature_dim})")
    counts = [video.num_windows for video in videos]
    grids = np.concatenate([video.grids for video in videos]).astype(info.dtype, copy=False)
    return pa.table({
        "video_id": pa.array(np.repeat(np.array([v.video_id for v in videos], dtype=object), counts), pa.string()),
        "window": pa.array(np.concatenate([np.arange(n, dtype=np.int32) for n in counts])),
        "offset_s": pa.array(np.concatenate([v.offsets_s for v in videos]).astype(np.float64)),
        "duration_s": pa.array(np.concatenate([v.durations_s for v in videos]).astype(np.float64)),
        "video_duration_s": pa.array(np.repeat([v.duration_s for v in videos], counts).astype(np.float64)),
        "grid": pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(grids).ravel()), size),
    }, schema=schema)


def videos_of_rows(rows: pa.Table, num_segments: int, feature_dim: int) -> dict[str, VideoGrids]:
    """``video_id -> VideoGrids`` of rows (any order; windows sorted). Grids stay in the stored dtype."""
    if rows.num_rows == 0:
        return {}
    rows = rows.sort_by([("video_id", "ascending"), ("window", "ascending")])
    grids = rows.column("grid").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    grids = grids.reshape(rows.num_rows, num_segments, feature_dim)
    ids = np.array(rows.column("video_id").to_pylist(), dtype=object)
    offsets, durations = rows.column("offset_s").to_numpy(), rows.column("duration_s").to_numpy()
    video_durations = rows.column("video_duration_s").to_numpy()
    names, starts = np.unique(ids, return_index=True)  # ids are sorted: each video's rows are one run
    found = {}
    for name, first, last in zip(names, starts, [*starts[1:], len(ids)], strict=True):
        found[str(name)] = VideoGrids(str(name), float(video_durations[first]), offsets[first:last],
                                      durations[first:last], grids[first:last])
    return found


class LiveInputsTable(DescribedTable):
    """The inputs table at a LanceDB URI: ``info`` (None while there is no table), writes, reads by video."""

    def __init__(self, uri: str | os.PathLike, table: str) -> None:
        super().__init__(uri, table, InputsInfo.from_metadata)

    def create(self, info: InputsInfo, overwrite: bool = False) -> None:
        """Create the (empty) table for ``info``; with ``overwrite`` an existing one is replaced."""
        self._create(inputs_schema(info), info, overwrite)

    def write(self, rows: pa.Table) -> int:
        """Insert rows whose (video_id, window) is not there yet: one atomic commit. Returns the rows given."""
        if rows.num_rows == 0:
            return 0
        self.table.merge_insert(list(INPUTS_KEY)).when_not_matched_insert_all().execute(rows)
        return rows.num_rows

    def video_ids(self) -> set[str]:
        """The videos with inputs (a video's rows are written in one commit, so these are complete)."""
        if self._table is None or self.count() == 0:
            return set()
        column = self._table.search().where("window = 0").select(["video_id"]).limit(None).to_arrow()
        return set(column.column("video_id").to_pylist())

    def ensure_index(self) -> list[str]:
        """The B-tree on video_id (created once; new rows folded in). Returns what was created."""
        table = self.table
        existing = {tuple(config.columns): config for config in table.list_indices()}
        if ("video_id",) not in existing:
            if table.count_rows() == 0:
                return []
            table.create_index("video_id", config=BTree())
            return [f"{self.name}.video_id"]
        if (existing[("video_id",)].num_unindexed_rows or 0) > 0:
            table.optimize()
        return []

    def read(self, video_ids: list[str], ids_per_read: int = 1000) -> dict[str, VideoGrids]:
        """The inputs of ``video_ids`` that the table holds (videos it lacks are left out): one ``video_id IN``
        read per ``ids_per_read`` videos, so one read for a search's candidates."""
        if not video_ids or self._table is None:
            return {}
        found: dict[str, VideoGrids] = {}
        for first in range(0, len(video_ids), ids_per_read):
            rows = (self._table.search().where(in_list("video_id", video_ids[first:first + ids_per_read]))
                    .select(["video_id", "window", "offset_s", "duration_s", "video_duration_s", "grid"])
                    .limit(None).to_arrow())
            found.update(videos_of_rows(rows, self.info.num_segments, self.info.feature_dim))
        return found
