"""Random access to single videos of a feature store, for search: read a video's row groups, not its shard.

``FeatureStore.load`` reads a video's whole ``clips/`` shard (it is built for passes over the library, shard by
shard). A search that grounds 20 candidate videos spread over 20 shards would read all of them. ``VideoLookup``
reads only the row groups that hold each video: the store writer writes every chunk as a row group of its own, so
a video is one or a few row groups. Which row groups hold which video is learned from the shard's ``video_id``
column (read once per shard, on first use, and kept); a row group that also holds other videos is filtered.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from drn.errors import InputError
from drn.store.features import FeatureStore, VideoFeatures, load_each


class VideoLookup:
    """``load(video_ids) -> (videos, failures)`` reading only the row groups of those videos."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store
        videos = store.videos()
        self._facts = {vid: (shard, status, duration) for vid, shard, status, duration in zip(
            videos["video_id"].to_pylist(), videos["shard"].to_pylist(), videos["status"].to_pylist(),
            videos["duration_s"].to_pylist(), strict=True)}
        self._files: dict[str, pq.ParquetFile] = {}
        self._groups: dict[str, dict[str, list[int]]] = {}

    def _shard(self, shard: str) -> tuple[pq.ParquetFile, dict[str, list[int]]]:
        if shard not in self._files:
            path = f"{self.store.root}/clips/{shard}.parquet"
            handle = pq.ParquetFile(self.store.fs.open_input_file(path))
            groups: dict[str, list[int]] = {}
            ids = handle.read(columns=["video_id"]).column("video_id").to_pylist()
            first = 0
            for group in range(handle.metadata.num_row_groups):
                rows = handle.metadata.row_group(group).num_rows
                for vid in dict.fromkeys(ids[first:first + rows]):
                    groups.setdefault(vid, []).append(group)
                first += rows
            self._files[shard], self._groups[shard] = handle, groups
        return self._files[shard], self._groups[shard]

    def load_one(self, video_id: str) -> VideoFeatures:
        facts = self._facts.get(video_id)
        if facts is None:
            raise InputError(f"video {video_id!r} is not in the feature store", path=self.store.uri)
        shard, status, duration = facts
        if status != "ok":
            raise InputError(f"video {video_id!r} failed extraction", path=self.store.uri)
        handle, groups = self._shard(shard)
        if video_id not in groups:
            raise InputError(f"video {video_id!r} is marked ok but has no clips", path=self.store.uri)
        rows = handle.read_row_groups(groups[video_id])
        if len(set(rows.column("video_id").to_pylist())) > 1:
            rows = rows.filter(pc.equal(rows["video_id"], video_id))
        return _assemble(video_id, rows.sort_by("chunk"), duration, self.store.metadata.feature_dim)

    def load(self, video_ids: Iterable[str]) -> tuple[list[VideoFeatures], list[tuple[str, str]]]:
        """The videos that load, and ``(video_id, error)`` for those that do not."""
        return load_each(self.load_one, video_ids)


def _assemble(video_id: str, rows: pa.Table, duration_s: float | None, dim: int) -> VideoFeatures:
    values = pc.list_flatten(pc.list_flatten(rows["features"]))
    features = values.to_numpy(zero_copy_only=False).reshape(-1, dim)
    starts = pc.list_flatten(rows["clip_start_s"]).to_numpy()
    ends = pc.list_flatten(rows["clip_end_s"]).to_numpy()
    duration = float(duration_s) if duration_s is not None and np.isfinite(duration_s) else float(ends[-1])
    return VideoFeatures(video_id, features, starts, ends, duration)
