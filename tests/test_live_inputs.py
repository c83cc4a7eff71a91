"""The live inputs table (``moments.index.live_inputs``): what DRN needs of each indexed video, read by key. Its
rows round-trip, float16 grids of a float16 store lose nothing, scoring stored grids gives the rows of scoring the
store's clips (long videos in windows included), and two-stage search on ``s3://`` reads candidates from it without
opening the feature store. Real LanceDB, real Parquet, the moto S3 server; no Ray, no training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from drn.checkpoint import save_checkpoint
from drn.config import load_config
from drn.errors import InputError
from drn.model import DRN
from drn.store import FeatureStore, FeatureStoreWriter, StoreMetadata, VideoFeatures, VideoRecord
from drn.store.object_store import S3Settings
from drn.text import Vocabulary
from moments.index.cells import CellsInfo, CellsTable, cell_rows
from moments.index.live_inputs import (
    InputsInfo,
    LiveInputsTable,
    VideoGrids,
    input_rows,
    inputs_table_name,
)
from moments.library.batches import split_output
from moments.library.model import encode_query_side, file_sha256, load_model
from moments.library.queries import Query
from moments.library.scoring import LibraryScorer, RunLabels, window_grids
from moments.library.windows import WindowRule
from moments.search.two_stage import TwoStageOptions, TwoStageSearcher

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
DIM, T = 16, 8
SMALL = ["dataset=jsonl", f"model.feature_dim={DIM}", f"model.num_segments={T}", "model.lstm_hidden=16",
         "model.attention_dim=16", "model.location_dim=4", "model.level_channels=[16,16,32]", "model.fpn_channels=16",
         "model.iou_channels=[16,8]", "decode.top_per_level=4", f"model.retrieval_dim={DIM}"]
RULE = WindowRule(30.0, 15.0, 45.0, "test")  # videos over 45 s are grounded in windows of 30 s every 15 s
DURATIONS = [20.0, 44.0, 70.0, 130.0, 33.0, 100.0]  # three whole, three in windows


def write_store(root: Path, dtype: str = "float32") -> Path:
    meta = StoreMetadata("synthetic", "x", "none", clip_len=2, clip_stride=1, fps="1", feature_dim=DIM, dtype=dtype)
    rng = np.random.default_rng(3)
    with FeatureStoreWriter(root, meta, videos_per_shard=4) as writer:
        for number, duration in enumerate(DURATIONS):
            starts = np.arange(0.0, duration - 2.0, 1.0)
            writer.add_clips(f"v{number}", rng.normal(size=(len(starts), DIM)).astype(np.float32), starts, starts + 2)
            writer.finish_video(VideoRecord(f"v{number}", f"synthetic://v{number}", duration_s=duration,
                                            num_clips=len(starts)))
    return root


def small_checkpoint(path: Path) -> str:
    """An untrained small DRN whose retrieval stage counts as trained (what two-stage search needs to load)."""
    torch.manual_seed(0)
    model = DRN(load_config(None, SMALL), torch.randn(len(WORDS) + 4, 384))
    model.retrieval.trained_epochs.fill_(1)
    save_checkpoint(path, model, Vocabulary(["<pad>", "<unk>", "the", "event", *WORDS]), stage=4)
    return str(path)


def cells_info(checkpoint: str, features: str) -> CellsInfo:
    return CellsInfo(checkpoint_id="small", checkpoint=checkpoint, sha256=file_sha256(checkpoint), features=features,
                     dim=DIM, window=json.dumps([RULE.window_s, RULE.stride_s, RULE.max_whole_s]))


def same_grids(a: VideoGrids, b: VideoGrids) -> bool:
    return (a.video_id == b.video_id and a.duration_s == b.duration_s and np.array_equal(a.offsets_s, b.offsets_s)
            and np.array_equal(a.durations_s, b.durations_s)
            and np.array_equal(np.asarray(a.grids, np.float32), np.asarray(b.grids, np.float32)))


def test_rows_round_trip_and_rewriting_adds_nothing(tmp_path) -> None:
    store = FeatureStore(write_store(tmp_path / "features"))
    info = InputsInfo(cells_info(small_checkpoint(tmp_path / "m.pt"), store.uri), T, DIM, "float32")
    prepared = [window_grids(video, RULE, T) for video in store.iter_videos()]
    assert [v.num_windows for v in sorted(prepared, key=lambda v: v.video_id)] == [1, 1, 4, 8, 1, 6]
    table = LiveInputsTable(tmp_path / "db", inputs_table_name("cells"))
    assert not table.exists and table.name == "cells_inputs" and table.read(["v0"]) == {}
    table.create(info)
    assert table.write(input_rows(info, prepared[:2])) == 2
    assert table.write(input_rows(info, prepared)) == 21  # given; only the missing videos' rows are added
    assert table.count() == 21 and table.video_ids() == {f"v{n}" for n in range(len(DURATIONS))}
    assert table.ensure_index() == ["cells_inputs.video_id"] and table.ensure_index() == []
    reopened = LiveInputsTable(tmp_path / "db", "cells_inputs")
    assert reopened.info == info and reopened.info.cells.window_settings == (30.0, 15.0, 45.0)
    found = reopened.read(["v3", "v0", "nope"])
    assert sorted(found) == ["v0", "v3"]
    by_id = {v.video_id: v for v in prepared}
    assert all(same_grids(found[vid], by_id[vid]) for vid in found)


def test_metadata_is_required_and_grids_must_fit(tmp_path) -> None:
    info = InputsInfo(cells_info(small_checkpoint(tmp_path / "m.pt"), "/s"), T, DIM, "float16")
    metadata = info.to_metadata()
    assert InputsInfo.from_metadata(metadata, "x") == info
    del metadata[b"drn.inputs.dtype"]
    with pytest.raises(InputError, match="drn.inputs.dtype"):
        InputsInfo.from_metadata(metadata, "x")
    with pytest.raises(InputError, match="float16"):
        InputsInfo(info.cells, T, DIM, "int8")
    wrong = VideoGrids("v", 10.0, np.zeros(1), np.full(1, 10.0), np.zeros((1, T + 1, DIM), np.float32))
    with pytest.raises(InputError, match="grids of shape"):
        input_rows(info, [wrong])


def test_float16_grids_of_a_float16_store_are_exact(tmp_path) -> None:
    """A grid is a max-pool of stored clip values, so in the store's dtype it loses nothing."""
    store = FeatureStore(write_store(tmp_path / "features", dtype="float16"))
    info = InputsInfo(cells_info(small_checkpoint(tmp_path / "m.pt"), store.uri), T, DIM, "float16")
    prepared = [window_grids(video, RULE, T) for video in store.iter_videos()]
    rows = input_rows(info, prepared)
    assert rows.schema.field("grid").type == pa.list_(pa.float16(), T * DIM)
    stored = rows.column("grid").combine_chunks().flatten().to_numpy().reshape(-1, T, DIM)
    assert np.array_equal(stored.astype(np.float32), np.concatenate([v.grids for v in prepared]))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_scoring_stored_grids_gives_the_rows_of_scoring_the_clips(tmp_path, dtype) -> None:
    """``LibraryScorer.score_grids`` on grids read back from the table == ``score`` on the store's videos (long
    videos in windows, merged), exactly; a float16 table of a float32 store only nearly."""
    store = FeatureStore(write_store(tmp_path / "features"))
    checkpoint = small_checkpoint(tmp_path / "m.pt")
    model = load_model(checkpoint)
    side = encode_query_side(model.grounder, [Query(f"q{n}", f"the {w} event") for n, w in enumerate(WORDS[:3])])
    scorer = LibraryScorer(model.grounder, side, RULE, RunLabels("r", "c"), top_k=4)
    videos = list(store.iter_videos())
    expected, failures = split_output(scorer.score(videos))
    assert failures == [] and expected.num_rows == 3 * len(videos) * 4
    info = InputsInfo(cells_info(checkpoint, store.uri), T, DIM, dtype)
    table = LiveInputsTable(tmp_path / "db", "cells_inputs")
    table.create(info)
    table.write(input_rows(info, [scorer.prepare(video) for video in videos]))
    stored = table.read([video.video_id for video in videos])
    found, _ = split_output(scorer.score_grids([stored[video.video_id] for video in videos]))
    assert found.num_rows == expected.num_rows
    key = ["query_id", "video_id", "rank"]
    expected, found = expected.sort_by([(k, "ascending") for k in key]), found.sort_by([(k, "ascending") for k in key])
    if dtype == "float32":
        assert found.equals(expected)
    else:  # rounding the grids to float16 moves this untrained model's scores and boundaries very little
        for name, tolerance in (("score", 1e-3), ("start_s", 1e-3), ("end_s", 1e-3)):
            assert np.abs(found.column(name).to_numpy() - expected.column(name).to_numpy()).max() < tolerance


