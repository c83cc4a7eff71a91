"""The JSON layout ActivityNet Captions and TACoS share: ``{video_id: {timestamps, sentences, ...}}``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from drn.datasets.reading import as_seconds
from drn.errors import InputError


def iter_video_entries(data: Any, path: Path) -> Iterator[tuple[str, dict[str, Any], list[tuple[Any, Any]]]]:
    """Yield ``(video_id, entry, [(timestamp, sentence), ...])`` in the file's key order, checking the layout."""
    if not isinstance(data, dict):
        raise InputError(f"expected a JSON object of videos, got {type(data).__name__}", path=path)
    if not data:
        raise InputError("no videos in the file", path=path)
    for video_id, entry in data.items():
        where = f"video {video_id!r}"
        if not isinstance(entry, dict):
            raise InputError(f"{where}: expected an object", path=path)
        timestamps = entry.get("timestamps")
        sentences = entry.get("sentences")
        if not isinstance(timestamps, list) or not isinstance(sentences, list):
            raise InputError(f"{where}: fields 'timestamps' and 'sentences' must be lists", path=path)
        if len(timestamps) != len(sentences):
            raise InputError(f"{where}: {len(timestamps)} timestamps but {len(sentences)} sentences", path=path)
        for index, (stamp, sentence) in enumerate(zip(timestamps, sentences, strict=True)):
            if not isinstance(stamp, (list, tuple)) or len(stamp) != 2:
                raise InputError(f"{where}: timestamps[{index}] must be [start, end], got {stamp!r}", path=path)
            if not isinstance(sentence, str):
                raise InputError(f"{where}: sentences[{index}] must be a string", path=path)
        yield video_id, entry, list(zip(timestamps, sentences, strict=True))


def number_field(entry: dict[str, Any], field: str, video_id: str, path: Path) -> float:
    if field not in entry:
        raise InputError(f"video {video_id!r}: missing field {field!r}", path=path)
    return as_seconds(entry[field], f"{video_id}.{field}", path)


def stamp_pair(stamp: Any, index: int, video_id: str, path: Path) -> tuple[float, float]:
    field = f"{video_id}.timestamps[{index}]"
    return as_seconds(stamp[0], field, path), as_seconds(stamp[1], field, path)
