"""Feature stores from features computed elsewhere (DESIGN.md section 3).

- ``import_arrays``: one ``.npy`` or ``.pt`` file per video holding an ``[N, D]`` array (the video id is the file
  stem);
- ``import_hdf5``: one HDF5 file with one group per video holding a dataset (``c3d_features`` in the ActivityNet
  Captions release: ``[N, 500]`` PCA-reduced C3D fc7 every 8 frames).

Such files carry no times, so clip ``k`` is given ``start = k * stride / fps`` and ``end = (k * stride + clip_len)
/ fps`` seconds, and the video's duration defaults to the last clip's end (a ``durations`` mapping overrides it).
A video whose array is malformed or not finite gets a ``failed`` row; the import goes on.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drn.errors import InputError
from drn.store import FeatureStoreWriter, StoreMetadata, VideoRecord


@dataclass(frozen=True)
class ClipTiming:
    """How the imported features were sampled: clip length and stride in frames, at ``fps`` frames per second."""

    clip_len: int = 16
    clip_stride: int = 8
    fps: float = 30.0

    def __post_init__(self) -> None:
        if self.clip_len < 1 or self.clip_stride < 1 or not self.fps > 0:
            raise InputError(f"clip_len, clip_stride and fps must be positive, not {self}")

    def times(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        starts = np.arange(count, dtype=np.float64) * self.clip_stride / self.fps
        return starts, starts + self.clip_len / self.fps


@dataclass
class ImportSummary:
    done: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] | None = None


def _metadata(extractor: str, layer: str, source_id: str, timing: ClipTiming, dim: int, dtype: str) -> StoreMetadata:
    return StoreMetadata(extractor=extractor, layer=layer, weights_sha256=source_id, clip_len=timing.clip_len,
                         clip_stride=timing.clip_stride, fps=f"{timing.fps:g}", feature_dim=dim, dtype=dtype)


def _checked(array: object, source: str) -> np.ndarray:
    features = np.asarray(array)
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"features of {source} have shape {features.shape}, expected (N, D) with N, D > 0")
    if not np.issubdtype(features.dtype, np.number):
        raise ValueError(f"features of {source} are {features.dtype}, not numbers")
    features = features.astype(np.float32, copy=False)
    if not np.isfinite(features).all():
        raise ValueError(f"features of {source} contain NaN or infinite values")
    return features


def _write_all(
    out: str | os.PathLike,
    items: Iterable[tuple[str, str, object]],
    metadata_of: Callable[[int], StoreMetadata],
    timing: ClipTiming,
    durations: Mapping[str, float] | None,
    videos_per_shard: int,
) -> ImportSummary:
    """Write (video_id, uri, array-or-exception) items; the first good array fixes the feature dimension."""
    summary = ImportSummary(failures=[])
    writer: FeatureStoreWriter | None = None
    pending_failures: list[VideoRecord] = []
    try:
        for vid, uri, loaded in items:
            try:
                if isinstance(loaded, Exception):
                    raise loaded
                features = _checked(loaded, uri)
                if writer is None:
                    writer = FeatureStoreWriter(out, metadata_of(features.shape[1]), videos_per_shard=videos_per_shard)
                    for record in pending_failures:
                        writer.finish_video(record)
                if features.shape[1] != writer.metadata.feature_dim:
                    raise ValueError(f"features of {uri} are {features.shape[1]}-d, the store's are "
                                     f"{writer.metadata.feature_dim}-d")
            except (ValueError, OSError, RuntimeError, KeyError) as error:
                record = VideoRecord(vid, uri, status="failed", error=str(error))
                summary.failed += 1
                summary.failures.append((vid, str(error)))
                if writer is None:
                    pending_failures.append(record)
                else:
                    writer.finish_video(record)
                continue
            starts, ends = timing.times(len(features))
            duration = float(durations[vid]) if durations and vid in durations else float(ends[-1])
            writer.add_clips(vid, features, starts, ends)
            writer.finish_video(VideoRecord(vid, uri, fps=timing.fps, duration_s=duration, num_clips=len(features)))
            summary.done += 1
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise InputError("no video had usable features; nothing was written", path=os.fspath(out))
    return summary


def _load_array(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    import torch

    value = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(value, dict) and len(value) == 1:
        value = next(iter(value.values()))
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{path} holds a {type(value).__name__}, not a tensor")
    return value.float().numpy()


def import_arrays(
    paths: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    timing: ClipTiming,
    *,
    extractor: str = "imported",
    layer: str = "unknown",
    dtype: str = "float16",
    durations: Mapping[str, float] | None = None,
    videos_per_shard: int = 256,
) -> ImportSummary:
    """Build a store from per-video ``.npy`` / ``.pt`` files (or folders of them)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(q for q in p.rglob("*") if q.suffix in (".npy", ".pt")))
        elif p.suffix in (".npy", ".pt"):
            files.append(p)
        else:
            raise InputError("expected a .npy or .pt file or a folder of them", path=p)
    if not files:
        raise InputError("no .npy or .pt files found", path=", ".join(map(str, paths)))
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise InputError(f"two files give the video_id {f.stem!r}: {seen[f.stem]} and {f}")
        seen[f.stem] = f

    def items() -> Iterator[tuple[str, str, object]]:
        for f in files:
            try:
                yield f.stem, str(f), _load_array(f)
            except Exception as error:
                yield f.stem, str(f), ValueError(f"cannot read {f}: {type(error).__name__}: {error}")

    def metadata_of(dim: int) -> StoreMetadata:
        return _metadata(extractor, layer, "unknown", timing, dim, dtype)

    return _write_all(out, items(), metadata_of, timing, durations, videos_per_shard)


def import_hdf5(
    path: str | os.PathLike,
    out: str | os.PathLike,
    timing: ClipTiming,
    *,
    dataset: str = "c3d_features",
    extractor: str = "imported-hdf5",
    layer: str = "unknown",
    dtype: str = "float16",
    durations: Mapping[str, float] | None = None,
    videos_per_shard: int = 256,
) -> ImportSummary:
    """Build a store from an HDF5 file with one group per video holding ``dataset`` (``[N, D]``)."""
    import h5py

    source = os.fspath(path)
    if not os.path.isfile(source):
        raise InputError("HDF5 file not found", path=source)
    try:
        handle = h5py.File(source, "r")
    except OSError as error:
        raise InputError(f"not a readable HDF5 file ({error})", path=source) from error
    with handle:
        groups = sorted(k for k in handle.keys() if isinstance(handle[k], h5py.Group))
        if not groups:
            raise InputError("the HDF5 file holds no groups (expected one group per video)", path=source)

        def items() -> Iterator[tuple[str, str, object]]:
            for vid in groups:
                uri = f"{source}#{vid}/{dataset}"
                if dataset not in handle[vid]:
                    yield vid, uri, KeyError(f"group {vid!r} has no dataset {dataset!r}")
                    continue
                yield vid, uri, handle[vid][dataset][()]

        def metadata_of(dim: int) -> StoreMetadata:
            return _metadata(extractor, layer, f"hdf5:{_quick_digest(source)}", timing, dim, dtype)

        return _write_all(out, items(), metadata_of, timing, durations, videos_per_shard)


def _quick_digest(path: str) -> str:
    """sha256 of the file's size and first and last MiB (an identity for large files, cheap to compute)."""
    digest = hashlib.sha256(str(os.path.getsize(path)).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(1 << 20))
        handle.seek(max(0, os.path.getsize(path) - (1 << 20)))
        digest.update(handle.read(1 << 20))
    return digest.hexdigest()
