"""jobs.make_synthetic_features: the feature-level benchmark from the command line (its argparse lives in jobs/)."""

from __future__ import annotations

import json
from pathlib import Path

from drn.store import FeatureStore
from jobs import make_synthetic_features


def test_cli_writes_the_benchmark_and_its_recurring_variant(tmp_path: Path, capsys) -> None:
    for name, extra, prefix in (("plain", [], "syn"), ("recurring", ["--recurring"], "rec")):
        out = tmp_path / name
        assert make_synthetic_features.main(["--out", str(out), "--videos", "10", "--dim", "8", "--seed", "2",
                                             *extra]) == 0
        written = json.loads(capsys.readouterr().out)
        assert written["features"] == str(out / "features") and written["num_videos"] == 10
        store = FeatureStore(written["features"])
        assert store.metadata.feature_dim == 8 and len(store.ok_video_ids()) == 10
        assert all(video.startswith(prefix) for video in store.ok_video_ids())
        pairs = sum(len((out / "annotations" / f"{split}.jsonl").read_text().splitlines())
                    for split in ("train", "val", "test"))
        assert pairs == sum(written["num_pairs"].values()) > 0
        assert written["omitted"] == 0 and written["events"] > 0
        labels = out / "annotations" / "labels.jsonl"
        assert written["labels"] == (str(labels) if extra else None) and labels.exists() == bool(extra)


def test_bad_input_is_one_line_and_exit_status_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("not a folder")
    for argv, message in ((["--out", str(tmp_path / "x"), "--videos", "0", "--dim", "0"],
                           "--videos must be at least 1, not 0; --dim must be at least 1, not 0"),
                          (["--out", str(tmp_path / "file" / "out")], "the output folder is not writable"),
                          (["--out", "s3://bucket/syn"], "--out must be a local folder")):
        assert make_synthetic_features.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x").exists()
