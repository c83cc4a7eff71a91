"""Prediction files (DESIGN.md section 6): JSONL, one query a line.

``{"qid": ..., "video_id": str, "segments": [[start_s, end_s, score], ...]}`` with segments best first.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from drn.datasets.reading import parse_json_line, read_lines
from drn.errors import InputError


def qid_key(qid: int | str) -> str:
    """The form qids are matched in: ``5`` and ``"5"`` name the same query."""
    return str(qid)


@dataclass(frozen=True)
class Prediction:
    """Ranked segments for one query: ``segments`` is ``[K, 3]`` float64 rows of ``(start_s, end_s, score)``."""

    qid: int | str
    video_id: str
    segments: np.ndarray = field(repr=False)
    line: int | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", np.asarray(self.segments, dtype=np.float64).reshape(-1, 3))


def _parse_segments(value: object, qid: int | str, path: Path, line: int) -> np.ndarray:
    where = f"qid {qid!r}"
    if not isinstance(value, list):
        raise InputError(f"{where}: field 'segments' must be a list of [start, end, score]", path=path, line=line)
    rows = []
    for index, segment in enumerate(value):
        if (
            not isinstance(segment, list)
            or len(segment) != 3
            or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in segment)
        ):
            raise InputError(
                f"{where}: segments[{index}] must be [start_s, end_s, score] numbers, got {segment!r}",
                path=path,
                line=line,
            )
        start, end, score = (float(x) for x in segment)
        if not all(math.isfinite(x) for x in (start, end, score)):
            raise InputError(f"{where}: segments[{index}] has a non-finite number", path=path, line=line)
        if end < start:
            raise InputError(
                f"{where}: segments[{index}] ends before it starts ({start} > {end})", path=path, line=line
            )
        rows.append((start, end, score))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def read_predictions(path: str | Path) -> dict[int | str, Prediction]:
    """All predictions of a file by qid; a malformed line, a repeated qid or an end < start is an InputError."""
    path = Path(path)
    predictions: dict[int | str, Prediction] = {}
    lines_by_key: dict[str, int] = {}
    for line, text in read_lines(path):
        record = parse_json_line(text, path, line)
        for name in ("qid", "video_id", "segments"):
            if name not in record:
                raise InputError(f"missing field {name!r}", path=path, line=line)
        qid, video_id = record["qid"], record["video_id"]
        if isinstance(qid, bool) or not isinstance(qid, (int, str)):
            raise InputError(f"field 'qid' must be a string or an integer, got {qid!r}", path=path, line=line)
        if not isinstance(video_id, str):
            raise InputError(f"qid {qid!r}: field 'video_id' must be a string", path=path, line=line)
        key = qid_key(qid)
        if key in lines_by_key:
            raise InputError(f"qid {qid!r} repeats (first on line {lines_by_key[key]})", path=path, line=line)
        lines_by_key[key] = line
        predictions[qid] = Prediction(
            qid, video_id, _parse_segments(record["segments"], qid, path, line), line, str(path)
        )
    return predictions


def prediction_to_json(prediction: Prediction) -> str:
    segments = [[float(s), float(e), float(score)] for s, e, score in prediction.segments]
    return json.dumps({"qid": prediction.qid, "video_id": prediction.video_id, "segments": segments})


def write_predictions(path: str | Path, predictions: Iterable[Prediction]) -> int:
    """Write predictions as JSONL, atomically (a temporary file renamed into place); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            for prediction in predictions:
                out.write(prediction_to_json(prediction) + "\n")
                count += 1
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return count
