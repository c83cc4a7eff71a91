"""Extraction benchmark: decoding speed, C3D speed per compute dtype, the whole Ray pipeline against the network
alone, and the memory of extracting long videos.

    .venv/bin/python benchmarks/extract.py                                # decode, network, pipeline, memory
    .venv/bin/python benchmarks/extract.py --quick                        # a smoke run at tiny sizes
    .venv/bin/python benchmarks/extract.py --parts memory-pipeline --memory-minutes 60   # full C3D cost, ~1 h

Parts (``--parts``, comma-separated):

- ``decode``: frames/s of one decoder thread at 128x171 (the real sample video when ../shared/data is there).
- ``network``: C3D fc6 clips/s alone (seeded random weights, ``--threads`` torch threads, batch ``--batch``) in
  float32, bfloat16 and ``auto`` (what ``jobs.extract --dtype auto`` resolves to on this machine).
- ``pipeline``: ``run_extraction`` on a synthetic library with the resources a user gets by default
  (``default_resources``), per ``--pipeline-dtypes``: clips/s over the whole run against the network alone in
  the same dtype, and when the first features were written (Ray Data, the C3D actor, the first batch). No rate
  "after start-up": the driver receives rows in bursts, so that split cannot be measured from it.
- ``real``: ``python -m jobs.extract`` as a user runs it (a fresh local Ray, default resources) on each real video
  of ../shared/data/videos (or ``--real-videos``), every clips/s it prints set against the network alone in the
  same dtype, timed right after the job (same load): none may exceed it.
- ``memory``: peak RSS of decode + cut + write (the network replaced by a stand-in) of long videos of
  ``--memory-minutes`` (320x240, 25 fps, cheap to make), for the store's chunk sizes ``--memory-chunk-mib``.
- ``memory-pipeline``: the real Ray extraction (full C3D cost) of a video of each ``--memory-minutes``; peak RSS
  of the driver and of the Ray worker processes, sampled every 0.5 s.

Prints a markdown table (paste it into benchmarks/RESULTS.md with the machine it ran on: the first line names the
CPU model, its bf16 support and the load average; the last line the load at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rss_sampler import RssSampler  # noqa: E402  (benchmarks/ is the script's folder)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    from pipeline.c3d import cpu_has_native_bf16

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return f"{os.cpu_count()} cores, {cpu_model()} ({bf16}), {platform.system()}; load average at start {load:.1f}"


def make_video(path: Path, seconds: float, fps: float, width: int, height: int) -> Path:
    """A synthetic-library video (shapes that move), for decoding and the pipeline."""
    from pipeline.synthetic import make_library

    if not path.exists():
        out = make_library(path.parent / (path.stem + "_lib"), num_videos=1, seed=0, min_duration_s=seconds,
                           max_duration_s=seconds, fps=fps, width=width, height=height)
        Path(out["video_dir"], "synth_0000.mp4").rename(path)
    return path


def make_long_video(path: Path, minutes: float, fps: float = 25.0, width: int = 320, height: int = 240) -> Path:
    """A long video that is cheap to make (a bar sweeping a flat background); decoding it costs what any
    320x240 H.264 stream of its length costs."""
    from pipeline.synthetic import write_video

    if not path.exists():
        def frames():
            for i in range(int(minutes * 60 * fps)):
                frame = np.full((height, width, 3), 40, np.uint8)
                frame[:, (i * 3) % width:(i * 3) % width + 8] = (200, 30, 30)
                yield frame

        write_video(path, frames(), fps)
    return path


def bench_decode(video: Path, repeats: int = 2) -> tuple[int, float]:
    """Frames per second of one decoder thread at 128x171 (best of ``repeats``)."""
    from pipeline.decode import VideoDecoder

    best = float("inf")
    frames = 0
    for _ in range(repeats):
        start = time.perf_counter()
        frames = sum(len(b.frames) for b in VideoDecoder(str(video)).blocks())
        best = min(best, time.perf_counter() - start)
    return frames, frames / best


def bench_network(clips: int, dtype: str, threads: int, batch: int) -> tuple[str, float]:
    """(resolved dtype, C3D fc6 clips per second) on the CPU, seeded random weights, after one warm-up batch."""
    import torch

    from pipeline.c3d import C3DFeatureExtractor, build_c3d

    torch.set_num_threads(threads)
    extractor = C3DFeatureExtractor(build_c3d(None, seed=0), dtype=dtype, batch_size=batch)
    crops = np.random.default_rng(0).integers(0, 256, (clips, 16, 112, 112, 3), dtype=np.uint8)
    extractor(crops[:batch])  # warm up
    start = time.perf_counter()
    extractor(crops)
    return extractor.dtype, clips / (time.perf_counter() - start)


def bench_pipeline(library: Path, store: Path, dtype: str, batch: int) -> dict:
    """One extraction of the library with the default resources of this machine (a fresh local Ray)."""
    import ray

    from pipeline.c3d import C3DConfig
    from pipeline.extract import default_resources, run_extraction
    from pipeline.sources import list_videos

    ray.init(include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        resources = default_resources(0, None, batch_size=batch)
        decode_tasks = resources.decode_tasks or max(1, int(ray.cluster_resources().get("CPU", 1))
                                                    - int(round(resources.cpus_per_actor * resources.num_actors)))
        summary = run_extraction(list_videos(str(library)), str(store),
                                 C3DConfig(weights="random", compute_dtype=dtype), weights=None,
                                 weights_sha256="random-seed0", resources=resources)
    finally:
        ray.shutdown()
    return {"videos": summary.done, "clips": summary.clips, "seconds": summary.seconds,
            "clips_per_s": summary.clips / summary.seconds, "startup_s": summary.startup_s,
            "dtype": summary.compute_dtype,
            "decode_tasks": decode_tasks, "torch_threads": resources.torch_threads}


def bench_real_job(video: Path, store: Path) -> dict:
    """``python -m jobs.extract`` on one video as a user runs it; the clips, dtype and rates it printed."""
    import re

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a fresh local Ray, not a cluster
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "jobs.extract", "--videos", str(video), "--out", str(store),
                          "--weights", "random", "--no-progress"], capture_output=True, text=True, cwd=ROOT,
                         env=env, check=True).stdout
    wall = time.perf_counter() - started
    line = next(line for line in out.splitlines() if line.startswith("throughput: "))
    return {"clips": int(re.search(r"clips: (\d+)", out).group(1)),
            "dtype": re.search(r"C3D computed in (\w+)", out).group(1),
            "rates": [float(rate) for rate in re.findall(r"([\d.]+) clips/s", out)], "line": line,
            "wall_s": wall}


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it does not carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(video: str, store: str, chunk_bytes: int) -> None:
    """Decode, cut and write one video with a stand-in for the network; print peak RSS (MiB) as JSON."""
    from drn.store import FeatureStoreWriter
    from pipeline.c3d import C3DConfig, store_metadata
    from pipeline.extract import SegmentWriter, decode_segments

    baseline = peak_rss_mib()  # after the imports (torch, decord, av, pyarrow)
    config = C3DConfig(weights="random", compute_dtype="float32")
    writer = FeatureStoreWriter(store, store_metadata(config, "random-seed0"), max_chunk_bytes=chunk_bytes)
    segments = SegmentWriter(writer, 16, 8)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    clips = 0
    with writer:
        for row in decode_segments({"video_id": "v", "uri": video}, clip_len=16, clip_stride=8, fps=None,
                                   clips_per_row=8):
            row = dict(row)
            n = len(row.pop("clips"))
            row["features"] = rng.random((n, 4096), dtype=np.float32).astype(np.float16)  # the network's output
            clips += n
            segments.add(row)
    print(json.dumps({"peak_rss_mib": peak_rss_mib(), "baseline_rss_mib": baseline, "clips": clips,
                      "seconds": time.perf_counter() - start}))


def bench_memory(video: Path, store: Path, chunk_bytes: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(video), str(store), str(chunk_bytes)],
                         check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_pipeline_child(video: str, store: str) -> None:
    """The real extraction (Ray Data, C3D actor, default resources) of one video; peaks as JSON."""
    import ray

    from pipeline.c3d import C3DConfig
    from pipeline.extract import default_resources, run_extraction
    from pipeline.sources import list_videos

    ray.init(include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    sampler = RssSampler()
    sampler.start()
    summary = run_extraction(list_videos(video), store, C3DConfig(weights="random"), weights=None,
                             weights_sha256="random-seed0", resources=default_resources(0, None))
    sampler.stop.set()
    sampler.join()
    ray.shutdown()
    print(json.dumps({"clips": summary.clips, "seconds": summary.seconds, "dtype": summary.compute_dtype,
                      "driver_peak_mib": sampler.driver_peak / 2**20,
                      "workers_peak_mib": sampler.workers_peak / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run of every part)")
    parser.add_argument("--work", default=None, help="folder for generated videos (default: a temporary one)")
    parser.add_argument("--parts", default="decode,network,pipeline,memory",
                        help="comma-separated subset of decode,network,pipeline,real,memory,memory-pipeline")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the network part (default 2)")
    parser.add_argument("--batch", type=int, default=8, help="clips per forward pass (default 8, the CPU default)")
    parser.add_argument("--clips", type=int, default=16, help="clips timed per dtype in the network part")
    parser.add_argument("--pipeline-videos", type=int, default=8, help="synthetic videos of the pipeline part")
    parser.add_argument("--pipeline-seconds", type=float, default=10.0, help="their length (25 fps, 320x240)")
    parser.add_argument("--pipeline-dtypes", default="auto,float32", help="compute dtypes of the pipeline part")
    parser.add_argument("--memory-minutes", default="1,10,60", help="video lengths of the memory parts")
    parser.add_argument("--memory-chunk-mib", default="1,4",
                        help="store chunk sizes of the memory part (1 is the default since issue 13, 4 before)")
    parser.add_argument("--real-videos", default=None,
                        help="comma-separated videos of the real part (default: ../shared/data/videos/*)")
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--memory-pipeline-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], args.memory_child[1], int(args.memory_child[2]))
        return
    if args.memory_pipeline_child:
        memory_pipeline_child(*args.memory_pipeline_child)
        return
    if args.quick:
        args.clips, args.pipeline_videos, args.pipeline_seconds = 4, 2, 3.0
        args.memory_minutes = "0.5,1"
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_extract_"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str]] = []

    def add(*row: str) -> None:
        rows.append(row)
        print(row, flush=True)

    print(f"machine: {machine()}", flush=True)
    parts = set(args.parts.split(","))
    shared = ROOT.parent / "shared" / "data" / "videos" / "flipping_a_pancake.mkv"
    decode_inputs = [("426x240 H.264 (flipping_a_pancake.mkv)", shared)] if shared.exists() else []
    decode_inputs.append(("640x360 H.264 synthetic, 20 s 30 fps", make_video(work / "v360.mp4", 20, 30, 640, 360)))
    for name, video in decode_inputs if "decode" in parts else []:
        frames, fps = bench_decode(video)
        add("decode to 128x171, 1 thread", name, f"{fps:.0f} frames/s ({frames} frames)")

    network: dict[str, float] = {}
    if parts & {"network", "pipeline"}:
        for dtype in ("float32", "bfloat16", "auto"):
            resolved, speed = bench_network(args.clips, dtype, args.threads, args.batch)
            network.setdefault(resolved, speed)
            label = f"auto (= {resolved})" if dtype == "auto" else dtype
            add(f"C3D fc6 alone, CPU, {args.threads} threads, batch {args.batch}, {label}", f"{args.clips} clips",
                f"{speed:.2f} clips/s")

    library = work / f"library_{args.pipeline_videos}x{args.pipeline_seconds:g}s"
    if "pipeline" in parts and not library.exists():
        from pipeline.synthetic import make_library

        make_library(library, num_videos=args.pipeline_videos, seed=1, min_duration_s=args.pipeline_seconds,
                     max_duration_s=args.pipeline_seconds, fps=25, width=320, height=240)
    for dtype in args.pipeline_dtypes.split(",") if "pipeline" in parts else []:
        result = bench_pipeline(library / "videos", work / f"store_pipeline_{dtype}_{time.time_ns()}", dtype,
                                args.batch)
        alone = network.get(result["dtype"]) or bench_network(args.clips, result["dtype"], args.threads,
                                                              args.batch)[1]
        add(f"Ray pipeline, --dtype {dtype} (= {result['dtype']}), default resources: {result['decode_tasks']} "
            f"decode task(s), 1 C3D actor x {result['torch_threads']} threads, batch {args.batch}",
            f"{result['videos']} videos, {result['clips']} clips",
            f"{result['clips_per_s']:.2f} clips/s over the whole run = {result['clips_per_s'] / alone:.2f} x the "
            f"network alone ({alone:.2f} clips/s); first features written after {result['startup_s']:.1f} s")

    real = ([Path(v) for v in args.real_videos.split(",")] if args.real_videos
            else sorted((ROOT.parent / "shared" / "data" / "videos").glob("*")))
    for video in real if "real" in parts else []:
        job = bench_real_job(video, work / f"store_real_{video.stem}_{time.time_ns()}")
        alone = bench_network(args.clips, job["dtype"], args.threads, args.batch)[1]  # right after: same load
        verdict = "at most" if max(job["rates"]) <= alone else "MORE THAN"
        add(f"python -m jobs.extract, default resources (= {job['dtype']}), {video.name}",
            f"{job['clips']} clips, job wall {job['wall_s']:.1f} s",
            f"printed {', '.join(f'{r:g}' for r in job['rates'])} clips/s: {verdict} the network alone "
            f"({alone:.2f} clips/s); `{job['line']}`")

    minutes = [float(m) for m in args.memory_minutes.split(",")]
    for length in minutes if "memory" in parts else []:
        video = make_long_video(work / f"long_{length:g}min.mp4", length)
        for mib in (float(c) for c in args.memory_chunk_mib.split(",")):
            mem = bench_memory(video, work / f"store_mem_{length:g}_{mib:g}_{time.time_ns()}", int(mib * 2**20))
            add(f"peak RSS, decode + cut + write, {length:g}-minute 320x240 25 fps video, {mib:g} MiB chunks",
                f"{mem['clips']} clips (network replaced by a stand-in)",
                f"{mem['peak_rss_mib']:.0f} MiB ({mem['baseline_rss_mib']:.0f} MiB after imports)")

    for length in minutes if "memory-pipeline" in parts else []:
        video = make_long_video(work / f"long_{length:g}min.mp4", length)
        out = subprocess.run([sys.executable, __file__, "--memory-pipeline-child", str(video),
                              str(work / f"store_memp_{length:g}_{time.time_ns()}")],
                             check=True, capture_output=True, text=True, cwd=ROOT)
        mem = json.loads(out.stdout.strip().splitlines()[-1])
        add(f"peak RSS, the Ray extraction (C3D {mem['dtype']}, default resources), {length:g}-minute 320x240 "
            "25 fps video", f"{mem['clips']} clips in {mem['seconds']:.0f} s",
            f"driver {mem['driver_peak_mib']:.0f} MiB, Ray workers {mem['workers_peak_mib']:.0f} MiB (summed)")

    print("\n| measurement | input | result |\n|---|---|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload average at the end {load:.1f}")


if __name__ == "__main__":
    main()
