"""Library-wide grounding into LanceDB on real Ray Data: schema, reruns, resumption, live grounding, bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest
import torch
from test_live_search import SMALL as RETRIEVAL_SMALL
from test_live_search import WORDS as RETRIEVAL_WORDS
from test_live_search import write_library

from drn.checkpoint import save_checkpoint
from drn.config import load_config
from drn.errors import InputError
from drn.inference import Grounder
from drn.model import DRN
from drn.retrieval_training import train_retrieval
from drn.store import FeatureStore, FeatureStoreWriter, StoreMetadata, VideoFeatures, VideoRecord
from drn.text import Vocabulary
from drn.training import fit, stages_from_config
from drn.training_setup import prepare_training_data
from jobs import ground as ground_job
from moments.index import ROW_KEY, Index, segments_schema
from moments.index.run_videos import RUN_VIDEOS_TABLE, RunVideos
from moments.index.runs import read_runs
from moments.library import Resources, WindowOptions, ground_every_video, run_grounding
from moments.library.cell_indexing import run_index_library
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
    assert "mode: exhaustive, every query x every video (no 'cells' table in " in result.stdout
    assert "M = 100 moments kept per query" in result.stdout and "grounded 6 (query, video) pairs" in result.stdout
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


# --- candidate-driven grounding and bounded rows (issue 19) ------------------------------------------------------

FLOATS = ["start_s", "end_s", "score", "match_score", "iou_score"]
RETRIEVAL_JOB = dict(top_k=3, resources=Resources(num_actors=1, videos_per_batch=4, pair_batch_size=64),
                     keep_per_query=None)


def frame_of(uri: str, run_id: str | None = None):
    """A run's rows (or every row), sorted by their key."""
    return Index(uri).to_pandas(run_id=run_id).sort_values(list(ROW_KEY)).reset_index(drop=True)


def assert_same_rows(got, expected, ignore: tuple[str, ...] = ()) -> None:
    """The same keys, ranks and texts; the same seconds and scores up to float noise."""
    key = [c for c in ROW_KEY if c not in ignore]
    got = got.sort_values(key).reset_index(drop=True)
    expected = expected.sort_values(key).reset_index(drop=True)
    exact = [c for c in got.columns if c not in FLOATS and c not in ignore]
    assert len(got) == len(expected)
    assert got[exact].equals(expected[exact])
    np.testing.assert_allclose(got[FLOATS].to_numpy(np.float64), expected[FLOATS].to_numpy(np.float64),
                               rtol=1e-5, atol=1e-5)


def write_videos(path: Path, names: list[str]) -> str:
    """The videos ``names`` of DURATIONS into the store at ``path`` (a new shard when the store exists)."""
    meta = StoreMetadata("synthetic", "x", "none", clip_len=2, clip_stride=1, fps="1", feature_dim=16,
                         dtype="float32")
    with FeatureStoreWriter(path, meta, videos_per_shard=4) as writer:
        for vid in names:
            rng = np.random.default_rng(sum(map(ord, vid)))
            starts = np.arange(0.0, DURATIONS[vid] - 1.0, 1.0)
            writer.add_clips(vid, rng.normal(size=(len(starts), 16)).astype(np.float32), starts, starts + 2.0)
            writer.finish_video(VideoRecord(vid, f"synthetic://{vid}", duration_s=DURATIONS[vid],
                                            num_clips=len(starts)))
    return str(path)


@pytest.mark.slow
def test_keep_per_query_bounds_the_rows_to_each_querys_best(grounded, library, tmp_path) -> None:
    db = str(tmp_path / "db")
    summary = run_grounding(library["checkpoint"], library["features"], library["queries"], db, top_k=3,
                            windows=WINDOWS, resources=FAST, write_batch_rows=10, keep_per_query=2)
    frame, unbounded = frame_of(db), grounded["frame"]
    assert (summary.mode, summary.candidates, summary.keep_per_query) == ("exhaustive", 0, 2)
    assert "no 'cells' table" in summary.mode_reason and summary.pairs == 3 * len(DURATIONS)
    assert len(frame) == summary.rows_in_run == 3 * 2
    assert summary.rows_written < len(unbounded)  # rows that could not enter their query's best 2 were never written
    assert summary.rows_dropped == len(unbounded) - len(frame)
    assert summary.run_id != grounded["summary"].run_id  # M is part of the run
    expected = unbounded[unbounded["library_rank"] < 2][frame.columns]
    assert_same_rows(frame, expected, ignore=("run_id",))
    record = read_runs(db)[summary.run_id]
    assert (record.mode, record.candidates, record.keep_per_query) == ("exhaustive", 0, 2)


