"""Which video files the search service may serve: the feature store's manifest, mapped under one folder.

The feature store's `videos/` table lists every video extraction saw, with the `uri` it had then. The service
serves a video only when its id is an `ok` row of that table, and only from a file under the video root: the
root given to the service, or by default the folder that held the videos at extraction time (the deepest folder
common to all their URIs). A video's file under the root is its path relative to that common folder, or, when
that file is missing, its file name at the root (a library copied flat). Requests name a video by its id only;
the id is looked up in this table and no text from a request is ever joined to a path.
"""

from __future__ import annotations

import math
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from drn.errors import InputError
from drn.store import FeatureStore
from drn.store.object_store import local_path


@dataclass(frozen=True)
class LibraryVideo:
    """One servable video: its id, facts from the manifest, and where its file should be under the root."""

    video_id: str
    uri: str
    duration_s: float | None  # None when extraction did not record it
    fps: float | None
    width: int | None
    height: int | None
    relative: PurePosixPath | None  # under the root; None when the URI cannot be placed under it

    def summary(self) -> dict[str, object]:
        return {"video_id": self.video_id, "duration_s": self.duration_s, "fps": self.fps, "width": self.width,
                "height": self.height}


class VideoLibrary:
    """The `ok` videos of a feature store, resolvable to files under a root folder."""

    def __init__(self, videos: dict[str, LibraryVideo], root: Path | None, store_uri: str) -> None:
        self._videos = videos
        self.root = root.resolve() if root is not None else None
        self.store_uri = store_uri

    @classmethod
    def from_store(cls, store_uri: str, root: str | os.PathLike | None = None) -> VideoLibrary:
        """Read the manifest of the store at `store_uri`; `root` defaults to the videos' common folder."""
        store = FeatureStore(store_uri)
        rows = [row for row in store.videos().to_pylist() if row["status"] == "ok"]
        uris = [local_path(row["uri"]) if row["uri"] else None for row in rows]
        base = _common_folder([uri for uri in uris if uri is not None]) if all(uris) else None
        if root is not None:
            root_path = Path(root)
            if not root_path.is_dir():
                raise InputError("the video root is not a folder", path=root)
        else:
            root_path = Path(base) if base is not None else None
        videos = {}
        for row, local in zip(rows, uris, strict=True):
            relative = _relative(local, base) if local is not None and base is not None else None
            if relative is None:
                relative = PurePosixPath(posixpath.basename(row["uri"].rstrip("/"))) if row["uri"] else None
            videos[row["video_id"]] = LibraryVideo(
                video_id=row["video_id"], uri=row["uri"], duration_s=_finite(row.get("duration_s")),
                fps=row.get("fps"), width=row.get("width"), height=row.get("height"), relative=relative,
            )
        return cls(videos, root_path, store_uri)

    def __contains__(self, video_id: object) -> bool:
        return isinstance(video_id, str) and video_id in self._videos

    def __len__(self) -> int:
        return len(self._videos)

    def ids(self) -> list[str]:
        return sorted(self._videos)

    def get(self, video_id: str) -> LibraryVideo | None:
        return self._videos.get(video_id)

    def file_of(self, video_id: str) -> Path | None:
        """The video's file under the root, or None when it is not there (or the id is not in the manifest)."""
        video = self._videos.get(video_id)
        if video is None or video.relative is None or self.root is None:
            return None
        for relative in (video.relative, PurePosixPath(video.relative.name)):
            candidate = Path(os.path.normpath(self.root / relative))  # the manifest's path; links are the owner's
            if candidate.is_relative_to(self.root) and candidate.is_file():
                return candidate
        return None


def _finite(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) and value > 0 else None


def _common_folder(paths: list[str]) -> str | None:
    if not paths:
        return None
    folders = [os.path.dirname(os.path.abspath(path)) for path in paths]
    return os.path.commonpath(folders)


def _relative(path: str, base: str) -> PurePosixPath | None:
    relative = os.path.relpath(os.path.abspath(path), base)
    parts = PurePosixPath(Path(relative).as_posix())
    if parts.is_absolute() or ".." in parts.parts:
        return None
    return parts
