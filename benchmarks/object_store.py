"""Object storage against local disk: extraction and grounding on the same videos and stores, same run.

    .venv/bin/python benchmarks/object_store.py                       # full size (about 10-15 min on 2 cores)
    .venv/bin/python benchmarks/object_store.py --latency-ms 20       # as if the store were 10 ms away each way
    .venv/bin/python benchmarks/object_store.py --videos 3 --ground-videos 40 --ground-queries 4   # a check

The S3 server is the one the AWS variables name (``AWS_ENDPOINT_URL`` ..., a bucket from ``--bucket``), or else a
moto server this script starts on loopback (moto is in the ``dev`` extra; it is slower than a real store per
request, so its numbers are an upper bound on the cost). ``--latency-ms`` puts a proxy in front of the server that
delays every request/response turn by that much (half each way), to see what a remote store's round trips cost.

Parts, each local disk vs ``s3://``:

1. **decode**: listing the library and decoding every video (``pipeline.extract.decode_segments``, the extraction's
   stage 1, in this process): one HEAD and one GET per video on ``s3://``, no temporary file.
2. **store writes**: the extraction's writer (``FeatureStoreWriter``), ``--videos-per-shard`` 1, 8 and 64: a shard
   is a few PUTs, so more videos per shard hide the round trips.
3. **extraction**: the whole Ray pipeline (decoding tasks, one C3D actor, random weights) from videos to store.
4. **grounding**: the whole job (feature store -> Ray Data actors -> LanceDB), small model, with ``--videos-per-batch``
   2 and 64 (an actor reads a shard's clips once and keeps it, so bigger batches read fewer times) and
   ``--write-batch-rows`` 500 and 50,000 (each LanceDB merge is several round trips). pairs/s count the scoring and
   the writes; "whole job" adds the fixed costs: the checks, the library ranks and the indices.

Prints one markdown table; paste it into benchmarks/RESULTS.md with the machine line it prints.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    return f"{os.cpu_count()} cores, {cpu}, {platform.system()}; load average {os.getloadavg()[0]:.1f}"


class LatencyProxy:
    """A TCP proxy on loopback that delays each turn of a connection (client speaks after the server, or the
    server after the client) by half the round-trip latency; bulk transfer within a turn is not delayed."""

    def __init__(self, target: str, latency_ms: float) -> None:
        host, port = target.split("://", 1)[1].split(":")
        self.target, self.delay = (host, int(port)), latency_ms / 2000.0
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.endpoint = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            turn = {"last": None}
            for src, dst, side in ((client, upstream, "c"), (upstream, client, "s")):
                threading.Thread(target=self._pump, args=(src, dst, side, turn), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, side: str, turn: dict) -> None:
        try:
            while data := src.recv(1 << 16):
                if turn["last"] != side:
                    turn["last"] = side
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()


def open_store(args: argparse.Namespace):
    """(endpoint env, bucket, cleanup): the AWS variables' server, or a moto server started here."""
    if os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or args.bucket:
        if not args.bucket:
            raise SystemExit("--bucket is needed with a server from the AWS variables")
        return dict(os.environ), args.bucket, lambda: None
    from s3_server import start_s3_server

    server = start_s3_server()
    return {**os.environ, **server.env}, server.new_bucket("bench"), server.stop


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def bench_decode(videos: str) -> dict:
    from pipeline.extract import decode_segments
    from pipeline.sources import list_videos

    def run() -> int:
        frames = 0
        for source in list_videos(videos):
            rows = list(decode_segments({"video_id": source.video_id, "uri": source.uri}, clip_len=16,
                                        clip_stride=8, fps=None, clips_per_row=8))
            frames += int(rows[-1]["num_frames"])
        return frames

    seconds, frames = timed(run)
    return {"seconds": seconds, "rate": frames / seconds, "unit": "frames/s"}