@pytest.mark.slow
def test_a_grown_library_reranks_like_a_clean_run(library, ray_session, tmp_path) -> None:
    store, names = tmp_path / "features", list(DURATIONS)
    write_videos(store, names[:3])
    one = Resources(num_actors=1, videos_per_batch=1, pair_batch_size=256)  # each video computed alike in both runs
    job = dict(top_k=3, windows=WINDOWS, resources=one, keep_per_query=4, write_batch_rows=10)
    grown = str(tmp_path / "grown")
    first = run_grounding(library["checkpoint"], str(store), library["queries"], grown, **job)
    write_videos(store, names[3:])  # the library grows: a new shard
    again = run_grounding(library["checkpoint"], str(store), library["queries"], grown, **job)
    assert again.run_id == first.run_id and (again.videos_skipped, again.videos_done) == (3, 3)
    clean = str(tmp_path / "clean")
    run_grounding(library["checkpoint"], str(store), library["queries"], clean, **job)
    got = frame_of(grown)
    assert len(got) == 3 * 4 and not got.duplicated(list(ROW_KEY)).any()
    assert set(got["video_id"]) & set(names[3:])  # new videos entered the best 4
    for _, rows in got.groupby("query_id"):
        assert sorted(rows["library_rank"]) == [0, 1, 2, 3]
    assert_same_rows(got, frame_of(clean))


@pytest.mark.slow
def test_a_run_written_before_run_videos_resumes_from_its_rows(library, ray_session, tmp_path) -> None:
    db = str(tmp_path / "db")
    job = dict(top_k=2, windows=WINDOWS, resources=FAST, videos="v0,v1,v2", keep_per_query=None)
    first = run_grounding(library["checkpoint"], library["features"], library["queries"], db, max_videos=2, **job)
    assert len(RunVideos(db).done(first.run_id)) == 2
    lancedb.connect(db).drop_table(RUN_VIDEOS_TABLE)  # as an index written before the table existed
    resumed = run_grounding(library["checkpoint"], library["features"], library["queries"], db, **job)
    assert (resumed.videos_skipped, resumed.videos_done) == (2, 1)  # rank-0 rows of every query
    assert RunVideos(db).done(first.run_id) == {"v0", "v1", "v2"}
    assert frame_of(db).groupby(["query_id", "video_id"]).ngroups == 3 * 3


@pytest.fixture(scope="module")
def retrieval_library(tmp_path_factory, ray_session) -> dict:
    """tests/test_live_search.py's library (20 videos; query i names an event only video i holds), a checkpoint with
    a trained retrieval stage, and its cells table."""
    root = tmp_path_factory.mktemp("retrieval")
    rows = write_library(root)
    torch.manual_seed(0)
    config = load_config(None, RETRIEVAL_SMALL)
    data = prepare_training_data(config, str(root / "features"), str(root / "annotations"), "jsonl")
    model = data.new_model()
    fit(model, data.vocab, config, data.loader("train"), data.loader("val"), data.val.pairs, root / "train",
        stages_from_config(config, [1]))
    train_retrieval(model, data.loader("train"), data.train, data.val, config)
    save_checkpoint(root / "model.pt", model, data.vocab, stage=4)
    summary = run_index_library(str(root / "model.pt"), str(root / "features"), str(root / "cells"))
    assert summary.videos_done == len(RETRIEVAL_WORDS)
    queries = root / "queries.txt"
    queries.write_text("".join(row["query"] + "\n" for row in rows))
    return {"checkpoint": str(root / "model.pt"), "features": str(root / "features"), "cells": root / "cells",
            "queries": str(queries), "holder": {row["query"]: row["video_id"] for row in rows}}


def with_cells(retrieval: dict, path: Path) -> str:
    """A new database at ``path`` holding a copy of the retrieval library's cells table."""
    shutil.copytree(retrieval["cells"] / "cells.lance", path / "cells.lance")
    return str(path)