def test_a_video_whose_grids_do_not_fit_the_model_becomes_an_error_row(tmp_path) -> None:
    model = load_model(small_checkpoint(tmp_path / "m.pt"))
    side = encode_query_side(model.grounder, [Query("q", "the alpha event")])
    scorer = LibraryScorer(model.grounder, side, RULE, RunLabels("r", "c"))
    good = scorer.prepare(VideoFeatures("ok", np.ones((10, DIM), np.float32), np.arange(10.0), np.arange(10.0) + 2,
                                        12.0))
    bad = VideoGrids("bad", 10.0, np.zeros(1), np.full(1, 10.0), np.zeros((1, T, DIM + 1), np.float32))
    rows, failures = split_output(scorer.score_grids([good, bad]))
    assert set(rows.column("video_id").to_pylist()) == {"ok"} and [vid for vid, _ in failures] == ["bad"]


def one_row_group_store(source: Path, target: Path) -> Path:
    """The store at ``source`` written again as one Parquet file of one row group (clips) and one videos file."""
    clips = pq.read_table(sorted((source / "clips").glob("*.parquet")))
    videos = pq.read_table(sorted((source / "videos").glob("*.parquet")))
    (target / "clips").mkdir(parents=True)
    (target / "videos").mkdir()
    pq.write_table(clips, target / "clips" / "all.parquet", row_group_size=clips.num_rows)
    pq.write_table(videos, target / "videos" / "all.parquet")
    assert pq.ParquetFile(target / "clips" / "all.parquet").metadata.num_row_groups == 1
    return target


