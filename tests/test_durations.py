"""One duration per video: the store's timeline scales the grid and the ground truth alike; the report of how far
annotated and decoded durations differ; a store row without a duration."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from drn.config import load_config
from drn.data import GroundingDataset, load_grids, usable_pairs
from drn.datasets import load_split
from drn.durations import compare_durations, on_timeline, timeline_duration
from drn.inference import Grounder
from drn.model import DRN
from drn.pairs import GroundingPair
from drn.store import FeatureStore, FeatureStoreWriter, StoreMetadata, VideoFeatures, VideoRecord
from drn.text import Vocabulary
from jobs import inspect_dataset

SMALL = [
    "model.feature_dim=4", "model.num_segments=8", "model.lstm_hidden=4", "model.attention_dim=4",
    "model.location_dim=4", "model.level_channels=[4,4,8]", "model.fpn_channels=4", "model.iou_channels=[4,4]",
]


def test_timeline_duration_is_the_recorded_one_else_the_last_clips_end() -> None:
    assert timeline_duration(12.5, [3.0, 9.0]) == 12.5
    for missing in (None, math.nan, 0.0, -1.0):
        assert timeline_duration(missing, [3.0, 9.0, 7.0]) == 9.0
    assert math.isnan(timeline_duration(None, []))


def test_pairs_are_put_on_the_store_timeline() -> None:
    pairs = [GroundingPair(0, "a", "q", 2.0, 9.5, 10.0),   # store says 9 s: end clipped to 9
             GroundingPair(1, "a", "q", 9.5, 9.9, 10.0),   # starts after the decoded end: dropped
             GroundingPair(2, "b", "q", 1.0, 2.0, 20.0),   # store agrees: the same object
             GroundingPair(3, "c", "q", 1.0, 2.0, 20.0)]   # not in the store: unchanged
    placed = on_timeline(pairs, {"a": 9.0, "b": 20.0})
    assert placed.pairs[0] == GroundingPair(0, "a", "q", 2.0, 9.0, 9.0)
    assert placed.pairs[1:] == pairs[2:] and placed.pairs[1] is pairs[2]
    assert placed.changed == 1
    assert [qid for qid, _ in placed.dropped] == [1]
    assert "starts at 9.5 s, at or after the end of video 'a' in the feature store (9 s)" in placed.dropped[0][1]


def test_compare_durations_counts_and_measures_the_differences() -> None:
    annotated = {"a": 10.0, "b": 20.0, "c": 30.0, "d": 40.0, "e": 50.0}
    store = {"a": 10.1, "b": 21.0, "c": 27.0, "e": 50.0, "x": 5.0}  # d has no features, x no annotation
    report = compare_durations(annotated, store, tolerance=0.02)
    assert (report.videos, report.differing, report.only_annotated) == (4, 2, 1)  # b +5 %, c -10 %
    assert report.relative["max"] == pytest.approx(0.10)
    assert report.relative["median"] == pytest.approx(0.03)  # of 1 %, 5 %, 10 %, 0 %
    assert report.seconds == pytest.approx({"mean": (0.1 + 1.0 - 3.0) / 4, "min": -3.0, "max": 1.0})
    assert report.largest == [("c", 30.0, 27.0), ("b", 20.0, 21.0)]


def write_store(path: Path, duration_s: dict[str, float | None]) -> str:
    """Videos of 4-d features, one clip a second up to 10 s, with the given recorded durations."""
    meta = StoreMetadata("synthetic", "x", "none", clip_len=2, clip_stride=1, fps="1", feature_dim=4,
                         dtype="float32")
    rng = np.random.default_rng(0)
    with FeatureStoreWriter(path, meta) as writer:
        for vid, duration in duration_s.items():
            starts = np.arange(0.0, 9.0)
            writer.add_clips(vid, rng.normal(size=(len(starts), 4)).astype(np.float32), starts, starts + 2.0)
            writer.finish_video(VideoRecord(vid, f"synthetic://{vid}", duration_s=duration, num_clips=len(starts)))
    return str(path)


def test_a_store_row_without_a_duration_uses_its_last_clips_end_everywhere(tmp_path) -> None:
    store = FeatureStore(write_store(tmp_path / "store", {"timed": 10.0, "untimed": None}))
    assert store.durations() == {"timed": 10.0, "untimed": 10.0}  # the last clip ends at 8 + 2 s
    assert store.load("untimed").duration_s == 10.0

    torch.manual_seed(0)
    vocab = Vocabulary(["<pad>", "<unk>", "red"])
    grounder = Grounder(DRN(load_config(None, SMALL), torch.randn(3, 4)), load_config(None, SMALL), vocab)
    loaded = store.load("untimed")
    bare = VideoFeatures("bare", loaded.features, loaded.clip_start_s, loaded.clip_end_s, None)  # a hand-made row
    grids, ids, durations = grounder.grids([bare, store.load("timed")])  # used to be float(None)
    assert ids == ["bare", "timed"] and durations.tolist() == [10.0, 10.0]
    np.testing.assert_array_equal(grids[0], grounder.grids([loaded])[0][0])  # the grid of the 10-s timeline
    results = grounder.ground([bare], grounder.encode_queries(["red"]))
    assert results[0].segments[:, :2].max() <= 10.0


def test_training_labels_and_the_grid_share_the_store_duration(tmp_path) -> None:
    """The annotation says 20 s (as a Charades CSV length might), the decoded video is 10 s long: the moment at
    4-6 s must fall on the grid segments that hold 4-6 s of features."""
    store = FeatureStore(write_store(tmp_path / "store", {"v": 10.0}))
    folder = tmp_path / "annotations"
    folder.mkdir()
    for split in ("train", "test"):
        line = {"qid": 0, "video_id": "v", "query": "red", "start_s": 4.0, "end_s": 6.0, "duration_s": 20.0}
        (folder / f"{split}.jsonl").write_text(json.dumps(line) + "\n")
    pairs = load_split("jsonl", folder, "test").pairs
    assert pairs[0].duration_s == 20.0  # the annotation's own duration, before it meets the store
    kept = usable_pairs(pairs, store).kept
    assert kept[0].duration_s == 10.0 and (kept[0].start_s, kept[0].end_s) == (4.0, 6.0)
    config = load_config(None, SMALL)
    grids = load_grids(store, ["v"], config.model.num_segments)
    item = GroundingDataset(kept, grids, Vocabulary(["<pad>", "<unk>", "red"]), config)[0]
    assert item["gt"].tolist() == pytest.approx([3.2, 4.8])  # 4 s and 6 s of a 10-s grid of 8 segments
    assert item["duration"] == 10.0  # predictions go back to seconds with the same number


def test_inspect_dataset_reports_durations_that_differ_from_the_store(tmp_path, capsys) -> None:
    store = write_store(tmp_path / "store", {"a": 10.0, "b": 10.0, "c": 10.0})
    folder = tmp_path / "annotations"
    folder.mkdir()
    lines = [{"video_id": v, "query": "red", "start_s": 1.0, "end_s": 2.0, "duration_s": d}
             for v, d in (("a", 10.1), ("b", 12.5), ("c", 9.0), ("gone", 30.0))]
    (folder / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    args = ["--dataset", "jsonl", "--annotations", str(folder), "--split", "train", "--features", store]
    assert inspect_dataset.main(args) == 0
    text = capsys.readouterr().out
    assert f"durations against the feature store {store}: 3 videos in both, 1 without features" in text
    assert "2 of 3 differ by more than 2%" in text
    assert "b: annotated 12.50 s, store 10.00 s (-20.0%)" in text and "c: annotated 9.00 s" in text
    assert inspect_dataset.main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["durations_vs_store"]
    assert (report["videos"], report["differing"], report["only_annotated"]) == (3, 2, 1)
    assert report["relative"]["max"] == pytest.approx(0.2)
