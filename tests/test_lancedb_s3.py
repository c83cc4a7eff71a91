"""Every LanceDB connection of the project gets the S3 settings: segments, cells, runs and the search service on
``s3://``, against the test S3 server (moto on loopback, plain HTTP: a non-default endpoint).

How this proves it: ``AWS_ENDPOINT_URL`` is written with a path after the host (``http://127.0.0.1:PORT/elsewhere``).
The project's settings (``drn.store.object_store.S3Settings``) keep ``scheme://host:port`` of it, so a connection
given them reaches the server; LanceDB left to read the environment by itself sends every request under
``/elsewhere`` and fails (``test_lancedb_alone_cannot_reach_the_server`` checks that the trap holds). So every table
below that opens, writes and reads on ``s3://`` was connected with the settings (``moments.index.db.connect``).
"""

from __future__ import annotations

import json
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
import pytest
import torch

from drn.checkpoint import save_checkpoint
from drn.config import load_config
from drn.model import DRN
from drn.store import StoreMetadata, VideoRecord
from drn.store.object_store import S3Settings
from drn.text import Vocabulary
from drn.text.sentence import embed_text
from moments.index import (
    CellsInfo,
    CellsTable,
    Index,
    RunRecord,
    connect,
    query_rows,
    read_runs,
    record_run,
    segment_rows,
)
from moments.index.cells import cell_rows
from moments.library.model import file_sha256
from moments.serve.backend import SearchBackend, ServiceSettings

WORDS = ["alpha", "bravo", "charlie", "delta"]
DIM = 16
SMALL = ["dataset=jsonl", f"model.feature_dim={DIM}", "model.num_segments=8", "model.lstm_hidden=16",
         "model.attention_dim=16", "model.location_dim=4", "model.level_channels=[16,16,32]", "model.fpn_channels=16",
         "model.iou_channels=[16,8]", "decode.top_per_level=4", f"model.retrieval_dim={DIM}"]
RUN = "s3-run"


@pytest.fixture
def s3_db(s3_env, monkeypatch) -> str:
    """An empty ``s3://`` LanceDB location, with an endpoint that only the project's settings can use."""
    bucket = s3_env.new_bucket("lance")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"{s3_env.endpoint}/elsewhere")
    assert S3Settings.from_env().endpoint == s3_env.endpoint
    return f"s3://{bucket}/lancedb"


def write_segments(db: str, text: str = "the alpha event") -> Index:
    index = Index(db)
    index.write_queries(query_rows(RUN, "ckpt-s3", ["q0"], [text], [embed_text(text)]))
    rows = []
    for number in range(len(WORDS)):
        score = 0.9 if number == 0 else 0.3
        rows += segment_rows(RUN, "ckpt-s3", "q0", text, f"v{number}",
                             np.array([[1.0, 4.0, score, score, 0.8], [5.0, 9.0, score / 2, score, 0.4]]))
    assert index.write_segments(rows) == len(rows) == 8
    index.update_library_ranks(RUN)
    return index


def test_lancedb_alone_cannot_reach_the_server(s3_db) -> None:
    with pytest.raises((OSError, ValueError, RuntimeError)):
        lancedb.connect(s3_db).create_table("probe", pa.table({"a": [1]}))
    table = connect(s3_db).create_table("probe", pa.table({"a": [1]}))  # the same, with the settings
    assert table.count_rows() == 1


def test_segments_are_written_and_searched_on_s3(s3_db, s3_env) -> None:
    write_segments(s3_db)
    again = Index(s3_db)  # a new connection reads what the first wrote
    assert again.count() == 8 and again.runs() == [RUN]
    answer = again.answer("the alpha event", k=2)
    best = answer.rows.to_pylist()
    assert answer.grounded and len(best) == 2
    assert [(row["video_id"], row["start_s"], row["end_s"]) for row in best] == [("v0", 1.0, 4.0), ("v0", 5.0, 9.0)]
    bucket = s3_db.split("/")[2]
    assert any(key.startswith("lancedb/segments.lance/") for key in s3_env.keys(bucket, "lancedb/"))


def test_cells_are_created_written_and_searched_on_s3(s3_db, s3_env) -> None:
    info = CellsInfo(checkpoint_id="ckpt-s3", checkpoint="/nowhere/model.pt", sha256="0" * 64,
                     features="s3://elsewhere/features", dim=4, window=json.dumps([60.0, 30.0, 90.0]))
    cells = CellsTable(s3_db)
    assert not cells.exists
    cells.create(info)
    vectors = np.eye(4, dtype=np.float32)
    for number in range(4):
        spans = np.array([[0.0, 5.0], [5.0, 10.0]])
        assert cells.write(cell_rows(info, f"v{number}", spans, np.stack([vectors[number], -vectors[number]]))) == 2
    reopened = CellsTable(s3_db)
    assert reopened.exists and reopened.info == info and reopened.count() == 8
    nearest = reopened.nearest(vectors[2], 1).to_pylist()
    assert (nearest[0]["video_id"], nearest[0]["cell"]) == ("v2", 0)
    assert nearest[0]["similarity"] == pytest.approx(1.0)
    bucket = s3_db.split("/")[2]
    assert any(key.startswith("lancedb/cells.lance/") for key in s3_env.keys(bucket, "lancedb/"))