@pytest.fixture
def s3_db(s3_env, monkeypatch) -> str:
    """An empty ``s3://`` LanceDB location, reachable only with the project's S3 settings (as test_lancedb_s3)."""
    bucket = s3_env.new_bucket("inputs")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"{s3_env.endpoint}/elsewhere")
    assert S3Settings.from_env().endpoint == s3_env.endpoint
    return f"s3://{bucket}/lancedb"


def test_two_stage_search_on_s3_reads_candidates_from_the_inputs_table(s3_db, tmp_path) -> None:
    """Cells and inputs on ``s3://``: search needs no feature store (the one recorded is gone) and gives the rows
    that the store path gives on the same library written as one Parquet row group."""
    source = write_store(tmp_path / "features")
    checkpoint = small_checkpoint(tmp_path / "m.pt")
    store = FeatureStore(source)
    gone = str(tmp_path / "moved-away")
    info = cells_info(checkpoint, gone)
    cells = CellsTable(s3_db)
    cells.create(info)
    rng = np.random.default_rng(0)
    for video in store.ok_video_ids():
        vectors = rng.normal(size=(2, DIM)).astype(np.float32)
        cells.write(cell_rows(info, video, np.array([[0.0, 5.0], [5.0, 10.0]]),
                              vectors / np.linalg.norm(vectors, axis=1, keepdims=True)))
    inputs = LiveInputsTable(s3_db, inputs_table_name("cells"))
    inputs.create(InputsInfo(info, T, DIM, "float32"))
    inputs.write(input_rows(inputs.info, [window_grids(video, RULE, T) for video in store.iter_videos()]))
    inputs.ensure_index()

    options = TwoStageOptions(cells=12, candidates=4)
    fast = TwoStageSearcher(s3_db, options=options)
    assert fast.notices == [] and fast._lookup is None
    rows = fast.search("the alpha event", k=8)
    assert fast._lookup is None and rows.num_rows == 8  # the store was never opened
    flat = one_row_group_store(source, tmp_path / "flat")
    slow = TwoStageSearcher(s3_db, features=str(flat), options=options, use_inputs=False)
    assert slow.search("the alpha event", k=8).equals(rows)
    assert fast.search("the bravo event", k=3, video_id="v3").equals(slow.search("the bravo event", k=3,
                                                                                   video_id="v3"))
