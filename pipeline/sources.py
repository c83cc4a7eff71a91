"""Listing the videos of a library: a directory, a glob, a manifest, or an object-store URI.

``list_videos(spec)`` accepts

- a directory (local or ``s3://``, ``gs://``, ...): every file below it whose extension is a video extension;
- a glob (``videos/**/*.mp4``; local paths only);
- a text manifest (``.txt``, ``.list``): one video a line, ``URI`` or ``video_id<TAB>URI``; blank lines and lines
  starting with ``#`` are skipped;
- a Parquet manifest (``.parquet``): a ``uri`` (or ``path``) column and an optional ``video_id`` column;
- a single video file.

Relative paths in a manifest are relative to the manifest's folder. ``video_id`` defaults to the file's stem.
Two inputs with the same ``video_id`` are an InputError before any work starts. Paths that do not exist are kept:
the extraction records them as ``failed`` videos ("file not found") so that a manifest's gaps are visible.
"""

from __future__ import annotations

import glob
import os
import posixpath
from dataclasses import dataclass

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from drn.errors import InputError
from drn.store.object_store import filesystem_for, is_uri

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts")
TEXT_MANIFEST_EXTENSIONS = (".txt", ".list", ".lst")


@dataclass(frozen=True)
class VideoSource:
    """One video to extract: its id in the store and where it lives (a local path or a URI)."""

    video_id: str
    uri: str
    origin: str = ""  # where it was listed (a manifest line), for error messages


def video_id_of(uri: str) -> str:
    """The default id of a video: its file name without the extension."""
    name = posixpath.basename(uri.rstrip("/")) if is_uri(uri) else os.path.basename(uri)
    return os.path.splitext(name)[0]


def list_videos(spec: str, extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> list[VideoSource]:
    """The videos that ``spec`` names (module docstring), sorted by id; InputError for bad input or duplicate ids."""
    extensions = tuple(e.lower() for e in extensions)
    if any(ch in spec for ch in "*?[") and not is_uri(spec):
        paths = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not paths:
            raise InputError("the glob matches no files", path=spec)
        sources = [VideoSource(video_id_of(p), os.path.abspath(p)) for p in paths]
    else:
        fs, path = filesystem_for(spec)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise InputError("no such file or folder", path=spec)
        lower = path.lower()
        if info.type == pafs.FileType.Directory:
            sources = _list_folder(fs, path, spec, extensions)
        elif lower.endswith(".parquet"):
            sources = _read_parquet_manifest(fs, path, spec)
        elif lower.endswith(TEXT_MANIFEST_EXTENSIONS):
            sources = _read_text_manifest(fs, path, spec)
        else:
            sources = [VideoSource(video_id_of(path), spec if is_uri(spec) else path)]
    if not sources:
        raise InputError("no videos found", path=spec)
    _refuse_duplicate_ids(sources, spec)
    return sorted(sources, key=lambda s: s.video_id)


def _list_folder(fs: pafs.FileSystem, root: str, spec: str, extensions: tuple[str, ...]) -> list[VideoSource]:
    selector = pafs.FileSelector(root, recursive=True)
    scheme = spec.split("://", 1)[0] + "://" if is_uri(spec) else ""
    return [
        VideoSource(video_id_of(info.path), scheme + info.path if scheme else info.path)
        for info in fs.get_file_info(selector)
        if info.type == pafs.FileType.File
        and info.path.lower().endswith(extensions)
        and not posixpath.basename(info.path).startswith(".")
    ]


def _resolve(entry: str, manifest_dir: str, scheme: str) -> str:
    if is_uri(entry) or os.path.isabs(entry):
        return entry
    if scheme:
        return scheme + posixpath.join(manifest_dir, entry)
    return os.path.normpath(os.path.join(manifest_dir, entry))


def _read_text_manifest(fs: pafs.FileSystem, path: str, spec: str) -> list[VideoSource]:
    scheme = spec.split("://", 1)[0] + "://" if is_uri(spec) else ""
    folder = posixpath.dirname(path)
    with fs.open_input_stream(path) as stream:
        try:
            text = stream.read().decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputError("manifest is not UTF-8 text", path=spec) from error
    sources = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = raw.rstrip("\r\n").split("\t")
        if len(parts) == 1:
            uri, vid = parts[0].strip(), None
        elif len(parts) == 2:
            vid, uri = parts[0].strip(), parts[1].strip()
            if not vid or not uri:
                raise InputError("expected 'video_id<TAB>URI' with both parts non-empty", path=spec, line=number)
        else:
            raise InputError(f"expected 'URI' or 'video_id<TAB>URI', found {len(parts)} tab-separated fields",
                             path=spec, line=number)
        uri = _resolve(uri, folder, scheme)
        sources.append(VideoSource(vid or video_id_of(uri), uri, origin=f"{spec}, line {number}"))
    return sources


def _read_parquet_manifest(fs: pafs.FileSystem, path: str, spec: str) -> list[VideoSource]:
    scheme = spec.split("://", 1)[0] + "://" if is_uri(spec) else ""
    try:
        table = pq.read_table(path, filesystem=fs)
    except Exception as error:
        raise InputError(f"cannot read the Parquet manifest ({error})", path=spec) from error
    column = "uri" if "uri" in table.column_names else "path" if "path" in table.column_names else None
    if column is None:
        raise InputError(f"the manifest needs a 'uri' or 'path' column (has {table.column_names})", path=spec)
    uris = table[column].to_pylist()
    ids = table["video_id"].to_pylist() if "video_id" in table.column_names else [None] * len(uris)
    sources = []
    for row, (uri, vid) in enumerate(zip(uris, ids, strict=True)):
        if not uri:
            raise InputError(f"row {row}: empty '{column}'", path=spec)
        resolved = _resolve(str(uri), posixpath.dirname(path), scheme)
        sources.append(VideoSource(str(vid) if vid else video_id_of(resolved), resolved, origin=f"{spec}, row {row}"))
    return sources


def _refuse_duplicate_ids(sources: list[VideoSource], spec: str) -> None:
    seen: dict[str, VideoSource] = {}
    for source in sources:
        first = seen.setdefault(source.video_id, source)
        if first is not source:
            where = [s.origin or s.uri for s in (first, source)]
            raise InputError(
                f"two inputs have the video_id {source.video_id!r}: {where[0]} ({first.uri}) and "
                f"{where[1]} ({source.uri}); give them distinct ids (a manifest with video_id)",
                path=spec,
            )
