"""Issue 22: the recurring benchmark with incomplete annotations (omit_fraction) and its labels.jsonl."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from drn.datasets import load_split
from drn.datasets.synthetic import SyntheticBenchmark, make_recurring_benchmark
from drn.errors import InputError
from drn.store import FeatureStore
from jobs import make_synthetic_features

SPLITS = ("train", "val", "test")
LABEL_FIELDS = {"video_id", "label", "start_s", "end_s"}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def annotated(bench: SyntheticBenchmark) -> dict[str, list[dict]]:
    return {split: read_jsonl(Path(bench.annotations) / f"{split}.jsonl") for split in SPLITS}


@pytest.fixture(scope="module")
def benches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SyntheticBenchmark]:
    """The same seed written three ways: default arguments, omit_fraction=0 and omit_fraction=0.3."""
    root = tmp_path_factory.mktemp("incomplete")
    return {
        "default": make_recurring_benchmark(root / "default", num_videos=100, feature_dim=8, seed=5),
        "zero": make_recurring_benchmark(root / "zero", num_videos=100, feature_dim=8, seed=5, omit_fraction=0.0),
        "omit": make_recurring_benchmark(root / "omit", num_videos=100, feature_dim=8, seed=5, omit_fraction=0.3),
    }


def test_every_label_is_annotated_once_or_omitted(benches: dict[str, SyntheticBenchmark]) -> None:
    bench = benches["omit"]
    labels = read_jsonl(Path(bench.labels))
    assert bench.labels == str(Path(bench.annotations) / "labels.jsonl")
    assert all(set(row) == LABEL_FIELDS for row in labels)
    assert len(labels) == bench.events >= 200
    pairs = Counter()
    for rows in annotated(bench).values():
        for row in rows:
            pairs[(row["video_id"], row["query"], row["start_s"], row["end_s"])] += 1
    keys = [(row["video_id"], row["label"], row["start_s"], row["end_s"]) for row in labels]
    assert len(set(keys)) == len(keys)
    assert all(count == 1 for count in pairs.values())  # no pair in two split files, nor twice in one
    assert set(pairs) <= set(keys)  # every annotated pair is a labelled event: same video, times, query == label
    omitted = [key for key in keys if key not in pairs]
    assert len(omitted) == bench.omitted > 0
    assert sum(bench.num_pairs.values()) == bench.events - bench.omitted
    assert bench.omitted_fraction == round(bench.omitted / bench.events, 4)
    assert abs(bench.omitted_fraction - 0.3) < 0.1


def test_every_video_keeps_an_annotated_event(benches: dict[str, SyntheticBenchmark]) -> None:
    bench = benches["omit"]
    videos = {row["video_id"] for rows in annotated(bench).values() for row in rows}
    assert videos == set(FeatureStore(bench.features).ok_video_ids())
    assert len(videos) == bench.num_videos


def test_omitted_events_still_show_in_the_features(benches: dict[str, SyntheticBenchmark]) -> None:
    """The features are those of the same seed without omissions: each video still shows every event."""
    full, omit = FeatureStore(benches["zero"].features), FeatureStore(benches["omit"].features)
    assert full.ok_video_ids() == omit.ok_video_ids()
    for video_id in full.ok_video_ids():
        a, b = full.load(video_id), omit.load(video_id)
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.clip_start_s, b.clip_start_s)
    assert read_jsonl(Path(benches["zero"].labels)) == read_jsonl(Path(benches["omit"].labels))


def test_zero_omission_is_the_default_benchmark(benches: dict[str, SyntheticBenchmark]) -> None:
    default, zero = benches["default"], benches["zero"]
    for split in SPLITS:
        assert (Path(default.annotations) / f"{split}.jsonl").read_bytes() == \
            (Path(zero.annotations) / f"{split}.jsonl").read_bytes()
    assert zero.omitted == default.omitted == 0 and zero.omitted_fraction == 0.0
    assert sum(zero.num_pairs.values()) == zero.events == len(read_jsonl(Path(zero.labels)))


def test_labels_file_is_not_a_split(benches: dict[str, SyntheticBenchmark]) -> None:
    bench = benches["omit"]
    for split in SPLITS:
        loaded = load_split("jsonl", bench.annotations, split)
        assert len(loaded.pairs) == bench.num_pairs[split]
    with pytest.raises(InputError, match="unknown split 'labels'"):
        load_split("jsonl", bench.annotations, "labels")


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_fraction_is_a_one_line_error(tmp_path: Path, capsys, fraction: float) -> None:
    with pytest.raises(InputError) as raised:
        make_recurring_benchmark(tmp_path / "f", num_videos=2, feature_dim=4, omit_fraction=fraction)
    assert str(raised.value) == f"omit_fraction must be in [0, 1), not {fraction}"
    assert not (tmp_path / "f").exists()
    argv = ["--out", str(tmp_path / "cli"), "--recurring", "--omit-fraction", str(fraction)]
    assert make_synthetic_features.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --omit-fraction must be in [0, 1), not {fraction}", err
    assert not (tmp_path / "cli").exists()


def test_cli_omits_and_reports(tmp_path: Path, capsys) -> None:
    out = tmp_path / "syn"
    argv = ["--out", str(out), "--videos", "40", "--dim", "8", "--seed", "1", "--recurring", "--omit-fraction", "0.5"]
    assert make_synthetic_features.main(argv) == 0
    written = json.loads(capsys.readouterr().out)
    assert written["labels"] == str(out / "annotations" / "labels.jsonl")
    assert len(read_jsonl(Path(written["labels"]))) == written["events"]
    assert sum(written["num_pairs"].values()) == written["events"] - written["omitted"]
    assert 0.3 < written["omitted_fraction"] < 0.6
    assert make_synthetic_features.main(["--out", str(tmp_path / "plain"), "--omit-fraction", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --omit-fraction needs --recurring" and not (tmp_path / "plain").exists()


def test_training_keeps_videos_that_show_an_omitted_event_out_of_its_negatives(benches) -> None:
    """prepare_training_data finds the benchmark's labels.jsonl: a training video that shows "the red ball rises"
    without an annotation of it is never that text's negative; with use_labels=false it may be."""
    from drn.config import load_config
    from drn.training_setup import prepare_training_data

    bench = benches["omit"]
    data = {use: prepare_training_data(load_config("configs/synthetic.yaml", [
        "model.feature_dim=8", "train.negatives.per_positive=2", f"train.negatives.use_labels={str(use).lower()}"]),
        bench.features, bench.annotations, with_test=False) for use in (True, False)}
    assert data[True].labels is not None and data[False].labels is None
    with_labels, without = data[True].negatives, data[False].negatives
    assert with_labels.report.labelled > 0 and without.report.labelled == 0
    assert Path(with_labels.report.labels_source).name == "labels.jsonl"
    train_videos = {p.video_id for p in data[True].train.pairs}
    shown_not_annotated = [(row["label"], row["video_id"]) for row in read_jsonl(Path(bench.labels))
                           if row["video_id"] in train_videos and (row["label"], row["video_id"]) not in {
                               (p.query, p.video_id) for p in data[True].train.pairs}]
    checked = [(text, video) for text, video in shown_not_annotated if with_labels.key_index.get(text) is not None]
    assert checked
    for text, video in checked:
        assert with_labels.blocks(text, video)
    assert not all(without.blocks(text, video) for text, video in checked)
