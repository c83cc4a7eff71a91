"""Arguments that are a path or a list, in every job: a list of 300 ids is taken where a list is, and is a one-line
error (never a traceback) where a path is expected."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

from drn.checkpoint import save_checkpoint
from drn.config import load_config
from drn.model import DRN
from drn.store import FeatureStore, FeatureStoreWriter, StoreMetadata, VideoRecord
from drn.text import Vocabulary
from moments.index import Index
from moments.library import select_videos

IDS = [f"video{i:04d}" for i in range(300)]
LONG = ",".join(IDS)  # 2,999 characters: far beyond a file name's 255
SMALL = [
    "model.feature_dim=8", "model.num_segments=4", "model.lstm_hidden=4", "model.attention_dim=4",
    "model.location_dim=4", "model.level_channels=[4,4,8]", "model.fpn_channels=4", "model.iou_channels=[4,4]",
    "decode.top_per_level=2",
]


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> dict[str, str]:
    """300 tiny videos (3 clips of 8-d features each) in shards of 64, a tiny checkpoint, one query."""
    root = tmp_path_factory.mktemp("long")
    meta = StoreMetadata("synthetic", "x", "none", clip_len=2, clip_stride=1, fps="1", feature_dim=8,
                         dtype="float32")
    rng = np.random.default_rng(0)
    with FeatureStoreWriter(root / "features", meta, videos_per_shard=64) as writer:
        for vid in reversed(IDS):  # shard order differs from id order
            starts = np.arange(3.0)
            writer.add_clips(vid, rng.normal(size=(3, 8)).astype(np.float32), starts, starts + 2.0)
            writer.finish_video(VideoRecord(vid, f"synthetic://{vid}", duration_s=4.0, num_clips=3))
    torch.manual_seed(0)
    vocab = Vocabulary(["<pad>", "<unk>", "the", "red", "event"])
    save_checkpoint(root / "model.pt", DRN(load_config(None, SMALL), torch.randn(len(vocab), 4)).eval(), vocab,
                    stage=1)
    (root / "queries.txt").write_text("the red event\n")
    (root / "ids.txt").write_text("\n".join(IDS) + "\n")
    return {"root": str(root), "features": str(root / "features"), "checkpoint": str(root / "model.pt"),
            "queries": str(root / "queries.txt"), "ids": str(root / "ids.txt")}


def test_a_300_id_list_selects_the_same_videos_as_a_file_of_them(library) -> None:
    store = FeatureStore(library["features"])
    listed = select_videos(store, LONG)
    assert sorted(listed) == IDS
    assert listed == select_videos(store, library["ids"]) == select_videos(store, IDS) == select_videos(store, None)
    with pytest.raises(Exception, match=r"2 requested video\(s\) are not ok videos .*: nope1, nope2"):
        select_videos(store, LONG + ",nope1,nope2")


@pytest.mark.slow
def test_jobs_ground_takes_a_300_id_videos_list(ray_session, library, tmp_path, capsys) -> None:
    from jobs import ground

    db = str(tmp_path / "db")
    code = ground.main(["--checkpoint", library["checkpoint"], "--features", library["features"], "--queries",
                        library["queries"], "--db", db, "--videos", LONG, "--top-k", "1", "--keep-per-query", "all",
                        "--videos-per-batch", "64", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert "videos: 300 selected, 0 already done, 300 grounded, 0 failed" in capsys.readouterr().out
    assert sorted(set(Index(db).to_pandas()["video_id"])) == IDS


def path_cases(library: dict[str, str]) -> list[tuple[str, list[str], str]]:
    """(job, argv, flag): every argument that is a path (or a list of paths), given the 300-id list instead."""
    lib, store, ckpt, queries = library["root"], library["features"], library["checkpoint"], library["queries"]
    annotations = str(Path(__file__).resolve().parents[1] / "configs")  # any existing folder will do
    return [
        ("extract", ["--videos", LONG, "--out", f"{lib}/x", "--weights", "random"], "--videos"),
        ("extract", ["--videos", lib, "--out", LONG, "--weights", "random"], None),
        ("extract", ["--videos", lib, "--out", f"{lib}/x", "--weights", LONG], None),
        ("ground", ["--checkpoint", LONG, "--features", store, "--queries", queries], None),
        ("ground", ["--checkpoint", ckpt, "--features", LONG, "--queries", queries], "--features"),
        ("ground", ["--checkpoint", ckpt, "--features", store, "--queries", LONG], "--queries"),
        ("ground", ["--checkpoint", ckpt, "--features", store, "--queries", queries, "--db", LONG], None),
        ("search", ["a red event", "--db", LONG], "--db"),
        ("search", ["a red event", "--exhaustive", "--checkpoint", ckpt, "--features", LONG], "--features"),
        ("search", ["a red event", "--exhaustive", "--checkpoint", LONG, "--features", store], None),
        ("search", ["a red event", "--live", "--checkpoint", LONG, "--db", lib], None),
        ("evaluate", ["--dataset", "jsonl", "--annotations", LONG, "--predictions", "p.jsonl"], "--annotations"),
        ("evaluate", ["--dataset", "jsonl", "--annotations", annotations, "--predictions", LONG], None),
        ("evaluate", ["--dataset", "jsonl", "--annotations", annotations, "--predictions", "p.jsonl",
                      "--durations", LONG], None),
        ("evaluate", ["--annotations", annotations, "--checkpoint", LONG, "--features", store], None),
        ("inspect_dataset", ["--dataset", "jsonl", "--annotations", LONG], "--annotations"),
        ("inspect_dataset", ["--dataset", "jsonl", "--annotations", annotations, "--features", LONG], None),
        ("baseline", ["--dataset", "jsonl", "--annotations", LONG, "--out", f"{lib}/b"], "--annotations"),
        ("baseline", ["--dataset", "jsonl", "--annotations", annotations, "--out", LONG], None),
        ("train", ["--config", LONG, "--features", store, "--annotations", lib], "--config"),
        ("train", ["--config", "configs/synthetic.yaml", "--features", LONG, "--annotations", lib], "--features"),
        ("train", ["--config", "configs/synthetic.yaml", "--features", store, "--annotations", LONG], None),
        ("import_features", ["--npy", LONG, "--out", f"{lib}/i", "--fps", "25"], "--npy"),
        ("import_features", ["--hdf5", LONG, "--out", f"{lib}/i", "--fps", "25"], None),
        ("make_synthetic", ["--out", f"{lib}/{LONG}"], "--out"),
        ("demo", ["--out", LONG], "--out"),
        ("demo", ["--out", f"{lib}/demo", "--config", LONG], None),
        ("demo", ["--out", f"{lib}/demo", "--weights", LONG], None),
    ]


def test_every_path_argument_given_a_300_id_list_is_a_one_line_error(library, capsys) -> None:
    failures = []
    for job, argv, flag in path_cases(library):
        main = importlib.import_module(f"jobs.{job}").main
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        ok = code == 2 and len(err) == 1 and err[0].startswith("error: ") and len(err[0]) < 400
        ok = ok and (flag is None or err[0].startswith(f"error: {flag} "))  # names the flag where it can
        if not ok:
            failures.append(f"jobs.{job} {argv[:2]}...: exit {code}, stderr {err[-3:]}")
    assert failures == []


def test_the_message_names_the_flag_in_both_spellings_and_shortens_the_value() -> None:
    from jobs.cli import too_long_message

    error = OSError(36, "File name too long")
    for argv in (["--videos", LONG], [f"--videos={LONG}"]):
        message = too_long_message(argv, error)
        assert message.startswith("--videos video0000,video0001,") and "(2999 characters)" in message
        assert len(message) < 200
    assert too_long_message(["short"], error).startswith("a path is too long for the file system")
