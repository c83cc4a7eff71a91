"""The feature store: round trips, chunking, metadata checks and the shard completion rule."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from drn.errors import InputError
from drn.store import FeatureStore, FeatureStoreWriter, StoreMetadata, VideoRecord, absolute_uri


def _meta(dim: int = 8, dtype: str = "float16", **kw) -> StoreMetadata:
    base = dict(extractor="test", layer="fc6", weights_sha256="none", clip_len=16, clip_stride=8, fps="native")
    base.update(kw)
    return StoreMetadata(feature_dim=dim, dtype=dtype, **base)


def _clips(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    starts = np.arange(n, dtype=np.float32) * 0.5
    return rng.normal(size=(n, dim)).astype(np.float32), starts, starts + 1.0


def test_round_trip_with_chunks_and_failures(tmp_path) -> None:
    meta = _meta(dim=8, dtype="float32")
    # 3 clips per chunk: 8 float32 values each is 32 bytes
    with FeatureStoreWriter(tmp_path, meta, max_chunk_bytes=3 * 32, videos_per_shard=2) as writer:
        feats, s, e = _clips(10, 8, seed=0)
        writer.add_clips("long", feats[:4], s[:4], e[:4])
        writer.add_clips("long", feats[4:], s[4:], e[4:])
        writer.finish_video(VideoRecord("long", "long.mp4", fps=30.0, num_frames=90, duration_s=5.5, num_clips=10))
        writer.finish_video(VideoRecord("bad", "bad.mp4", status="failed", error="undecodable"))
        short, s2, e2 = _clips(1, 8, seed=1)
        writer.add_clips("short", short, s2, e2)
        writer.finish_video(VideoRecord("short", "short.mp4", duration_s=1.0, num_clips=1))

    store = FeatureStore(tmp_path)
    assert store.metadata == meta
    assert sorted(store.ok_video_ids()) == ["long", "short"]
    assert len(list((tmp_path / "videos").glob("*.parquet"))) == 2  # rolled over after two videos
    chunks = pq.read_table(next(iter(sorted((tmp_path / "clips").glob("*.parquet")))))
    pairs = zip(chunks["video_id"].to_pylist(), chunks["chunk"].to_pylist(), strict=True)
    assert [c for v, c in pairs if v == "long"] == [0, 1, 2, 3]
    loaded = store.load("long")
    np.testing.assert_array_equal(loaded.features, feats)
    np.testing.assert_array_equal(loaded.clip_start_s, s)
    assert loaded.duration_s == 5.5
    assert {v.video_id: v.num_clips for v in store.iter_videos()} == {"long": 10, "short": 1}
    with pytest.raises(InputError, match="failed extraction: undecodable"):
        store.load("bad")
    with pytest.raises(InputError, match="'nope' is not in the feature store"):
        store.load("nope")


def test_float16_reads_without_copy(tmp_path) -> None:
    with FeatureStoreWriter(tmp_path, _meta(dim=4)) as writer:
        feats, s, e = _clips(5, 4, seed=2)
        writer.add_clips("v", feats, s, e)
        writer.finish_video(VideoRecord("v", "v.mp4", duration_s=3.0, num_clips=5))
    loaded = FeatureStore(tmp_path).load("v")
    assert loaded.features.dtype == np.float16
    assert not loaded.features.flags.owndata
    np.testing.assert_allclose(loaded.features, feats.astype(np.float16))


def test_incomplete_shard_is_ignored_and_later_ok_row_wins(tmp_path) -> None:
    meta = _meta()
    feats, s, e = _clips(3, 8, seed=3)
    with FeatureStoreWriter(tmp_path, meta) as writer:
        writer.finish_video(VideoRecord("v", "v.mp4", status="failed", error="timeout"))
    killed = FeatureStoreWriter(tmp_path, meta)
    killed.add_clips("w", feats, s, e)
    killed.finish_video(VideoRecord("w", "w.mp4", duration_s=2.0, num_clips=3))
    killed._clips_writer.close()  # the process dies before the shard is sealed
    assert FeatureStore(tmp_path).ok_video_ids() == []
    with FeatureStoreWriter(tmp_path, meta) as writer:
        writer.add_clips("v", feats, s, e)
        writer.finish_video(VideoRecord("v", "v.mp4", duration_s=2.0, num_clips=3))
    store = FeatureStore(tmp_path)
    assert store.ok_video_ids() == ["v"]
    assert store.load("v").num_clips == 3


def test_refuses_to_mix_metadata_and_bad_features(tmp_path) -> None:
    feats, s, e = _clips(2, 8, seed=4)
    with FeatureStoreWriter(tmp_path, _meta()) as writer:
        writer.add_clips("v", feats, s, e)
        writer.finish_video(VideoRecord("v", "v.mp4", duration_s=2.0, num_clips=2))
    with pytest.raises(InputError, match=r"drn.layer: 'fc6' vs 'fc7'"):
        FeatureStoreWriter(tmp_path, _meta(layer="fc7"))
    writer = FeatureStoreWriter(tmp_path, _meta())
    bad = feats.copy()
    bad[1, 3] = np.nan
    with pytest.raises(InputError, match="video w: features contain NaN"):
        writer.add_clips("w", bad, s, e)
    with pytest.raises(InputError, match=r"shape \(2, 4\), expected \(N, 8\)"):
        writer.add_clips("w", feats[:, :4], s, e)
    with pytest.raises(InputError, match="not a feature store"):
        FeatureStore(tmp_path / "missing")


def test_absolute_uri_keeps_uris_and_anchors_local_paths(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_uri("features") == str(tmp_path / "features")
    assert absolute_uri("s3://bucket/features") == "s3://bucket/features"
