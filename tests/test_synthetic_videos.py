"""The synthetic library: deterministic, valid annotations, and videos that show what the annotations say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jobs import make_synthetic
from pipeline.decode import VideoDecoder
from pipeline.synthetic import BACKGROUND, COLORS, make_library

SMALL = dict(num_videos=4, min_duration_s=7.0, max_duration_s=9.0, fps=10.0, width=96, height=72)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _frames(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_same_seed_same_library_and_valid_annotations(tmp_path: Path) -> None:
    first = make_library(tmp_path / "a", seed=3, **SMALL)
    make_library(tmp_path / "b", seed=3, **SMALL)
    make_library(tmp_path / "c", seed=4, **SMALL)
    assert first["videos"] == 4 and first["codec"] in ("libx264", "mpeg4")
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "events.jsonl"):
        assert (tmp_path / "a/annotations" / name).read_text() == (tmp_path / "b/annotations" / name).read_text()
    for video in sorted((tmp_path / "a/videos").iterdir()):  # the same pictures (x264 may vary a byte or two)
        first_frames, second_frames = _frames(video), _frames(tmp_path / "b/videos" / video.name)
        assert len(first_frames) == len(second_frames) > 0
        assert all(np.array_equal(x, y) for x, y in zip(first_frames, second_frames, strict=True))
    events_a, events_c = (tmp_path / "a/annotations/events.jsonl"), (tmp_path / "c/annotations/events.jsonl")
    assert events_a.read_text() != events_c.read_text()

    split_of = {}
    for split in ("train", "val", "test"):
        rows = _read(tmp_path / "a/annotations" / f"{split}.jsonl")
        assert [r["qid"] for r in rows] == list(range(len(rows)))
        for r in rows:
            assert set(r) == {"video_id", "query", "start_s", "end_s", "duration_s", "qid"}
            assert 0 <= r["start_s"] < r["end_s"] <= r["duration_s"]
            assert split_of.setdefault(r["video_id"], split) == split  # a video's queries stay in one split
    assert set(split_of.values()) == {"train", "val", "test"} and len(split_of) == 4
    events = _read(tmp_path / "a/annotations/events.jsonl")
    by_video: dict[str, list[dict]] = {}
    for e in events:
        by_video.setdefault(e["video_id"], []).append(e)
    for evs in by_video.values():
        assert len({(e["color"], e["shape"]) for e in evs}) == len(evs)
        assert all(a["vanish_s"] < b["appear_s"] for a, b in zip(evs, evs[1:], strict=False))


def test_videos_show_the_annotated_shapes_at_their_times(tmp_path: Path) -> None:
    make_library(tmp_path, seed=5, **SMALL)
    events = _read(tmp_path / "annotations/events.jsonl")
    queries = [r for s in ("train", "val", "test") for r in _read(tmp_path / "annotations" / f"{s}.jsonl")]
    assert any("moves" in q["query"] or "grows" in q["query"] for q in queries)
    assert any(" appears after the " in q["query"] for q in queries)
    checked = 0
    for video in sorted((tmp_path / "videos").glob("*.mp4")):
        decoder = VideoDecoder(str(video))
        frames = np.concatenate([b.frames for b in decoder.blocks()])
        starts = np.arange(len(frames)) / 10.0
        evs = [e for e in events if e["video_id"] == video.stem]
        quiet = starts < evs[0]["appear_s"] - 0.15
        if quiet.any():  # before the first event: only the background
            assert np.abs(frames[quiet].astype(int) - BACKGROUND).max() < 40
        for e in evs:
            inside = (starts > e["appear_s"] + 0.15) & (starts < e["vanish_s"] - 0.25)
            for frame in frames[inside]:
                colour = np.array(COLORS[e["color"]])
                share = (np.abs(frame.astype(int) - colour).max(axis=-1) < 60).mean()
                assert share > 0.02, (video.stem, e)  # the shape is large and in its colour
                checked += 1
    assert checked > 20


def test_cli_writes_a_library(tmp_path: Path, capsys) -> None:
    code = make_synthetic.main(["--out", str(tmp_path), "--videos", "2", "--seed", "1", "--min-duration", "2",
                                "--max-duration", "3", "--fps", "8", "--width", "64", "--height", "48"])
    assert code == 0 and len(list((tmp_path / "videos").glob("*.mp4"))) == 2
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") :])["queries"]["test"] >= 1
    assert make_synthetic.main(["--out", str(tmp_path), "--videos", "0"]) == 2
