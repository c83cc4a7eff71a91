"""Library-wide grounding into LanceDB on real Ray Data: schema, reruns, resumption, live grounding, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest
import torch

from drn.checkpoint import save_checkpoint
from drn.config import load_config
from drn.errors import InputError
from drn.inference import Grounder
from drn.model import DRN
from drn.store import FeatureStore, FeatureStoreWriter, StoreMetadata, VideoFeatures, VideoRecord
from drn.text import Vocabulary
from moments.index import ROW_KEY, Index, segments_schema
from moments.library import Resources, WindowOptions, ground_every_video, run_grounding
from moments.library.queries import read_queries
from moments.library.windows import WindowRule, cut_windows, merge_windows, window_rule

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "model.feature_dim=16", "model.num_segments=8", "model.lstm_hidden=8", "model.attention_dim=8",
    "model.location_dim=4", "model.level_channels=[8,8,16]", "model.fpn_channels=8", "model.iou_channels=[8,4]",
    "text.max_words=6", "decode.top_per_level=4",
]
WORDS = ["the", "red", "blue", "green", "event", "after", "before", "door"]
QUERIES = ["the red event", "the blue event after red", "", "The  red event", "green door",
           "the red event after the blue event"]  # 7 words: too long for text.max_words=6
DURATIONS = {"v0": 12.0, "v1": 25.0, "v2": 31.5, "v3": 18.0, "v4": 40.0, "long": 150.0}
WINDOWS = WindowOptions(window_s=20.0, max_whole_s=45.0)  # "long" is grounded in 14 windows of 20 s
FAST = Resources(num_actors=1, videos_per_batch=2, pair_batch_size=64)


def write_store(path: Path, dim: int = 16, broken: bool = False) -> str:
    rng = np.random.default_rng(3)
    meta = StoreMetadata("synthetic", "x", "none", clip_len=2, clip_stride=1, fps="1", feature_dim=dim,
                         dtype="float32")
    with FeatureStoreWriter(path, meta, videos_per_shard=4) as writer:
        for vid, duration in DURATIONS.items():
            starts = np.arange(0.0, duration - 1.0, 1.0)
            writer.add_clips(vid, rng.normal(size=(len(starts), dim)).astype(np.float32), starts, starts + 2.0)
            writer.finish_video(VideoRecord(vid, f"synthetic://{vid}", duration_s=duration, num_clips=len(starts)))
        if broken:  # marked ok, but no clips: it cannot be loaded, and must not stop the job
            writer.finish_video(VideoRecord("empty", "synthetic://empty", duration_s=10.0, num_clips=0))
    return str(path)


def write_checkpoint(path: Path, dim: int = 16) -> str:
    torch.manual_seed(0)
    config = load_config(None, [*SMALL, f"model.feature_dim={dim}"])
    vocab = Vocabulary(["<pad>", "<unk>", *WORDS])
    model = DRN(config, torch.randn(len(vocab), 5)).eval()
    save_checkpoint(path, model, vocab, stage=1)
    return str(path)


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("library")
    queries = root / "queries.txt"
    queries.write_text("\n".join(QUERIES) + "\n")
    return {"root": str(root), "checkpoint": write_checkpoint(root / "model.pt"),
            "features": write_store(root / "features", broken=True), "queries": str(queries)}


def rows_of(uri: str) -> pa.Table:
    frame = Index(uri).to_pandas(with_embedding=True)
    frame["query_embedding"] = frame["query_embedding"].map(lambda v: tuple(np.round(v, 6)))
    return frame.sort_values(list(ROW_KEY)).reset_index(drop=True)


@pytest.fixture(scope="module")
def grounded(library, ray_session, tmp_path_factory) -> dict:
    db = str(tmp_path_factory.mktemp("db") / "lancedb")
    summary = run_grounding(library["checkpoint"], library["features"], library["queries"], db, top_k=3,
                            windows=WINDOWS, resources=FAST, write_batch_rows=40)
    return {"db": db, "summary": summary, "frame": rows_of(db)}


def test_query_collections_drop_and_report_blank_and_repeated_queries(tmp_path) -> None:
    collection = read_queries(_text(tmp_path, QUERIES))
    assert collection.texts[:3] == ["the red event", "the blue event after red", "green door"]
    assert collection.ids == ["0", "1", "4", "5"]  # line numbers, counted before cleaning
    assert [line for line, _ in collection.dropped] == [3, 4]
    assert "repeats line 1" in collection.report()
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text('{"query_id": "a", "query": "the red event"}\n\n{"query_id": 7, "query": "green door"}\n')
    assert read_queries(jsonl).ids == ["a", "7"]
    jsonl.write_text('{"query_id": "a", "query": "the red event"}\n{"query_id": "a", "query": "a door"}\n')
    with pytest.raises(InputError, match=r"q.jsonl, line 2: query_id 'a' is used again"):
        read_queries(jsonl)
    jsonl.write_text('{"query": "the red event"}\n')
    with pytest.raises(InputError, match=r"line 1: missing field 'query_id'"):
        read_queries(jsonl)
    with pytest.raises(InputError, match="holds no query"):
        read_queries(_text(tmp_path, ["", "  "]))


def _text(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "queries.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_window_rule_cuts_long_videos_and_merges_back_to_absolute_seconds() -> None:
    rule = WindowRule(window_s=20.0, stride_s=10.0, max_whole_s=45.0)
    assert rule.spans(30.0) == [(0.0, 30.0)]
    spans = rule.spans(95.0)
    assert spans[0] == (0.0, 20.0) and spans[-1] == (75.0, 95.0) and len(spans) == 9
    assert all(b[0] - a[0] <= 10.0 for a, b in zip(spans, spans[1:], strict=False))
    starts = np.arange(0.0, 94.0, 1.0)
    video = VideoFeatures("v", np.arange(len(starts) * 2, dtype=np.float32).reshape(-1, 2), starts, starts + 2, 95.0)
    windows = cut_windows(video, rule)
    assert [w.offset_s for w in windows] == [s for s, _ in spans]
    assert windows[3].features.features[0, 0] == video.features[29, 0]  # clip 29 has its centre at 30 s
    parts = [(30.0, np.array([[2.0, 6.0, 0.9, 0.9, 1.0]])),
             (40.0, np.array([[0.0, 1.0, 0.4, 0.4, 1.0], [-8.0, -4.0, 0.3, 0.3, 1.0]])),  # clipped to [0, 95]
             (40.0, np.array([[0.0, 0.5, 0.5, 0.5, 1.0]]))]
    merged = merge_windows(parts, 95.0, 0.5, top_k=5)
    np.testing.assert_allclose(merged[:, :3], [[32.0, 36.0, 0.9], [40.0, 40.5, 0.5], [40.0, 41.0, 0.4]])
    config = load_config(None, ["name=charades_sta"])
    assert window_rule(config).window_s == 30.6
    assert window_rule(config, {"train_duration_s": {"median": 50, "p95": 70}}).max_whole_s == 70
    assert window_rule(config, window_s=12.0).stride_s == 6.0
    with pytest.raises(InputError, match="stride"):
        WindowRule(10.0, 20.0, 30.0)


@pytest.mark.slow
def test_written_table_has_the_schema_and_every_query_video_top_k(grounded, library) -> None:
    summary, frame = grounded["summary"], grounded["frame"]
    table = lancedb.connect(grounded["db"]).open_table("segments")
    assert [(f.name, f.type) for f in table.schema] == [(f.name, f.type) for f in segments_schema()]
    assert summary.queries == 3 and summary.videos_total == len(DURATIONS) + 1
    assert summary.videos_done == len(DURATIONS) and summary.videos_failed == 1
    assert summary.failures[0][0] == "empty" and "no clips" in summary.failures[0][1]
    assert [line for line, _ in summary.dropped_queries] == [3, 4, 6]
    assert "more than the encoder's limit" in summary.dropped_queries[2][1]
    assert summary.rows_written == len(frame)
    pairs = frame.groupby(["query_id", "video_id"])
    assert pairs.ngroups == 3 * len(DURATIONS)
    for (_, video_id), rows in pairs:
        assert list(rows["rank"]) == list(range(len(rows))) and 1 <= len(rows) <= 3
        assert (np.diff(rows["score"].to_numpy()) <= 1e-7).all()
        assert (rows["start_s"] >= 0).all() and (rows["end_s"] <= DURATIONS[video_id] + 1e-6).all()
    check_long_video_rows(frame[frame["video_id"] == "long"], library)
    for _, rows in frame.groupby("query_id"):
        ordered = rows.sort_values("library_rank")
        assert sorted(rows["library_rank"]) == list(range(len(rows)))
        assert (np.diff(ordered["score"].to_numpy()) <= 1e-7).all()
    assert set(frame["query_text"]) == {"the red event", "the blue event after red", "green door"}
    assert frame["run_id"].nunique() == 1 and frame["run_id"].iloc[0].startswith("run-")
    assert frame["checkpoint_id"].iloc[0].startswith("model-")


def check_long_video_rows(rows, library) -> None:
    """The long video's rows are its 20-s windows grounded one by one, shifted to absolute seconds, NMS-merged."""
    grounder = Grounder.from_checkpoint(library["checkpoint"])
    video = FeatureStore(library["features"]).load("long")
    rule = window_rule(grounder.config, window_s=WINDOWS.window_s, max_whole_s=WINDOWS.max_whole_s)
    windows = cut_windows(video, rule)
    assert len(windows) == 14 and windows[-1].offset_s == 130.0
    texts = rows.sort_values("query_id")["query_text"].unique().tolist()
    results = grounder.ground([w.features for w in windows], grounder.encode_queries(texts))
    for q, text in enumerate(texts):
        parts = [(w.offset_s, r.segments) for w, r in zip(windows, results[q * 14:(q + 1) * 14], strict=True)]
        expected = merge_windows(parts, 150.0, grounder.config.decode.nms_threshold, top_k=3)
        got = rows[rows["query_text"] == text].sort_values("rank")
        np.testing.assert_allclose(got[["start_s", "end_s", "score"]], expected[:, :3], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_rerunning_the_same_job_changes_nothing(grounded, library) -> None:
    again = run_grounding(library["checkpoint"], library["features"], library["queries"], grounded["db"], top_k=3,
                          windows=WINDOWS, resources=FAST)
    assert again.run_id == grounded["summary"].run_id
    assert again.videos_skipped == len(DURATIONS) and again.videos_done == 0
    redone = run_grounding(library["checkpoint"], library["features"], library["queries"], grounded["db"], top_k=3,
                           windows=WINDOWS, resources=FAST, overwrite=True)  # deletes the run, grounds it all again
    assert redone.videos_done == len(DURATIONS)
    after = rows_of(grounded["db"])
    assert len(after) == len(grounded["frame"])
    pa_equal = after.drop(columns=["score", "match_score", "iou_score", "start_s", "end_s"]).equals(
        grounded["frame"].drop(columns=["score", "match_score", "iou_score", "start_s", "end_s"]))
    assert pa_equal
    for column in ("score", "match_score", "iou_score", "start_s", "end_s"):
        np.testing.assert_allclose(after[column], grounded["frame"][column], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_job_killed_half_way_and_resumed_has_every_key_once(grounded, library, tmp_path) -> None:
    db = str(tmp_path / "lancedb")
    job = dict(top_k=3, windows=WINDOWS, resources=FAST, write_batch_rows=25)
    with pytest.raises(RuntimeError, match="fail_after_writes"):
        run_grounding(library["checkpoint"], library["features"], library["queries"], db, fail_after_writes=1, **job)
    partial = Index(db).count()
    assert 0 < partial < len(grounded["frame"])
    resumed = run_grounding(library["checkpoint"], library["features"], library["queries"], db, **job)
    assert 0 < resumed.videos_skipped < len(DURATIONS)
    frame = rows_of(db)
    assert not frame.duplicated(list(ROW_KEY)).any()
    pd_cols = [c for c in frame.columns if c not in ("score", "match_score", "iou_score", "start_s", "end_s")]
    assert frame[pd_cols].equals(grounded["frame"][pd_cols])
    np.testing.assert_allclose(frame["score"], grounded["frame"]["score"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_ground_live_agrees_with_the_batch_job(grounded, library, tmp_path) -> None:
    batch = grounded["frame"]
    text = "the blue event after red"
    expected = batch[batch["query_text"] == text].sort_values("library_rank")
    live = ground_every_video(text, library["checkpoint"], library["features"], k=1000, top_k=3, windows=WINDOWS)
    assert live.column_names[0] == "result_rank" and live.num_rows == len(expected)
    got = live.to_pandas()
    assert list(got["video_id"]) == list(expected["video_id"]) and list(got["rank"]) == list(expected["rank"])
    np.testing.assert_allclose(got[["start_s", "end_s", "score"]], expected[["start_s", "end_s", "score"]],
                               rtol=1e-5, atol=1e-5)
    db = str(tmp_path / "live-db")
    on_ray = ground_every_video(text, library["checkpoint"], library["features"], k=5, top_k=3, windows=WINDOWS,
                         resources=FAST, in_process_max_videos=0, save=True, db=db, min_score=0.0)
    np.testing.assert_allclose(on_ray.to_pandas()[["start_s", "end_s", "score"]],
                               expected[["start_s", "end_s", "score"]].head(5), rtol=1e-5, atol=1e-5)
    saved = Index(db).to_pandas()
    assert len(saved) == len(expected) and saved["run_id"].iloc[0].startswith("live-model-")
    assert sorted(saved["library_rank"]) == list(range(len(saved)))
    only = ground_every_video(text, library["checkpoint"], library["features"], k=3, videos="v1,long", windows=WINDOWS)
    assert set(only.column("video_id").to_pylist()) <= {"v1", "long"} and only.num_rows == 3


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.ground", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_cli_resumes_a_run_stopped_after_some_videos(library, ray_session, tmp_path) -> None:
    db = str(tmp_path / "db")
    first = run_grounding(library["checkpoint"], library["features"], library["queries"], db, top_k=2,
                          windows=WINDOWS, resources=FAST, videos="v0,v1,v2,long", max_videos=2)
    assert first.videos_done == 2 and Index(db).count() > 0
    env = {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}  # join the session's Ray: faster
    result = cli("--checkpoint", library["checkpoint"], "--features", library["features"], "--queries",
                 library["queries"], "--db", db, "--top-k", "2", "--window-s", "20", "--max-whole-s", "45",
                 "--no-progress", "--videos", "v0,v1,v2,long", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 query line(s) skipped" in result.stdout and "repeats line 1" in result.stdout
    assert "line 6: query 5: the query has 7 words" in result.stdout
    assert f"run {first.run_id} " in result.stdout
    assert "4 selected, 2 already done, 2 grounded, 0 failed" in result.stdout and "pairs/s" in result.stdout
    frame = Index(db).to_pandas()
    assert frame.groupby(["query_id", "video_id"]).ngroups == 3 * 4
    assert not frame.duplicated(list(ROW_KEY)).any()
    with pytest.raises(InputError, match="not ok videos of the feature store: nope"):
        run_grounding(library["checkpoint"], library["features"], library["queries"], db, videos=["v1", "nope"])


@pytest.mark.slow
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(library, tmp_path) -> None:
    base = ["--checkpoint", library["checkpoint"], "--features", library["features"], "--queries", library["queries"]]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    other_db = tmp_path / "other"
    lancedb.connect(other_db).create_table("segments", pa.table({"video_id": ["x"], "caption": ["y"]}))
    wide = write_store(tmp_path / "wide", dim=24)
    cases = [
        (["--checkpoint", library["checkpoint"], "--features", library["features"], "--queries", str(empty)],
         "empty.txt: the query collection holds no query"),
        ([*base[:2], "--features", wide, *base[4:], "--db", str(tmp_path / "db")],
         "features are 24-d but the model expects 16-d"),
        ([*base, "--db", str(blocker / "db")], "not writable"),
        ([*base, "--db", str(other_db)], "exists with another schema"),
    ]
    for args, message in cases:
        result = cli(*args)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr
    table = lancedb.connect(other_db).open_table("segments")
    assert table.schema.names == ["video_id", "caption"] and table.count_rows() == 1
    assert not (tmp_path / "db").exists() or Index(tmp_path / "db").count() == 0
    help_text = cli("--help")
    assert help_text.returncode == 0 and "--window-s" in help_text.stdout and "--num-gpus-per-actor" in help_text.stdout
