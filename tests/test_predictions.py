"""Prediction files: round trip, atomic writes, and every malformed-file fault named by qid and line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from drn.errors import InputError
from drn.predictions import Prediction, read_predictions, write_predictions


def test_round_trip(tmp_path: Path) -> None:
    written = [
        Prediction(0, "vidA", np.array([[1.5, 4.25, 0.9], [0.0, 2.0, 0.1]])),
        Prediction("q-7", "vidB", np.zeros((0, 3))),
    ]
    path = tmp_path / "sub" / "preds.jsonl"
    assert write_predictions(path, written) == 2
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"qid": 0, "video_id": "vidA", "segments": [[1.5, 4.25, 0.9], [0.0, 2.0, 0.1]]}
    read = read_predictions(path)
    assert list(read) == [0, "q-7"]
    assert read[0].segments.tolist() == [[1.5, 4.25, 0.9], [0.0, 2.0, 0.1]] and read[0].line == 1
    assert read["q-7"].segments.shape == (0, 3) and read["q-7"].source == str(path)


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "preds.jsonl"
    write_predictions(path, [Prediction(0, "v", np.array([[0, 1, 1.0]]))])
    before = path.read_bytes()

    def broken():
        yield Prediction(1, "v", np.array([[0, 1, 1.0]]))
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError):
        write_predictions(path, broken())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["preds.jsonl"]  # no temporary file left behind


GOOD = '{"qid": 1, "video_id": "v", "segments": [[0, 1, 0.5]]}'


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"qid": 1, "video_id": "v", "segments": [[0, 1, 0.5]]}', "qid 1 repeats \\(first on line 1\\)"),
        ('{"qid": "1", "video_id": "v", "segments": []}', "qid '1' repeats"),
        ('{"qid": 2, "video_id": "v", "segments": [[3, 1, 0.5]]}', "qid 2: segments\\[0\\] ends before it starts"),
        (
            '{"qid": 2, "video_id": "v", "segments": [[0, 1]]}',
            "qid 2: segments\\[0\\] must be \\[start_s, end_s, score\\]",
        ),
        ('{"qid": 2, "video_id": "v", "segments": [[0, "1", 0.2]]}', "segments\\[0\\] must be"),
        ('{"qid": 2, "video_id": "v", "segments": [[0, Infinity, 0.2]]}', "segments\\[0\\] has a non-finite number"),
        ('{"qid": 2, "video_id": "v", "segments": {"a": 1}}', "field 'segments' must be a list"),
        ('{"qid": 2, "segments": []}', "missing field 'video_id'"),
        ('{"qid": null, "video_id": "v", "segments": []}', "field 'qid' must be a string or an integer"),
        ('{"qid": 2, "video_id": "v", "segments": [', "invalid JSON"),
    ],
)
def test_faults_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "preds.jsonl"
    path.write_text(f"{GOOD}\n\n{line}\n")
    with pytest.raises(InputError, match=rf"preds\.jsonl, line 3: (qid \d: )?{message}"):
        read_predictions(path)


def test_empty_and_non_utf8_files(tmp_path: Path) -> None:
    path = tmp_path / "preds.jsonl"
    path.write_text("\n")
    with pytest.raises(InputError, match=r"preds\.jsonl: file is empty"):
        read_predictions(path)
    path.write_bytes(GOOD.encode() + b'\n{"qid": 2, "video_id": "v\xff", "segments": []}\n')
    with pytest.raises(InputError, match=r"preds\.jsonl, line 2: not UTF-8"):
        read_predictions(path)
    with pytest.raises(InputError, match="file not found"):
        read_predictions(tmp_path / "absent.jsonl")