def bench_writes(out: str, num_videos: int, per_shard: int) -> dict:
    from drn.store import FeatureStoreWriter, StoreMetadata, VideoRecord

    meta = StoreMetadata("bench", "fc6", "none", 16, 8, "native", 4096, "float16")
    rng = np.random.default_rng(0)
    feats = rng.random((20, 4096), dtype=np.float32)  # 20 clips a video, 160 KB in float16
    starts = np.arange(20, dtype=np.float32)

    def run() -> None:
        with FeatureStoreWriter(out, meta, videos_per_shard=per_shard) as writer:
            for v in range(num_videos):
                writer.add_clips(f"v{v:05d}", feats, starts, starts + 1)
                writer.finish_video(VideoRecord(f"v{v:05d}", "x", duration_s=21.0, num_clips=20))

    seconds, _ = timed(run)
    return {"seconds": seconds, "rate": num_videos / seconds, "unit": "videos/s"}


def bench_extract(videos: str, out: str, threads: int) -> dict:
    from pipeline.c3d import C3DConfig, random_weights_id
    from pipeline.extract import Resources, run_extraction
    from pipeline.sources import list_videos

    config = C3DConfig(weights="random", seed=0, fps="8", clip_stride=16)
    seconds, summary = timed(lambda: run_extraction(
        list_videos(videos), out, config, weights=None, weights_sha256=random_weights_id(0),
        resources=Resources(batch_size=8, torch_threads=threads, decode_tasks=1), videos_per_shard=16))
    assert summary.failed == 0, summary.failures
    return {"seconds": seconds, "rate": summary.clips / seconds, "unit": "clips/s"}


def write_grounding_inputs(root: Path, num_videos: int, num_queries: int) -> dict:
    import torch

    from drn.checkpoint import save_checkpoint
    from drn.config import load_config
    from drn.model import DRN
    from drn.store import FeatureStoreWriter, StoreMetadata, VideoRecord
    from drn.text import Vocabulary

    words = "a person opens the fridge door someone sits down on chair man cuts onion in kitchen".split()
    rng = np.random.default_rng(0)
    meta = StoreMetadata("bench", "x", "none", 16, 8, "native", 256, "float16")
    with FeatureStoreWriter(root / "features", meta, videos_per_shard=64) as writer:
        for v in range(num_videos):
            n = int(rng.integers(10, 40))
            writer.add_clips(f"v{v:05d}", rng.random((n, 256), dtype=np.float32), np.arange(n, dtype=np.float32),
                             np.arange(n, dtype=np.float32) + 2)
            writer.finish_video(VideoRecord(f"v{v:05d}", "x", duration_s=float(n + 1), num_clips=n))
    torch.manual_seed(0)
    config = load_config(None, ["model.feature_dim=256"])
    vocab = Vocabulary(["<pad>", "<unk>", *dict.fromkeys(words)])
    save_checkpoint(root / "model.pt", DRN(config, torch.randn(len(vocab), 384)).eval(), vocab, stage=1)
    texts = {" ".join(rng.choice(words, size=int(rng.integers(4, 9)))) for _ in range(num_queries * 3)}
    (root / "queries.txt").write_text("\n".join(sorted(texts)[:num_queries]) + "\n")
    return {"features": str(root / "features"), "checkpoint": str(root / "model.pt"),
            "queries": str(root / "queries.txt")}


def bench_ground(inputs: dict, db: str, videos_per_batch: int, write_batch_rows: int) -> dict:
    from moments.library import Resources, run_grounding

    seconds, summary = timed(lambda: run_grounding(
        inputs["checkpoint"], inputs["features"], inputs["queries"], db, top_k=3, write_batch_rows=write_batch_rows,
        resources=Resources(videos_per_batch=videos_per_batch, pair_batch_size=512)))
    assert summary.videos_failed == 0, summary.failures
    # summary.seconds: scoring and writing the rows; the rest of the job: checks, library ranks, indices
    return {"seconds": summary.seconds, "rate": summary.pairs / summary.seconds, "unit": "pairs/s",
            "whole_job_s": seconds}