@pytest.mark.slow
def test_candidate_driven_top_moment_equals_the_exhaustive_one(retrieval_library, tmp_path) -> None:
    lib, videos = retrieval_library, len(RETRIEVAL_WORDS)
    args = (lib["checkpoint"], lib["features"], lib["queries"], with_cells(lib, tmp_path / "db"))
    exhaustive = run_grounding(*args, mode="exhaustive", **RETRIEVAL_JOB)
    every = run_grounding(*args, mode="candidates", candidates=videos, **RETRIEVAL_JOB)
    few = run_grounding(*args, candidates=4, **RETRIEVAL_JOB)  # mode auto: the cells table is of this checkpoint
    assert (exhaustive.mode, every.mode, few.mode) == ("exhaustive", "candidates", "candidates")
    assert "exhaustive" not in few.mode_reason and "cells" in few.mode_reason
    assert exhaustive.pairs == every.pairs == videos * videos and few.pairs == 4 * videos
    assert len({exhaustive.run_id, every.run_id, few.run_id}) == 3
    ex_rows, few_rows = frame_of(args[3], exhaustive.run_id), frame_of(args[3], few.run_id)
    assert_same_rows(frame_of(args[3], every.run_id), ex_rows, ignore=("run_id",))  # every video a candidate
    # each candidate pair has the segments of the exhaustive run (in time order: near-ties may swap ranks)
    same_pairs = ex_rows.merge(few_rows[["query_id", "video_id"]].drop_duplicates(), on=["query_id", "video_id"])
    in_time = ["query_id", "video_id", "start_s", "end_s"]
    got, expected = few_rows.sort_values(in_time), same_pairs.sort_values(in_time)
    assert got[["query_id", "video_id"]].to_numpy().tolist() == expected[["query_id", "video_id"]].to_numpy().tolist()
    np.testing.assert_allclose(got[FLOATS].to_numpy(np.float64), expected[FLOATS].to_numpy(np.float64),
                               rtol=1e-4, atol=1e-4)
    held = agreed = 0
    for query_id, rows in few_rows.groupby("query_id"):
        picked = set(rows["video_id"])
        assert len(picked) <= 4
        held += lib["holder"][rows["query_text"].iloc[0]] in picked
        best = ex_rows[(ex_rows["query_id"] == query_id) & (ex_rows["library_rank"] == 0)].iloc[0]
        if best["video_id"] in picked:  # the candidates hold the exhaustive top moment: it is the top moment
            top = rows[rows["library_rank"] == 0].iloc[0]
            assert (top["video_id"], top["rank"]) == (best["video_id"], best["rank"])
            np.testing.assert_allclose(top[["start_s", "end_s", "score"]].to_numpy(np.float64),
                                       best[["start_s", "end_s", "score"]].to_numpy(np.float64), rtol=1e-5)
            agreed += 1
    assert held == videos  # the retrieval stage picks the video holding each query among its 4
    assert agreed >= videos // 2  # and mostly the exhaustive top moment's video too (20 of 20 when written)
    records = read_runs(args[3])
    assert (records[few.run_id].mode, records[few.run_id].candidates, records[few.run_id].keep_per_query) == (
        "candidates", 4, 0)
    assert (records[exhaustive.run_id].mode, records[exhaustive.run_id].candidates) == ("exhaustive", 0)


@pytest.mark.slow
def test_a_resumed_candidate_run_leaves_the_same_rows_as_a_clean_one(retrieval_library, tmp_path) -> None:
    lib = retrieval_library
    job = dict(RETRIEVAL_JOB, mode="candidates", candidates=4, keep_per_query=3, write_batch_rows=10,
               resources=Resources(num_actors=1, videos_per_batch=1, pair_batch_size=64))
    inputs = (lib["checkpoint"], lib["features"], lib["queries"])
    clean_db = with_cells(lib, tmp_path / "clean")
    clean = run_grounding(*inputs, clean_db, **job)
    killed_db = with_cells(lib, tmp_path / "killed")
    with pytest.raises(RuntimeError, match="fail_after_writes"):
        run_grounding(*inputs, killed_db, fail_after_writes=1, **job)
    partial = RunVideos(killed_db).done(clean.run_id)
    assert 0 < len(partial) < clean.videos_done
    resumed = run_grounding(*inputs, killed_db, **job)
    assert resumed.videos_skipped == len(partial)
    assert resumed.videos_skipped + resumed.videos_done == clean.videos_done
    got = frame_of(killed_db)
    assert len(got) == clean.rows_in_run <= len(RETRIEVAL_WORDS) * 3 and not got.duplicated(list(ROW_KEY)).any()
    assert_same_rows(got, frame_of(clean_db))
    assert RunVideos(killed_db).done(clean.run_id) == RunVideos(clean_db).done(clean.run_id)


