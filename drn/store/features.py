"""The feature store: clip features of a video library in Parquet shards (DESIGN.md section 3).

Layout under the store's root (a local path or an object-store URI)::

    clips/<shard>.parquet    one row per chunk of consecutive clips of one video
    videos/<shard>.parquet   one row per video of that shard: its facts and status (ok / failed)

A shard is complete once its ``videos/`` file exists: that file is written last (atomically on local disks), so a
job killed mid-shard leaves only a ``clips/`` file without its ``videos/`` partner, which readers ignore. Shard
names sort by creation time; when a video appears in several complete shards (a retried failure, a re-import),
the newest ``ok`` row wins, else the newest row.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from drn.durations import timeline_duration
from drn.errors import InputError
from drn.store.object_store import filesystem_for, is_uri

METADATA_PREFIX = "drn."
# A chunk is one Parquet row; the Parquet writer holds some 30 to 45 bytes per feature value while it encodes one
# (levels and page buffers of the nested list column), and the allocator keeps that memory for the next chunk:
# 1 MiB chunks (128 fc6 clips in float16) cost the writer about 25 MB, 4 MiB chunks about 80 MB (docs/extraction.md).
DEFAULT_MAX_CHUNK_BYTES = 1 << 20
VIDEO_STATUSES = ("ok", "failed")


@dataclass(frozen=True)
class StoreMetadata:
    """What produced the features; every ``clips/`` file carries it in its Arrow schema metadata."""

    extractor: str
    layer: str
    weights_sha256: str
    clip_len: int
    clip_stride: int
    fps: str
    feature_dim: int
    dtype: str = "float16"  # the stored dtype of the features
    # what the extractor computed in (float32, bfloat16, float16; "unknown" for imported or older stores). Not part
    # of a store's kind: features computed in bf16 and fp32 agree (cosine >= 0.99), so files may differ in it.
    compute_dtype: str = field(default="unknown", compare=False)

    def __post_init__(self) -> None:
        if self.dtype not in ("float16", "float32"):
            raise InputError(f"feature dtype must be float16 or float32, not {self.dtype!r}")
        if self.feature_dim <= 0:
            raise InputError(f"feature_dim must be positive, not {self.feature_dim}")

    def to_arrow(self) -> dict[bytes, bytes]:
        return {f"{METADATA_PREFIX}{k}".encode(): str(v).encode() for k, v in asdict(self).items()}

    @classmethod
    def from_arrow(cls, metadata: dict[bytes, bytes] | None, source: str) -> StoreMetadata:
        metadata = metadata or {}
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = metadata.get(f"{METADATA_PREFIX}{f.name}".encode())
            if raw is None and not f.compare:  # optional, recorded since drn.compute_dtype was added
                continue
            if raw is None:
                raise InputError(f"schema metadata lacks '{METADATA_PREFIX}{f.name}'", path=source)
            text = raw.decode()
            values[f.name] = int(text) if f.name in ("clip_len", "clip_stride", "feature_dim") else text
        return cls(**values)  # type: ignore[arg-type]

    def differences(self, other: StoreMetadata) -> list[str]:
        """``'key: a vs b'`` for every field where the two disagree."""
        mine, theirs = asdict(self), asdict(other)
        kind = [f.name for f in fields(self) if f.compare]
        return [f"{METADATA_PREFIX}{k}: {mine[k]!r} vs {theirs[k]!r}" for k in kind if mine[k] != theirs[k]]

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)


def clips_schema(metadata: StoreMetadata) -> pa.Schema:
    value_type = pa.float16() if metadata.dtype == "float16" else pa.float32()
    return pa.schema(
        [
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("chunk", pa.int32(), nullable=False),
            pa.field("clip_start_s", pa.list_(pa.float32())),
            pa.field("clip_end_s", pa.list_(pa.float32())),
            pa.field("features", pa.list_(pa.list_(value_type, metadata.feature_dim))),
        ],
        metadata=metadata.to_arrow(),
    )


VIDEOS_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("uri", pa.string()),
        pa.field("fps", pa.float64()),
        pa.field("num_frames", pa.int64()),
        pa.field("duration_s", pa.float64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("num_clips", pa.int64()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
    ]
)


@dataclass
class VideoRecord:
    """One row of ``videos/``."""

    video_id: str
    uri: str
    fps: float | None = None
    num_frames: int | None = None
    duration_s: float | None = None
    width: int | None = None
    height: int | None = None
    num_clips: int = 0
    status: str = "ok"
    error: str | None = None

    def __post_init__(self) -> None:
        if self.status not in VIDEO_STATUSES:
            raise ValueError(f"status must be one of {VIDEO_STATUSES}, not {self.status!r}")


@dataclass
class VideoFeatures:
    """All clip features of one video, in time order, with each clip's start and end in seconds."""

    video_id: str
    features: np.ndarray
    clip_start_s: np.ndarray
    clip_end_s: np.ndarray
    duration_s: float

    @property
    def num_clips(self) -> int:
        return int(self.features.shape[0])


