"""Object storage over the S3 API on a real S3-compatible server (moto, plain HTTP on loopback, credentials checked).

Everything here runs in this process against the ``s3_server`` fixture: the configuration from the standard AWS
variables, the feature store, listing and decoding videos in place (no temporary copies), checkpoints, query
collections, evaluation, live grounding and search in LanceDB on ``s3://``, and the one-line errors for a missing
bucket, wrong credentials, a prefix that holds something else and an endpoint that does not answer. The Ray jobs
on a multi-node cluster are in test_cluster.py.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from drn.checkpoint import read_checkpoint, save_checkpoint
from drn.config import load_config
from drn.datasets.synthetic import make_synthetic_benchmark
from drn.errors import InputError
from drn.store import FeatureStore, FeatureStoreWriter, StoreMetadata, VideoRecord
from drn.store.object_store import S3Settings
from drn.training_setup import prepare_training_data
from jobs.evaluate import main as evaluate_main
from jobs.extract import main as extract_main
from jobs.ground import main as ground_main
from jobs.search import main as search_main
from jobs.train import main as train_main
from moments.library.queries import read_queries
from moments.serve.backend import SearchBackend, ServiceSettings
from pipeline.decode import VideoDecoder
from pipeline.extract import decode_segments
from pipeline.sources import list_videos
from pipeline.synthetic import make_library

REPO = Path(__file__).resolve().parents[1]
DIM = 16
SMALL = ["model.feature_dim=16", "model.num_segments=8", "model.lstm_hidden=8", "model.attention_dim=8",
         "model.location_dim=4", "model.level_channels=[8,8,16]", "model.fpn_channels=8", "model.iou_channels=[8,4]"]


# ---- configuration ---------------------------------------------------------------------------------------------

def test_settings_come_from_the_standard_aws_variables() -> None:
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000/", "AWS_ALLOW_HTTP": "true", "AWS_DEFAULT_REGION": "eu-west-1",
           "AWS_MAX_ATTEMPTS": "2", "DRN_S3_REQUEST_TIMEOUT_S": "7.5"}
    settings = S3Settings.from_env(env)
    assert (settings.endpoint, settings.region, settings.allow_http, settings.max_attempts,
            settings.request_timeout_s) == ("http://127.0.0.1:9000", "eu-west-1", True, 2, 7.5)
    assert settings.lancedb_options() == {"aws_endpoint": "http://127.0.0.1:9000", "aws_allow_http": "true",
                                          "aws_region": "eu-west-1", "connect_timeout": "5s",
                                          "client_max_retries": "1"}
    assert S3Settings.from_env({"AWS_ENDPOINT_URL_S3": "https://minio.example:9000", "AWS_REGION": "x"}).region == "x"
    assert S3Settings.from_env({"AWS_ENDPOINT_URL": "https://minio.example"}).region == "us-east-1"
    assert S3Settings.from_env({}).endpoint is None
    with pytest.raises(InputError, match="plain HTTP; set AWS_ALLOW_HTTP=true"):
        S3Settings.from_env({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"})
    with pytest.raises(InputError, match="AWS_MAX_ATTEMPTS must be a positive number"):
        S3Settings.from_env({"AWS_MAX_ATTEMPTS": "none"})


# ---- the feature store, videos and decoding on s3:// -----------------------------------------------------------

def test_feature_store_round_trip_on_s3(s3_env) -> None:
    bucket = s3_env.new_bucket()
    uri = f"s3://{bucket}/features"
    meta = StoreMetadata("test", "fc6", "none", 16, 8, "native", 4, "float32")
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(7, 4)).astype(np.float32)
    starts = np.arange(7, dtype=np.float32)
    with FeatureStoreWriter(uri, meta, max_chunk_bytes=3 * 16, videos_per_shard=2) as writer:
        writer.add_clips("a", feats, starts, starts + 1)
        writer.finish_video(VideoRecord("a", "a.mp4", duration_s=8.0, num_clips=7))
        writer.finish_video(VideoRecord("b", "b.mp4", status="failed", error="undecodable"))
    keys = s3_env.keys(bucket, "features/")
    assert [k for k in keys if k.endswith(".parquet")] and not [k for k in keys if ".tmp-" in k]
    store = FeatureStore(uri)
    assert store.metadata == meta and store.ok_video_ids() == ["a"]
    loaded = store.load("a")
    np.testing.assert_array_equal(loaded.features, feats)
    np.testing.assert_array_equal(loaded.clip_start_s, starts)


def test_videos_are_listed_and_decoded_in_place_without_temporary_files(s3_env, tmp_path, monkeypatch) -> None:
    library = make_library(tmp_path / "lib", num_videos=2, seed=4, min_duration_s=2.0, max_duration_s=2.5,
                           width=64, height=48)
    bucket = s3_env.new_bucket()
    uri = s3_env.upload_folder(library["video_dir"], bucket, "videos")
    sources = list_videos(uri)
    assert [s.uri for s in sources] == [f"{uri}/{p.name}" for p in sorted(Path(library["video_dir"]).glob("*.mp4"))]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))  # any temporary file would land here
    monkeypatch.setenv("TMPDIR", str(scratch))
    for source in sources:
        local = os.path.join(library["video_dir"], f"{source.video_id}.mp4")
        expected = np.concatenate([b.frames for b in VideoDecoder(local).blocks()])
        expected_pyav = np.concatenate([b.frames for b in VideoDecoder(local, decoder="pyav").blocks()])
        in_memory = VideoDecoder(source.uri)  # small: read once into memory, decoded by decord
        streamed = VideoDecoder(source.uri, max_in_memory_bytes=0)  # large: PyAV reads the object-store file
        np.testing.assert_array_equal(np.concatenate([b.frames for b in in_memory.blocks()]), expected)
        np.testing.assert_array_equal(np.concatenate([b.frames for b in streamed.blocks()]), expected_pyav)
        assert (in_memory.info.decoder, streamed.info.decoder) == ("decord", "pyav")
        rows = list(decode_segments({"video_id": source.video_id, "uri": source.uri}, clip_len=16, clip_stride=8,
                                    fps=None, clips_per_row=4))
        assert rows[-1]["status"] == "ok" and rows[-1]["num_frames"] == len(expected)
    assert list(scratch.iterdir()) == []
    missing = list(decode_segments({"video_id": "gone", "uri": f"{uri}/gone.mp4"}, clip_len=16, clip_stride=8,
                                   fps=None, clips_per_row=4))
    assert (missing[-1]["status"], missing[-1]["error"]) == ("failed", "file not found")


# ---- checkpoints, queries, evaluation, live grounding and search -----------------------------------------------

@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict:
    """A tiny synthetic benchmark and an untrained checkpoint for it, on local disk."""
    root = tmp_path_factory.mktemp("s3bench")
    made = make_synthetic_benchmark(root / "syn", num_videos=12, feature_dim=DIM, seed=5)
    config = load_config(REPO / "configs" / "synthetic.yaml", SMALL)
    data = prepare_training_data(config, made.features, made.annotations)
    torch.manual_seed(0)
    checkpoint = root / "model.pt"
    save_checkpoint(checkpoint, data.new_model().eval(), data.vocab, stage=1)
    texts = [json.loads(line)["query"] for line in (Path(made.annotations) / "test.jsonl").read_text().splitlines()]
    queries = root / "queries.txt"
    queries.write_text("".join(t + "\n" for t in dict.fromkeys(texts)))
    return {"features": made.features, "annotations": made.annotations, "checkpoint": str(checkpoint),
            "queries": str(queries), "texts": list(dict.fromkeys(texts))}


def test_checkpoint_queries_evaluation_live_grounding_and_search_on_s3(s3_env, bench, capsys) -> None:
    bucket = s3_env.new_bucket()
    features = s3_env.upload_folder(bench["features"], bucket, "features")
    s3_env.client().upload_file(bench["checkpoint"], bucket, "runs/model.pt")
    s3_env.client().upload_file(bench["queries"], bucket, "queries.txt")
    checkpoint, db = f"s3://{bucket}/runs/model.pt", f"s3://{bucket}/lancedb"

    assert read_checkpoint(checkpoint)["state_dict"].keys() == read_checkpoint(bench["checkpoint"])[
        "state_dict"].keys()
    assert read_queries(f"s3://{bucket}/queries.txt").texts == bench["texts"]
    common = ["--dataset", "jsonl", "--annotations", bench["annotations"], "--split", "test", "--json", "--quiet"]
    assert evaluate_main([*common, "--checkpoint", bench["checkpoint"], "--features", bench["features"]]) == 0
    local = json.loads(capsys.readouterr().out)
    assert evaluate_main([*common, "--checkpoint", checkpoint, "--features", features]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert (remote["recall"], remote["miou"]) == (local["recall"], local["miou"])
    assert remote["num_queries"] == local["num_queries"] > 0 and remote["checkpoint"] == checkpoint

    text = bench["texts"][0]
    assert search_main([text, "--exhaustive", "--checkpoint", checkpoint, "--features", features, "--save", "--db", db,
                        "--k", "3", "--json"]) == 0
    live = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(live) == 3 and all(row["query_text"] == text for row in live)
    assert [k for k in s3_env.keys(bucket, "lancedb/") if k.startswith("lancedb/segments.lance/")]
    assert search_main([text, "--db", db, "--k", "3", "--json"]) == 0  # reads the index it wrote on s3
    found = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    key = [(r["video_id"], r["start_s"], r["end_s"]) for r in found]
    assert key == [(r["video_id"], r["start_s"], r["end_s"]) for r in live]

    # the search service's backend (what each Serve replica loads) on the same index and store on s3
    backend = SearchBackend(ServiceSettings(db=db, features=features))
    assert backend.try_ready(), backend.health()
    answer = backend.search({"q": text, "k": "3"})
    assert [(r["video_id"], r["start_s"], r["end_s"]) for r in answer["results"]] == key
    assert backend.videos()["count"] == len(FeatureStore(bench["features"]).ok_video_ids()) > 0  # manifest read on s3


# ---- bad input: one line naming the URI ------------------------------------------------------------------------

def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def test_a_bucket_that_does_not_exist(s3_env, tmp_path, capsys) -> None:
    assert extract_main(["--videos", "s3://no-such-bucket/videos", "--out", str(tmp_path / "f"),
                         "--weights", "random"]) == 2
    err = one_error_line(capsys)
    assert "s3://no-such-bucket/videos" in err and "the bucket 'no-such-bucket' does not exist" in err
    assert s3_env.endpoint in err
    assert search_main(["a door", "--db", "s3://no-such-bucket/db"]) == 2
    assert "s3://no-such-bucket/db: the bucket 'no-such-bucket' does not exist" in one_error_line(capsys)


def test_wrong_credentials(s3_env, bench, monkeypatch, capsys) -> None:
    bucket = s3_env.new_bucket()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    assert search_main(["a door", "--db", f"s3://{bucket}/db"]) == 2
    err = one_error_line(capsys)
    assert f"s3://{bucket}/db" in err and "access denied" in err and "AWS_SECRET_ACCESS_KEY" in err
    args = ["--config", str(REPO / "configs" / "synthetic.yaml"), "--features", bench["features"], "--annotations",
            bench["annotations"], "--num-workers", "2", "--storage", f"s3://{bucket}/runs", "--name", "x",
            *sum((["--set", o] for o in SMALL), [])]
    assert train_main(args) == 2  # refused before any worker starts
    err = one_error_line(capsys)
    assert f"s3://{bucket}/runs" in err and "access denied" in err


def test_a_prefix_that_holds_something_else(s3_env, bench, tmp_path, capsys) -> None:
    bucket = s3_env.new_bucket()
    s3_env.client().put_object(Bucket=bucket, Key="stuff/notes.txt", Body=b"my notes")
    library = make_library(tmp_path / "lib", num_videos=1, seed=1, min_duration_s=1.0, max_duration_s=1.5,
                           width=32, height=32)
    assert extract_main(["--videos", library["video_dir"], "--out", f"s3://{bucket}/stuff", "--weights",
                         "random"]) == 2
    err = one_error_line(capsys)
    assert f"s3://{bucket}/stuff" in err and "holds something other than a feature store (notes.txt)" in err
    assert s3_env.keys(bucket) == ["stuff/notes.txt"]  # nothing written
    assert ground_main(["--checkpoint", bench["checkpoint"], "--features", f"s3://{bucket}/stuff", "--queries",
                        bench["queries"], "--db", str(tmp_path / "db")]) == 2
    assert f"s3://{bucket}/stuff: not a feature store" in one_error_line(capsys)


@pytest.fixture
def silent_endpoint():
    """A loopback port that accepts connections and never answers (a hung server), and one that refuses them."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused = closed.getsockname()[1]
    yield f"http://127.0.0.1:{server.getsockname()[1]}", f"http://127.0.0.1:{refused}"
    stop.set()
    thread.join(timeout=5)
    for conn in accepted:
        conn.close()
    server.close()


def test_an_unreachable_endpoint_is_a_timeout_not_a_hang(s3_env, silent_endpoint, monkeypatch, capsys) -> None:
    hung, refused = silent_endpoint
    monkeypatch.setenv("DRN_S3_REQUEST_TIMEOUT_S", "1")
    monkeypatch.setenv("DRN_S3_CONNECT_TIMEOUT_S", "1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    for endpoint, detail in ((hung, "Timeout was reached"), (refused, "Could not connect")):
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        started = time.monotonic()
        assert search_main(["a door", "--db", "s3://bucket/db"]) == 2
        err = one_error_line(capsys)
        assert time.monotonic() - started < 30
        assert f"s3://bucket/db: cannot reach the object store at {endpoint} after 2 attempt(s)" in err
        assert detail in err and "AWS_ENDPOINT_URL" in err