@pytest.mark.slow
def test_bad_modes_and_bounds_exit_2_with_one_line(library, retrieval_library, tmp_path, capsys) -> None:
    base = ["--checkpoint", library["checkpoint"], "--features", library["features"], "--queries",
            library["queries"], "--no-progress"]
    cells = with_cells(retrieval_library, tmp_path / "cells-db")
    cases = [
        ([*base, "--candidates", "0"], "--candidates must be at least 1"),
        ([*base, "--keep-per-query", "0"], "--keep-per-query must be at least 1"),
        ([*base, "--keep-per-query", "some"], "--keep-per-query must be a whole number or 'all'"),
        ([*base, "--mode", "candidates", "--db", str(tmp_path / "empty")], "index the library's cells first "
                                                                           "(python -m jobs.index_library"),
        ([*base, "--mode", "candidates", "--db", cells], "the 'cells' table was built with checkpoint model-"),
        ([*base, "--mode", "candidates", "--db", cells, "--cells-table", "other"], "there is none"),
    ]
    for args, message in cases:
        code = ground_job.main(args)
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "empty").exists() and not (tmp_path / "cells-db" / "segments.lance").exists()
    # mode auto grounds every pair when the cells table is of another checkpoint, and says why
    summary = run_grounding(library["checkpoint"], library["features"], library["queries"], cells, max_videos=0,
                            windows=WINDOWS)
    assert summary.mode == "exhaustive" and "table is of checkpoint model-" in summary.mode_reason
    lib = retrieval_library
    partial = str(tmp_path / "partial")
    run_index_library(lib["checkpoint"], lib["features"], partial, videos="v000,v001")
    with pytest.raises(InputError, match="has no cells for 18 of the 20 videos to ground"):
        run_grounding(lib["checkpoint"], lib["features"], lib["queries"], partial)
    for options, message in ((dict(candidates=0), "candidates must be at least 1"),
                             (dict(keep_per_query=-1), "keep_per_query must be at least 1"),
                             (dict(mode="every"), "mode must be one of auto, candidates, exhaustive")):
        with pytest.raises(InputError, match=message):
            run_grounding(lib["checkpoint"], lib["features"], lib["queries"], partial, **options)


def test_grounding_only_given_pairs_matches_every_pair(library) -> None:
    grounder = Grounder.from_checkpoint(library["checkpoint"])
    store = FeatureStore(library["features"])
    videos = [store.load(vid) for vid in ("v0", "v1", "v2")]
    queries = grounder.encode_queries(["the red event", "green door"])
    every = grounder.ground(videos, queries, pair_batch_size=4)
    pairs = [(1, 2), (0, 0), (1, 0)]
    some = grounder.ground(videos, queries, pairs=pairs, pair_batch_size=2)
    assert [(r.query_index, r.video_id) for r in some] == [(1, "v2"), (0, "v0"), (1, "v0")]
    for (q, v), result in zip(pairs, some, strict=True):  # the same segments (near-ties may swap places)
        got, expected = result.segments, every[q * 3 + v].segments
        np.testing.assert_allclose(got[np.lexsort(got[:, :2].T[::-1])], expected[np.lexsort(expected[:, :2].T[::-1])],
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match=r"pair \(2, 0\) is out of range: 2 queries, 3 videos"):
        grounder.ground(videos, queries, pairs=[(2, 0)])


@pytest.mark.slow
def test_cli_prints_the_mode_n_m_and_the_pairs_scored(retrieval_library, tmp_path, capsys) -> None:
    lib = retrieval_library
    code = ground_job.main(["--checkpoint", lib["checkpoint"], "--features", lib["features"], "--queries",
                            lib["queries"], "--db", with_cells(lib, tmp_path / "db"), "--candidates", "4",
                            "--keep-per-query", "3", "--top-k", "3", "--videos-per-batch", "4", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert ("mode: candidate-driven, N = 4 videos per query ('cells' table of this checkpoint); "
            "M = 3 moments kept per query") in out
    assert "grounded 80 (query, video) pairs in " in out and "20 queries x up to 4 videos each" in out
    assert "20 selected, " in out and " picked by no query, 0 already done, " in out and "60 in the run" in out