def upload(local: str, uri: str) -> str:
    import pyarrow.fs as pafs

    from drn.store.object_store import filesystem_for

    fs, path = filesystem_for(uri)
    pafs.copy_files(local, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    return uri


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=24, help="videos of the extraction parts (10-15 s, 320x240)")
    parser.add_argument("--write-videos", type=int, default=256, help="videos written by the store-writes part")
    parser.add_argument("--ground-videos", type=int, default=1000, help="videos of the grounding part")
    parser.add_argument("--ground-queries", type=int, default=16, help="queries of the grounding part")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added round-trip latency to the S3 server")
    parser.add_argument("--bucket", default=None, help="bucket on the AWS variables' server (default: moto here)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the C3D actor")
    parser.add_argument("--parts", default="decode,writes,extract,ground", help="comma list of parts to run")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    env, bucket, stop_server = open_store(args)
    proxy = None
    if args.latency_ms > 0:
        proxy = LatencyProxy(env["AWS_ENDPOINT_URL"], args.latency_ms)
        env["AWS_ENDPOINT_URL"] = proxy.endpoint
    os.environ.update(env)  # Ray's local workers inherit it
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-s3-"))
    print(f"machine: {machine()}; S3: {env.get('AWS_ENDPOINT_URL') or 'AWS'} (+{args.latency_ms:g} ms round trip)",
          flush=True)
    rows: list[tuple[str, str, dict]] = []
    try:
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        s3 = f"s3://{bucket}/bench-{int(time.time())}"
        if parts & {"decode", "extract"}:
            from pipeline.synthetic import make_library

            library = make_library(work / "library", num_videos=args.videos, seed=0, min_duration_s=10.0,
                                   max_duration_s=15.0, width=320, height=240)
            remote_videos = upload(library["video_dir"], f"{s3}/videos")
            if "decode" in parts:
                rows.append(("decode (stage 1, this process)", "local", bench_decode(library["video_dir"])))
                rows.append(("decode (stage 1, this process)", "s3", bench_decode(remote_videos)))
            if "extract" in parts:
                rows.append(("extraction, Ray pipeline, 1 C3D actor", "local",
                             bench_extract(library["video_dir"], str(work / "features"), args.threads)))
                rows.append(("extraction, Ray pipeline, 1 C3D actor", "s3",
                             bench_extract(remote_videos, f"{s3}/features", args.threads)))
        if "writes" in parts:
            for per_shard in (1, 8, 64):
                for where, out in (("local", str(work / f"writes{per_shard}")), ("s3", f"{s3}/writes{per_shard}")):
                    rows.append((f"store writes, {per_shard} video(s) per shard", where,
                                 bench_writes(out, args.write_videos, per_shard)))
        if "ground" in parts:
            inputs = write_grounding_inputs(work / "ground", args.ground_videos, args.ground_queries)
            remote = dict(inputs, features=upload(inputs["features"], f"{s3}/ground/features"),
                          checkpoint=upload(inputs["checkpoint"], f"{s3}/ground/model.pt"),
                          queries=upload(inputs["queries"], f"{s3}/ground/queries.txt"))
            for per_batch, write_rows in ((2, 500), (64, 500), (64, 50_000)):
                label = f"grounding, {per_batch} videos per actor call, {write_rows} rows per write"
                for where, given, db in (("local", inputs, str(work / f"db{per_batch}-{write_rows}")),
                                         ("s3", remote, f"{s3}/db{per_batch}-{write_rows}")):
                    rows.append((label, where, bench_ground(given, db, per_batch, write_rows)))
    finally:
        if proxy is not None:
            proxy.close()
        stop_server()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nmachine: {machine()} (at the end)\n")
    print("| part | local | s3:// | s3 / local |\n|---|---|---|---|")
    def cell(r: dict) -> str:
        whole = f"; whole job {r['whole_job_s']:.1f} s" if "whole_job_s" in r else ""
        return f"{r['rate']:.1f} {r['unit']} ({r['seconds']:.1f} s{whole})"

    for label in dict.fromkeys(label for label, _, _ in rows):
        local = next(r for lbl, where, r in rows if lbl == label and where == "local")
        remote = next(r for lbl, where, r in rows if lbl == label and where == "s3")
        print(f"| {label} | {cell(local)} | {cell(remote)} | {remote['rate'] / local['rate']:.2f} |")
    print("\n" + json.dumps([{"part": lbl, "where": w, **r} for lbl, w, r in rows]))


if __name__ == "__main__":
    main()
