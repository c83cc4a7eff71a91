"""Extraction on real Ray: listing inputs, statuses, clip counts and times, failures, resume after a kill."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from drn.errors import InputError
from drn.store import FeatureStore
from jobs import extract as extract_job
from pipeline.c3d import C3DConfig, random_weights_id, resolve_compute_dtype
from pipeline.clips import num_clips
from pipeline.extract import Resources, run_extraction
from pipeline.sources import VideoSource, list_videos
from pipeline.synthetic import write_video

REPO = Path(__file__).resolve().parents[1]


def _video(path: Path, frames: int, fps: float) -> Path:
    rng = np.random.default_rng(frames)
    write_video(path, (rng.integers(0, 255, (64, 96, 3), dtype=np.uint8) for _ in range(frames)), fps)
    return path


def _run(sources, out, fps="native", retry_failed=False, compute_dtype="auto", **kw):
    config = C3DConfig(weights="random", seed=1, fps=fps, compute_dtype=compute_dtype)
    return run_extraction(sources, str(out), config, weights=None, weights_sha256=random_weights_id(1),
                          resources=Resources(batch_size=4, torch_threads=2), retry_failed=retry_failed,
                          videos_per_shard=3, **kw)


# ---- listing inputs -------------------------------------------------------------------------------------------


def test_listing_folders_globs_and_manifests(tmp_path: Path) -> None:
    (tmp_path / "lib" / "sub").mkdir(parents=True)
    for name in ("lib/a.mp4", "lib/sub/b.MKV", "lib/notes.txt", "lib/.hidden.mp4"):
        (tmp_path / name).write_bytes(b"x")
    assert [(s.video_id, Path(s.uri).name) for s in list_videos(str(tmp_path / "lib"))] == [
        ("a", "a.mp4"), ("b", "b.MKV")]
    assert [s.video_id for s in list_videos(str(tmp_path / "lib" / "**" / "*.mp4"))] == ["a"]
    manifest = tmp_path / "lib" / "list.txt"
    manifest.write_text("# my videos\nsub/b.MKV\n\nclip7\ta.mp4\n/elsewhere/missing.mp4\n")
    sources = list_videos(str(manifest))
    assert [(s.video_id, s.uri) for s in sources] == [
        ("b", str(tmp_path / "lib" / "sub" / "b.MKV")), ("clip7", str(tmp_path / "lib" / "a.mp4")),
        ("missing", "/elsewhere/missing.mp4")]  # a missing file is listed; extraction records it as failed
    table = pa.table({"uri": ["a.mp4", "sub/b.MKV"], "video_id": ["x", None]})
    pq.write_table(table, tmp_path / "lib" / "m.parquet")
    assert [s.video_id for s in list_videos(str(tmp_path / "lib" / "m.parquet"))] == ["b", "x"]


def test_listing_refuses_bad_input_before_any_work(tmp_path: Path) -> None:
    for name in ("one/v.mp4", "two/v.mp4"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(InputError, match=r"two inputs have the video_id 'v'.*one/v.mp4.*two/v.mp4"):
        list_videos(str(tmp_path))
    bad = tmp_path / "bad.txt"
    bad.write_text("a.mp4\nx\ty\tz\n")
    with pytest.raises(InputError, match=r"bad.txt, line 2: expected 'URI' or 'video_id<TAB>URI'"):
        list_videos(str(bad))
    with pytest.raises(InputError, match="no such file or folder"):
        list_videos(str(tmp_path / "nowhere"))
    pq.write_table(pa.table({"file": ["a.mp4"]}), tmp_path / "m.parquet")
    with pytest.raises(InputError, match="needs a 'uri' or 'path' column"):
        list_videos(str(tmp_path / "m.parquet"))


# ---- extraction -----------------------------------------------------------------------------------------------


def test_library_with_good_short_and_broken_videos(ray_session, tmp_path: Path, shared_data: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    made = {"f24_at25": (24, 25.0), "f16_at12": (16, 12.0), "f31_at15": (31, 15.0), "f5_at30": (5, 30.0)}
    for vid, (frames, fps) in made.items():
        _video(lib / f"{vid}.mp4", frames, fps)
    whole = _video(tmp_path / "whole.mp4", 40, 25.0)
    (lib / "truncated.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    (lib / "text.mp4").write_text("not a video at all\n" * 50)
    (lib / "empty.mp4").write_bytes(b"")
    sources = list_videos(str(lib)) + [
        VideoSource("three_frames", str(shared_data / "videos" / "decord_video_0.mov")),
        VideoSource("missing", str(lib / "missing.mp4")),
    ]
    seen = []
    summary = _run(sources, tmp_path / "store", on_video=lambda r: seen.append(r.video_id))
    assert (summary.done, summary.failed, summary.skipped) == (5, 4, 0)
    assert sorted(seen) == sorted(s.video_id for s in sources)
    store = FeatureStore(tmp_path / "store")
    rows = {r["video_id"]: r for r in store.videos().to_pylist()}
    errors = {vid: rows[vid]["error"] for vid in ("truncated", "text", "empty", "missing")}
    assert all(rows[v]["status"] == "failed" for v in errors), errors
    assert "not a readable video" in errors["text"] and "not a readable video" in errors["empty"]
    assert errors["missing"] == "file not found"
    assert store.metadata.weights_sha256 == "random-seed1" and store.metadata.feature_dim == 4096
    # --dtype auto was resolved on a worker like the actors (this CPU) and recorded beside the stored dtype
    assert store.metadata.compute_dtype == summary.compute_dtype == resolve_compute_dtype("auto", "cpu")
    assert store.metadata.dtype == "float16"
    assert 0 < summary.startup_s <= summary.seconds
    made["three_frames"] = (3, 30.0)
    assert summary.clips == sum(num_clips(n, 16, 8) for n, _ in made.values()) == 7
    for vid, (frames, fps) in made.items():
        row = rows[vid]
        assert row["status"] == "ok" and row["num_frames"] == frames and row["fps"] == pytest.approx(fps)
        loaded = store.load(vid)
        count = num_clips(frames, 16, 8)
        assert loaded.features.shape == (count, 4096) and loaded.features.dtype == np.float16
        assert np.isfinite(loaded.features).all() and row["num_clips"] == count
        first = np.arange(count) * 8
        np.testing.assert_allclose(loaded.clip_start_s, first / fps, atol=2e-3)
        last = np.minimum(first + 16, frames)  # a short video's clip ends with its last real frame
        np.testing.assert_allclose(loaded.clip_end_s, last / fps, atol=2e-3)
        assert row["duration_s"] == pytest.approx(frames / fps, abs=2e-3)

    again = _run(sources, tmp_path / "store")  # everything recorded: nothing to do
    assert (again.done, again.failed, again.skipped) == (0, 0, len(sources))
    retried = _run(sources, tmp_path / "store", retry_failed=True)
    assert (retried.done, retried.failed, retried.skipped) == (0, 4, 5)
    assert sorted(FeatureStore(tmp_path / "store").ok_video_ids()) == sorted(made)


def test_real_video_resampled_to_a_fixed_rate(ray_session, tmp_path: Path, shared_data: Path) -> None:
    sources = [VideoSource("pancake", str(shared_data / "videos" / "flipping_a_pancake.mkv"))]
    summary = _run(sources, tmp_path / "store", fps="3", compute_dtype="float32")
    assert (summary.done, summary.failed) == (1, 0)
    store = FeatureStore(tmp_path / "store")
    assert store.metadata.fps == "3" and store.metadata.compute_dtype == "float32"
    schema = pq.read_schema(next((tmp_path / "store" / "clips").glob("*.parquet")))
    assert schema.metadata[b"drn.compute_dtype"] == b"float32" and schema.metadata[b"drn.dtype"] == b"float16"
    row = store.videos().to_pylist()[0]
    # 10.333 s sampled at 3 fps: 31 frames -> floor((31 - 16) / 8) + 1 = 2 clips of 16/3 s, 8/3 s apart
    assert (row["num_frames"], row["num_clips"], row["width"], row["height"]) == (31, 2, 426, 240)
    loaded = store.load("pancake")
    np.testing.assert_allclose(loaded.clip_start_s, [0.0, 8 / 3], atol=1e-5)
    np.testing.assert_allclose(loaded.clip_end_s, [16 / 3, 24 / 3], atol=1e-5)
    assert np.isfinite(loaded.features).all() and loaded.features.shape == (2, 4096)
    with pytest.raises(InputError, match="another kind.*drn.fps: '3' vs 'native'"):
        _run(sources, tmp_path / "store", fps="native")
    # another compute dtype is not another kind of store (the features agree): the store takes it
    assert _run(sources, tmp_path / "store", fps="3", compute_dtype="bfloat16", retry_failed=True).skipped == 1


def test_every_rate_the_job_prints_for_a_real_video_is_measured(ray_session, tmp_path: Path, shared_data: Path,
                                                                 capsys) -> None:
    """``jobs.extract`` on the real 10 s video: each clips/s it prints is the clips over a measured span of the
    run (no faster than C3D alone can go, with room for load; once it printed a "rate after start-up" of
    1913 clips/s for one video on 2 CPUs)."""
    video = shared_data / "videos" / "flipping_a_pancake.mkv"
    started = time.perf_counter()
    code = extract_job.main(["--videos", str(video), "--out", str(tmp_path / "store"), "--weights", "random",
                             "--no-progress"])
    wall = time.perf_counter() - started
    out = capsys.readouterr().out
    assert code == 0, out
    clips = int(re.search(r"clips: (\d+)", out).group(1))
    line = next(line for line in out.splitlines() if line.startswith("throughput: "))
    over = float(re.search(r"over ([\d.]+) s", line).group(1))
    rates = [float(rate) for rate in re.findall(r"([\d.]+) clips/s", out)]
    assert clips == num_clips(310, 16, 8) and 0 < over <= wall + 0.05  # printed to 0.1 s
    assert rates == [pytest.approx(clips / over, rel=0.05, abs=0.06)]  # one rate: the clips over the whole run
    alone = network_clips_per_s(FeatureStore(tmp_path / "store").metadata.compute_dtype, threads=2)
    assert rates[0] <= 2 * alone, f"{rates[0]} clips/s printed, C3D alone does {alone:.2f}"


def network_clips_per_s(dtype: str, threads: int, clips: int = 8) -> float:
    """C3D fc6 alone on this CPU: clips per second over ``clips`` clips after a warm-up batch."""
    import torch

    from pipeline.c3d import C3DFeatureExtractor, build_c3d

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        extractor = C3DFeatureExtractor(build_c3d(None, seed=0), dtype=dtype, batch_size=clips)
        crops = np.random.default_rng(0).integers(0, 256, (clips, 16, 112, 112, 3), dtype=np.uint8)
        extractor(crops[:2])
        started = time.perf_counter()
        extractor(crops)
        return clips / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(previous)


def test_cli_errors_exit_2_with_one_line(tmp_path: Path, capsys) -> None:
    for name in ("one/v.mp4", "two/v.mp4"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        _video(tmp_path / name, 2, 10.0)
    code = extract_job.main(["--videos", str(tmp_path), "--out", str(tmp_path / "s"), "--weights", "random"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "two inputs have the video_id 'v'" in err
    code = extract_job.main(["--videos", str(tmp_path / "one"), "--out", str(tmp_path / "s"),
                             "--weights", str(tmp_path / "c3d.pickle")])
    assert code == 2 and "C3D weights file not found" in capsys.readouterr().err
    code = extract_job.main(["--videos", str(tmp_path / "one"), "--out", str(tmp_path / "s"), "--weights",
                             "random", "--fps", "fast"])
    assert code == 2 and "--fps must be 'native' or a positive number" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # nothing started


def _complete_rows(store: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """video_id of every videos/ row, and (video_id, chunk) of every clips/ row, over the sealed shards."""
    sealed = {p.stem for p in (store / "videos").glob("*.parquet")}
    videos = [v for s in sealed for v in pq.read_table(store / "videos" / f"{s}.parquet")["video_id"].to_pylist()]
    chunks = []
    for shard in sealed:
        path = store / "clips" / f"{shard}.parquet"
        if path.exists():
            t = pq.read_table(path, columns=["video_id", "chunk"])
            chunks += list(zip(t["video_id"].to_pylist(), t["chunk"].to_pylist(), strict=True))
    return videos, chunks


def test_killed_job_resumes_with_every_video_once(ray_session, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    ids = [f"v{i}" for i in range(6)]
    for vid in ids:
        _video(lib / f"{vid}.mp4", 20, 25.0)  # one clip each
    store = tmp_path / "store"
    # The driver SIGKILLs itself right after its second video is written: a real kill at a known point, while
    # its third shard is open and later videos are in flight.
    script = (
        "import os, signal, sys\n"
        "from pipeline.extract import Resources, run_extraction\n"
        "from pipeline.c3d import C3DConfig, random_weights_id\n"
        "from pipeline.sources import list_videos\n"
        "written = []\n"
        "def on_video(record):\n"
        "    written.append(record)\n"
        "    if len(written) == 2:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "run_extraction(list_videos(sys.argv[1]), sys.argv[2], C3DConfig(weights='random', seed=1), weights=None,\n"
        "               weights_sha256=random_weights_id(1), resources=Resources(batch_size=2, torch_threads=2),\n"
        "               videos_per_shard=1, on_video=on_video)\n"
    )
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address, PYTHONPATH=str(REPO))
    job = subprocess.run([sys.executable, "-c", script, str(lib), str(store)], cwd=REPO, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180)
    assert job.returncode == -signal.SIGKILL
    done_before = set(FeatureStore(store).ok_video_ids())
    assert 1 <= len(done_before) < len(ids)

    summary = _run(list_videos(str(lib)), store)
    assert summary.skipped == len(done_before) and summary.done == len(ids) - len(done_before)
    videos, chunks = _complete_rows(store)
    assert sorted(videos) == ids  # each video recorded exactly once
    assert sorted(chunks) == sorted(set(chunks)) and {v for v, _ in chunks} == set(ids)
    reader = FeatureStore(store)
    assert all(reader.load(v).num_clips == 1 for v in ids)


def test_segments_out_of_order_and_interleaved_are_written_in_order(tmp_path: Path) -> None:
    from drn.store import FeatureStoreWriter, StoreMetadata
    from pipeline.extract import SegmentWriter

    meta = StoreMetadata("c3d-sports1m", "fc6", "random-seed0", 4, 2, "native", 8, "float32")
    writer = FeatureStoreWriter(tmp_path, meta, videos_per_shard=1, max_chunk_bytes=3 * 8 * 4)
    segments = SegmentWriter(writer, clip_len=4, clip_stride=2)

    def seg(vid: str, index: int, first: int, count: int, last: bool, frames: int = -1, status: str = "ok") -> dict:
        clips = np.arange(first, first + count, dtype=np.float32)
        return {"video_id": vid, "uri": f"{vid}.mp4", "segment": index, "last": last, "status": status,
                "error": "" if status == "ok" else "broken", "fps": 10.0, "num_frames": frames, "duration_s": 1.0,
                "width": 8, "height": 6, "features": np.repeat(clips[:, None], 8, axis=1),
                "clip_start_s": clips * 0.2, "clip_end_s": clips * 0.2 + 0.4}

    # a: 5 clips (12 frames) in three segments; b: fails in its second segment; c: 1 clip
    order = [seg("a", 1, 2, 2, False), seg("b", 0, 0, 2, False), seg("a", 0, 0, 2, False),
             seg("c", 0, 0, 1, True, frames=3), seg("b", 1, 0, 0, True, status="failed"),
             seg("a", 2, 4, 1, True, frames=12)]
    records = [r for r in (segments.add(s) for s in order) if r is not None]
    writer.close()
    assert [(r.video_id, r.status, r.num_clips) for r in records] == [("c", "ok", 1), ("b", "failed", 0),
                                                                       ("a", "ok", 5)]
    store = FeatureStore(tmp_path)
    np.testing.assert_array_equal(store.load("a").features[:, 0], np.arange(5))
    assert sorted(store.ok_video_ids()) == ["a", "c"]
    videos, _ = _complete_rows(tmp_path)
    assert sorted(videos) == ["a", "b", "c"]
