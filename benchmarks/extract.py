"""Extraction benchmark: decoding speed, C3D speed, the whole Ray pipeline against the network alone, and the
peak memory of extracting a 1-minute and a 10-minute video.

    .venv/bin/python benchmarks/extract.py [--quick]

Prints a markdown table (paste it into benchmarks/RESULTS.md with the machine it ran on).
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


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} cores, {cpu}, {platform.system()}; load average at start {load:.1f}"


def make_video(path: Path, seconds: float, fps: float, width: int, height: int) -> Path:
    from pipeline.synthetic import make_library

    if not path.exists():
        out = make_library(path.parent / (path.stem + "_lib"), num_videos=1, seed=0, min_duration_s=seconds,
                           max_duration_s=seconds, fps=fps, width=width, height=height)
        Path(out["video_dir"], "synth_0000.mp4").rename(path)
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


def bench_network(clips: int, autocast: str, threads: int, batch: int) -> float:
    """C3D clips per second on the CPU, fc6, seeded random weights."""
    import torch

    from pipeline.c3d import C3DFeatureExtractor, build_c3d

    torch.set_num_threads(threads)
    extractor = C3DFeatureExtractor(build_c3d(None, seed=0), autocast=autocast, batch_size=batch)
    crops = np.random.default_rng(0).integers(0, 256, (clips, 16, 112, 112, 3), dtype=np.uint8)
    extractor(crops[:batch])  # warm up
    start = time.perf_counter()
    extractor(crops)
    return clips / (time.perf_counter() - start)


def bench_pipeline(library: Path, store: Path, threads: int, batch: int) -> dict:
    import ray

    from pipeline.c3d import C3DConfig
    from pipeline.extract import Resources, run_extraction
    from pipeline.sources import list_videos

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        summary = run_extraction(list_videos(str(library)), str(store), C3DConfig(weights="random"), weights=None,
                                 weights_sha256="random-seed0",
                                 resources=Resources(batch_size=batch, torch_threads=threads, decode_tasks=1))
    finally:
        ray.shutdown()
    return {"videos": summary.done, "clips": summary.clips, "seconds": summary.seconds,
            "clips_per_s": summary.clips / summary.seconds}


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it does not carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(video: str, store: str) -> None:
    """Decode, cut and write one video with a stand-in for the network; print peak RSS (MiB) as JSON."""
    from drn.store import FeatureStoreWriter
    from pipeline.c3d import C3DConfig, store_metadata
    from pipeline.extract import SegmentWriter, decode_segments

    baseline = peak_rss_mib()  # after the imports (torch, decord, av, pyarrow)
    config = C3DConfig(weights="random")
    writer = FeatureStoreWriter(store, store_metadata(config, "random-seed0"))
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


def bench_memory(video: Path, store: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(video), str(store)], check=True,
                         capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--work", default=None, help="folder for generated videos (default: a temporary one)")
    parser.add_argument("--parts", default="decode,network,pipeline,memory",
                        help="comma-separated subset of decode,network,pipeline,memory")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_extract_"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str]] = []
    print(f"machine: {machine()}", flush=True)

    parts = set(args.parts.split(","))
    shared = ROOT.parent / "shared" / "data" / "videos" / "flipping_a_pancake.mkv"
    decode_inputs = [("426x240 H.264 (flipping_a_pancake.mkv)", shared)] if shared.exists() else []
    decode_inputs.append(("640x360 H.264 synthetic, 20 s 30 fps", make_video(work / "v360.mp4", 20, 30, 640, 360)))
    for name, video in decode_inputs if "decode" in parts else []:
        frames, fps = bench_decode(video)
        rows.append(("decode to 128x171, 1 thread", name, f"{fps:.0f} frames/s ({frames} frames)"))
        print(rows[-1], flush=True)

    clips = 4 if args.quick else 8
    network = {}
    for autocast in ("none", "bf16") if parts & {"network", "pipeline"} else ():
        network[autocast] = bench_network(clips, autocast, threads=2, batch=4)
        label = "float32" if autocast == "none" else "bf16 autocast"
        speed = f"{network[autocast]:.2f} clips/s"
        rows.append((f"C3D fc6, CPU, 2 threads, batch 4, {label}", f"{clips} clips", speed))
        print(rows[-1], flush=True)

    library = work / "library"
    if "pipeline" in parts and not library.exists():
        from pipeline.synthetic import make_library

        make_library(library, num_videos=3 if args.quick else 4, seed=1, min_duration_s=4 if args.quick else 6,
                     max_duration_s=4 if args.quick else 6, fps=25, width=320, height=240)
    if "pipeline" in parts:
        result = bench_pipeline(library / "videos", work / "store_pipeline", threads=2, batch=4)
        ratio = result["clips_per_s"] / network["none"]
        rows.append(("Ray pipeline end to end (1 decode task, 1 C3D actor, 2 threads, float32)",
                     f"{result['videos']} videos, {result['clips']} clips",
                     f"{result['clips_per_s']:.2f} clips/s = {ratio:.2f} x the network alone"))
        print(rows[-1], flush=True)

    for minutes in (1, 10) if "memory" in parts else ():
        video = make_video(work / f"long_{minutes}min.mp4", 60 * minutes, 25, 320, 240)
        mem = bench_memory(video, work / f"store_mem_{minutes}")
        rows.append((f"peak RSS, decode + cut + write, {minutes}-minute 320x240 25 fps video",
                     f"{mem['clips']} clips (network replaced by a stand-in)",
                     f"{mem['peak_rss_mib']:.0f} MiB ({mem['baseline_rss_mib']:.0f} MiB after imports)"))
        print(rows[-1], flush=True)

    print("\n| measurement | input | result |\n|---|---|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")


if __name__ == "__main__":
    main()