def absolute_uri(uri: str | os.PathLike) -> str:
    """An object-store URI as it is, a local path made absolute: what to hand to workers in other folders."""
    text = os.fspath(uri)
    return text if is_uri(text) else os.path.abspath(text)


def new_shard_name() -> str:
    """A shard name that sorts by creation time and never collides across workers."""
    return f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"


def _write_table_atomically(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{os.path.dirname(path)}/.tmp-{os.path.basename(path)}"
        pq.write_table(table, tmp, filesystem=fs)
        fs.move(tmp, path)
    else:  # a single object-store put is atomic
        pq.write_table(table, path, filesystem=fs)


def writer_memory_pool() -> pa.MemoryPool:
    """The Arrow memory pool of the writers: jemalloc where pyarrow has it. Writing chunk after chunk of a long
    video through the default pool (mimalloc) or the system allocator let memory creep up by 100 MB and more over
    an hour of video; jemalloc stayed flat (docs/extraction.md, "Memory")."""
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without jemalloc
        return pa.default_memory_pool()


class FeatureStoreWriter:
    """Writes videos into one shard at a time; bounded memory whatever a video's length.

    Use ``add_clips`` as clips become available (any number of calls per video, in time order), then
    ``finish_video`` with its record; ``close`` seals the shard. A failed video needs only ``finish_video``.
    Shards roll over after ``videos_per_shard`` videos, at the first moment no video is half written (so
    several videos may be in flight at once, as when pipeline stages deliver them interleaved).
    """

    def __init__(
        self,
        uri: str | os.PathLike,
        metadata: StoreMetadata,
        *,
        videos_per_shard: int = 64,
        max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    ) -> None:
        self.fs, self.root = filesystem_for(uri)
        self.metadata = metadata
        self.schema = clips_schema(metadata)
        self.videos_per_shard = videos_per_shard
        self.clips_per_chunk = max(1, max_chunk_bytes // (metadata.feature_dim * metadata.numpy_dtype.itemsize))
        self._pool = writer_memory_pool()
        check_store_location(self.fs, self.root, os.fspath(uri))
        existing = existing_metadata(uri)
        if existing is not None and existing != metadata:
            raise InputError(
                "feature store holds features of another kind: " + "; ".join(existing.differences(metadata)),
                path=os.fspath(uri),
            )
        self.fs.create_dir(f"{self.root}/clips", recursive=True)
        self.fs.create_dir(f"{self.root}/videos", recursive=True)
        self._shard: str | None = None
        self._clips_writer: pq.ParquetWriter | None = None
        self._records: list[VideoRecord] = []
        self._pending: dict[str, list[np.ndarray]] = {}
        self._next_chunk: dict[str, int] = {}

    def add_clips(self, video_id: str, features: np.ndarray, clip_start_s: np.ndarray, clip_end_s: np.ndarray) -> None:
        """Append clips of ``video_id`` (after any added before). Writes full chunks as soon as they fill."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.metadata.feature_dim:
            raise InputError(
                f"video {video_id}: features have shape {features.shape}, expected (N, {self.metadata.feature_dim})"
            )
        if not np.isfinite(features).all():
            raise InputError(f"video {video_id}: features contain NaN or infinite values")
        self._open_shard()
        self._pending.setdefault(video_id, [])
        pending = self._pending[video_id]
        pending.append(np.column_stack([clip_start_s, clip_end_s, features.astype(np.float32, copy=False)]))
        while sum(len(p) for p in pending) >= self.clips_per_chunk:
            block = np.concatenate(pending)
            self._write_chunk(video_id, block[: self.clips_per_chunk])
            pending[:] = [block[self.clips_per_chunk :]] if len(block) > self.clips_per_chunk else []

    def finish_video(self, record: VideoRecord) -> None:
        """Flush the video's last clips and record it; the record becomes visible when the shard closes."""
        self._open_shard()
        pending = self._pending.pop(record.video_id, [])
        if pending and record.status == "ok":
            self._write_chunk(record.video_id, np.concatenate(pending))
        self._next_chunk.pop(record.video_id, None)
        self._records.append(record)
        if len(self._records) >= self.videos_per_shard and not self._pending:
            self.close()

    def close(self) -> None:
        """Seal the current shard: close its clips file, then write its videos file (the completion marker)."""
        if self._shard is None:
            return
        if self._pending:
            raise RuntimeError(f"videos not finished before close: {sorted(self._pending)}")
        if self._clips_writer is not None:
            self._clips_writer.close()
        if self._records:
            table = pa.Table.from_pylist([asdict(r) for r in self._records], schema=VIDEOS_SCHEMA)
            _write_table_atomically(self.fs, f"{self.root}/videos/{self._shard}.parquet", table)
        self._shard, self._clips_writer, self._records = None, None, []

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._clips_writer is not None:  # leave an orphan clips file that readers ignore
            self._clips_writer.close()

    def _open_shard(self) -> None:
        if self._shard is None:
            self._shard = new_shard_name()

    def _write_chunk(self, video_id: str, block: np.ndarray) -> None:
        if self._clips_writer is None:
            path = f"{self.root}/clips/{self._shard}.parquet"
            self._clips_writer = pq.ParquetWriter(path, self.schema, filesystem=self.fs, memory_pool=self._pool)
        chunk = self._next_chunk.get(video_id, 0)
        self._next_chunk[video_id] = chunk + 1
        dim = self.metadata.feature_dim
        values = pa.array(block[:, 2:].astype(self.metadata.numpy_dtype).ravel(), memory_pool=self._pool)
        features = pa.FixedSizeListArray.from_arrays(values, dim)
        row = pa.Table.from_arrays(
            [
                pa.array([video_id]),
                pa.array([chunk], pa.int32()),
                pa.array([block[:, 0].astype(np.float32)], pa.list_(pa.float32())),
                pa.array([block[:, 1].astype(np.float32)], pa.list_(pa.float32())),
                pa.ListArray.from_arrays(pa.array([0, len(block)], pa.int32()), features),
            ],
            schema=self.schema,
        )
        self._clips_writer.write_table(row)


def check_store_location(fs: pafs.FileSystem, root: str, uri: str) -> None:
    """InputError when ``root`` holds something other than a feature store (files, but no clips/ or videos/)."""
    selector = pafs.FileSelector(root, allow_not_found=True)
    names = sorted(os.path.basename(info.path.rstrip("/")) for info in fs.get_file_info(selector))
    visible = [name for name in names if not name.startswith(".")]
    if visible and not {"clips", "videos"} & set(visible):
        shown = ", ".join(visible[:3]) + (" ..." if len(visible) > 3 else "")
        raise InputError(f"holds something other than a feature store ({shown}); give an empty folder or prefix, "
                         "or an existing feature store", path=uri)


def _list_parquet(fs: pafs.FileSystem, folder: str) -> list[str]:
    selector = pafs.FileSelector(folder, allow_not_found=True)
    names = [
        info.path
        for info in fs.get_file_info(selector)
        if info.type == pafs.FileType.File
        and info.path.endswith(".parquet")
        and not os.path.basename(info.path).startswith(".")
    ]
    return sorted(names)


def _shard_of(path: str) -> str:
    return os.path.basename(path)[: -len(".parquet")]


def existing_metadata(uri: str | os.PathLike) -> StoreMetadata | None:
    """The metadata of a store's complete shards, or None for a store with no features yet."""
    fs, root = filesystem_for(uri)
    complete = {_shard_of(p) for p in _list_parquet(fs, f"{root}/videos")}
    found: tuple[StoreMetadata, str] | None = None
    for path in _list_parquet(fs, f"{root}/clips"):
        if _shard_of(path) not in complete:
            continue
        meta = StoreMetadata.from_arrow(pq.read_schema(path, filesystem=fs).metadata, path)
        if found is None:
            found = (meta, path)
        elif meta != found[0]:
            raise InputError(
                f"feature store mixes files of different kinds ({found[1]} and {path}): "
                + "; ".join(found[0].differences(meta)),
                path=os.fspath(uri),
            )
    return None if found is None else found[0]


def load_each(load: Callable[[str], VideoFeatures], video_ids: Iterable[str]
              ) -> tuple[list[VideoFeatures], list[tuple[str, str]]]:
    """The videos that ``load`` returns, and ``(video_id, error)`` for those it fails on: a broken shard fails its
    own videos, not the job or the search."""
    videos, failures = [], []
    for vid in video_ids:
        try:
            videos.append(load(vid))
        except Exception as error:
            failures.append((vid, f"{type(error).__name__}: {error}"))
    return videos, failures


class FeatureStore:
    """Reads a feature store: its metadata, its videos, and each video's clips reassembled in time order."""

    def __init__(self, uri: str | os.PathLike) -> None:
        self.uri = os.fspath(uri)
        self.fs, self.root = filesystem_for(uri)
        info = self.fs.get_file_info(f"{self.root}/videos")
        if info.type != pafs.FileType.Directory:
            if self.fs.get_file_info(self.root).type == pafs.FileType.NotFound:
                raise InputError("not a feature store (nothing is there)", path=self.uri)
            raise InputError("not a feature store (no videos/ folder)", path=self.uri)
        self._videos = self._read_videos()
        self._metadata = existing_metadata(uri)
        self._clips_cache: tuple[str, pa.Table] | None = None
        self._durations: dict[str, float] | None = None

    @property
    def metadata(self) -> StoreMetadata:
        if self._metadata is None:
            raise InputError("feature store holds no clip features yet", path=self.uri)
        return self._metadata

    def videos(self) -> pa.Table:
        """One row per video (the winning row when a video was written more than once), with its shard."""
        return self._videos

    def ok_video_ids(self) -> list[str]:
        ok = self._videos.filter(pc.equal(self._videos["status"], "ok"))
        return ok["video_id"].to_pylist()

    def durations(self) -> dict[str, float]:
        """Every ``ok`` video's timeline duration in seconds (``drn.durations``): the decoded duration, or the
        last clip's end where the row has none."""
        if self._durations is None:
            ok = self._videos.filter(pc.equal(self._videos["status"], "ok"))
            recorded = dict(zip(ok["video_id"].to_pylist(), ok["duration_s"].to_pylist(), strict=True))
            out = {vid: timeline_duration(d, ()) for vid, d in recorded.items()}
            out.update(self._last_clip_ends([vid for vid, d in out.items() if not math.isfinite(d)]))
            self._durations = out
        return dict(self._durations)

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._row_of

    def __len__(self) -> int:
        return self._videos.num_rows

    def load(self, video_id: str) -> VideoFeatures:
        """All clips of one ``ok`` video, in time order."""
        row = self._row_of.get(video_id)
        if row is None:
            raise InputError(f"video {video_id!r} is not in the feature store", path=self.uri)
        if row["status"] != "ok":
            raise InputError(f"video {video_id!r} failed extraction: {row['error']}", path=self.uri)
        table = self._shard_clips(row["shard"])
        rows = table.filter(pc.equal(table["video_id"], video_id))
        return self._assemble(video_id, rows, row["duration_s"])

    def iter_videos(self, video_ids: Iterable[str] | None = None) -> Iterator[VideoFeatures]:
        """Videos shard by shard (each shard's clips read once); ``video_ids`` restricts and orders nothing."""
        wanted = set(self.ok_video_ids() if video_ids is None else video_ids)
        by_shard: dict[str, list[str]] = {}
        for vid in sorted(wanted):
            row = self._row_of.get(vid)
            if row is None or row["status"] != "ok":
                raise InputError(f"video {vid!r} is not an ok video of the feature store", path=self.uri)
            by_shard.setdefault(row["shard"], []).append(vid)
        for shard in sorted(by_shard):
            table = self._shard_clips(shard)
            rows_of: dict[str, list[int]] = {}
            for i, vid in enumerate(table["video_id"].to_pylist()):  # one pass over the shard, not one per video
                rows_of.setdefault(vid, []).append(i)
            for vid in by_shard[shard]:
                rows = table.take(pa.array(rows_of.get(vid, []), pa.int64()))
                yield self._assemble(vid, rows, self._row_of[vid]["duration_s"])

    def _last_clip_ends(self, video_ids: Iterable[str]) -> dict[str, float]:
        """The last clip's end of each video, reading only the clip times of the shards that hold them."""
        by_shard: dict[str, set[str]] = {}
        for vid in video_ids:
            by_shard.setdefault(self._row_of[vid]["shard"], set()).add(vid)
        ends: dict[str, float] = {}
        for shard, wanted in sorted(by_shard.items()):
            table = pq.read_table(f"{self.root}/clips/{shard}.parquet", filesystem=self.fs,
                                  columns=["video_id", "clip_end_s"])
            for vid, times in zip(table["video_id"].to_pylist(), table["clip_end_s"].to_pylist(), strict=True):
                if vid in wanted and times:
                    ends[vid] = max(ends.get(vid, -math.inf), max(times))
        return {vid: ends.get(vid, math.nan) for wanted in by_shard.values() for vid in wanted}

    def _read_videos(self) -> pa.Table:
        parts = []
        for path in _list_parquet(self.fs, f"{self.root}/videos"):
            table = pq.read_table(path, filesystem=self.fs, schema=VIDEOS_SCHEMA)
            parts.append(table.append_column("shard", pa.array([_shard_of(path)] * table.num_rows, pa.string())))
        if not parts:
            empty = VIDEOS_SCHEMA.append(pa.field("shard", pa.string()))
            self._row_of: dict[str, dict] = {}
            return empty.empty_table()
        table = pa.concat_tables(parts)
        winners: dict[str, int] = {}
        statuses = table["status"].to_pylist()
        for i, vid in enumerate(table["video_id"].to_pylist()):  # shards are in time order: later rows win
            prev = winners.get(vid)
            if prev is None or statuses[i] == "ok" or statuses[prev] != "ok":
                winners[vid] = i
        table = table.take(pa.array(sorted(winners.values()), pa.int64()))
        self._row_of = {r["video_id"]: r for r in table.to_pylist()}
        return table

    def _shard_clips(self, shard: str) -> pa.Table:
        if self._clips_cache is None or self._clips_cache[0] != shard:
            path = f"{self.root}/clips/{shard}.parquet"
            self._clips_cache = (shard, pq.read_table(path, filesystem=self.fs))
        return self._clips_cache[1]

    def _assemble(self, video_id: str, rows: pa.Table, duration_s: float) -> VideoFeatures:
        if rows.num_rows == 0:
            raise InputError(f"video {video_id!r} is marked ok but has no clips", path=self.uri)
        rows = rows.sort_by("chunk")
        dim = self.metadata.feature_dim
        feats = _flatten_features(rows["features"], dim)
        starts = pc.list_flatten(rows["clip_start_s"]).to_numpy()
        ends = pc.list_flatten(rows["clip_end_s"]).to_numpy()
        return VideoFeatures(video_id, feats, starts, ends, timeline_duration(duration_s, ends))


def _flatten_features(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    """The ``[N, D]`` feature matrix of a list-of-fixed-size-list column; no copy for a single-chunk video."""
    arrays = []
    for chunk in column.chunks:
        flat = chunk.flatten().flatten()  # list -> fixed_size_list -> values, honouring offsets
        arrays.append(flat.to_numpy(zero_copy_only=True).reshape(-1, dim))
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