def test_runs_are_recorded_and_read_on_s3(s3_db) -> None:
    record = RunRecord(RUN, "grounding", "ckpt-s3", "s3://b/model.pt", "s3://b/features", 2,
                       recorded_at="2026-01-01T00:00:00")
    record_run(s3_db, record)
    record_run(s3_db, RunRecord("other", "live", "ckpt-2", "c", "f", 0))
    runs = read_runs(s3_db)
    assert sorted(runs) == ["other", RUN] and runs[RUN] == record and not runs["other"].calibrated


def test_the_search_service_searches_and_searches_live_on_s3(s3_db, s3_env, tmp_path) -> None:
    """The service's index, its runs and its `cells` table (the two-stage searcher the service keeps) on s3."""
    write_segments(s3_db)
    record_run(s3_db, RunRecord(RUN, "grounding", "ckpt-s3", "model.pt", "features", 1))
    bucket = s3_db.split("/")[2]
    features = s3_env.upload_folder(feature_store(tmp_path / "features"), bucket, "features")
    checkpoint = small_checkpoint(tmp_path / "model.pt")
    info = CellsInfo(checkpoint_id="small", checkpoint=checkpoint, sha256=file_sha256(checkpoint), features=features,
                     dim=DIM, window=json.dumps([60.0, 30.0, 90.0]))
    cells = CellsTable(s3_db)
    cells.create(info)
    rng = np.random.default_rng(0)
    for number in range(len(WORDS)):
        vectors = rng.normal(size=(2, DIM)).astype(np.float32)
        cells.write(cell_rows(info, f"v{number}", np.array([[0.0, 10.0], [10.0, 20.0]]),
                              vectors / np.linalg.norm(vectors, axis=1, keepdims=True)))

    backend = SearchBackend(ServiceSettings(db=s3_db))
    assert backend.try_ready(), backend.health()
    health = backend.health()
    assert health["rows"] == 8 and health["live"] is True
    found = backend.search({"q": "the alpha event", "k": "3"})
    assert [row["video_id"] for row in found["results"]][0] == "v0" and found["count"] == 3
    assert all(row["calibrated"] is True for row in found["results"])  # from the runs table on s3
    live = backend.search({"q": "the alpha event", "k": "3", "live": "1"})
    assert live["live"] is True and live["count"] == 3
    assert {row["query_text"] for row in live["results"]} == {"the alpha event"}
    assert {row["video_id"] for row in live["results"]} <= {f"v{n}" for n in range(len(WORDS))}
    in_video = backend.search({"q": "the alpha event", "k": "3", "live": "1", "video": "v3"})
    assert in_video["count"] > 0 and {row["video_id"] for row in in_video["results"]} == {"v3"}
    searcher = backend.two_stage_searcher()
    assert searcher is backend.two_stage_searcher() and searcher.cells.uri == s3_db  # made once, kept


def feature_store(root: Path) -> Path:
    """Four 20 s videos of random DIM-d clip features."""
    from drn.store import FeatureStoreWriter

    meta = StoreMetadata("synthetic", "x", "none", clip_len=2, clip_stride=1, fps="1", feature_dim=DIM,
                         dtype="float32")
    rng = np.random.default_rng(1)
    starts = np.arange(0.0, 18.0, 1.0)
    with FeatureStoreWriter(root, meta, videos_per_shard=8) as writer:
        for number in range(len(WORDS)):
            writer.add_clips(f"v{number}", rng.normal(size=(len(starts), DIM)).astype(np.float32), starts, starts + 2)
            writer.finish_video(VideoRecord(f"v{number}", f"synthetic://v{number}", duration_s=20.0,
                                            num_clips=len(starts)))
    return root


def small_checkpoint(path: Path) -> str:
    """An untrained small DRN whose retrieval stage counts as trained (what two-stage search needs to load)."""
    torch.manual_seed(0)
    config = load_config(None, SMALL)
    model = DRN(config, torch.randn(len(WORDS) + 4, 384))
    assert model.retrieval is not None
    model.retrieval.trained_epochs.fill_(1)
    save_checkpoint(path, model, Vocabulary(["<pad>", "<unk>", "the", "event", *WORDS]), stage=4)
    return str(path)
