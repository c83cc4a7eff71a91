"""Grounding throughput and memory: the batched path vs one pair at a time, FLOPs per pair, memory vs library size.

    .venv/bin/python benchmarks/ground.py                  # all three parts (about 5-8 minutes on 2 cores)
    .venv/bin/python benchmarks/ground.py --skip-memory    # throughput and FLOPs only

1. Throughput, the paper's sizes (D = 4096, T = 32, about 39 M parameters, random weights, CPU): the batched
   path (``Grounder.ground``: queries encoded once, each video pooled and projected once, pairs through the rest
   of the network ``pair_batch_size`` at a time, decoding included) against a loop that runs the whole model
   (``DRN.forward``) and decoding for one (query, video) pair at a time, the same model and threads.
2. FLOPs per pair with ``torch.utils.flop_counter`` (multiply-adds count 2): the pair side (fusion, pyramid,
   heads), the video side (per video, shared by all queries) and the query side (per query), to compare with a
   GPU's peak. No GPU is lent to this machine: GPU pairs/s are NOT measured, only bounded.
3. Memory as the library grows: the whole job (``moments.library.grounding.run_grounding``: feature store -> Ray Data
   actor -> LanceDB) on 1,000 and 10,000 synthetic videos, each size in a fresh process with its own local Ray.
   A sampler thread reads, every 0.2 s, the RSS of the driver and the summed RSS of the Ray worker processes
   this driver's local Ray started (descendants named ``ray::*``: the grounding actor, Ray Data's own
   helpers, idle workers); the peaks are reported (shared pages, e.g. the object store, count once per process).
   The model here is small (D = 256) so that 10,000 videos finish in minutes on two cores: memory flatness
   is a property of the pipeline (streaming batches, bounded write buffers), not of the model size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rss_sampler import RssSampler  # noqa: E402  (benchmarks/ is the script's folder)

from drn.config import load_config  # noqa: E402
from drn.decoding import decode_segments  # noqa: E402
from drn.inference import Grounder  # noqa: E402
from drn.model import DRN, count_parameters  # noqa: E402
from drn.text import Vocabulary  # noqa: E402

WORDS = ("a person opens the fridge door someone sits down on chair man cuts onion in kitchen woman reads book "
         "then walks out of room").split()
GPU_PEAKS_TFLOPS = {"H100 SXM, BF16 dense": 989.0, "A100, BF16 dense": 312.0}


def paper_model(feature_dim: int = 4096, num_segments: int = 32) -> Grounder:
    torch.manual_seed(0)
    config = load_config(None, [f"model.feature_dim={feature_dim}", f"model.num_segments={num_segments}"])
    vocab = Vocabulary(["<pad>", "<unk>", *dict.fromkeys(WORDS)])
    model = DRN(config, torch.randn(len(vocab), 384)).eval()
    return Grounder(model, config, vocab)


def make_queries(count: int, rng: np.random.Generator) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 10)))) for _ in range(count)]


def throughput(num_queries: int, num_videos: int, loop_pairs: int, pair_batch_size: int) -> dict:
    grounder = paper_model()
    rng = np.random.default_rng(0)
    texts = make_queries(num_queries, rng)
    grids = rng.random((num_videos, 32, 4096), dtype=np.float32)
    durations = rng.uniform(20, 60, num_videos)
    grounder.ground(grids[:2], grounder.encode_queries(texts[:2]), durations=durations[:2])  # warm-up
    started = time.perf_counter()
    queries = grounder.encode_queries(texts)
    results = grounder.ground(grids, queries, durations=durations, pair_batch_size=pair_batch_size)
    batched_s = time.perf_counter() - started
    assert len(results) == num_queries * num_videos

    words, mask = grounder.tokenize(texts)
    video = torch.from_numpy(grids)
    model, config = grounder.model, grounder.config
    started = time.perf_counter()
    with torch.no_grad():
        for n in range(loop_pairs):
            q, v = n % num_queries, (n // num_queries) % num_videos
            out = model(video[v:v + 1], words[q:q + 1], mask[q:q + 1]).flat()
            decode_segments(out, durations[v:v + 1], 32, config.decode)
    loop_s = time.perf_counter() - started
    batched = num_queries * num_videos / batched_s
    single = loop_pairs / loop_s
    return {"parameters_M": count_parameters(model) / 1e6, "queries": num_queries, "videos": num_videos,
            "batched_pairs_per_s": batched, "loop_pairs": loop_pairs, "loop_pairs_per_s": single,
            "ratio": batched / single, "pair_batch_size": pair_batch_size}


def flops() -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    grounder = paper_model()
    model = grounder.model.requires_grad_(False)  # plain inference tensors: the counter's module hooks stay quiet
    words, mask = grounder.tokenize(["a person opens the fridge door"])
    grid = torch.rand(1, 32, 4096)

    def count(fn) -> float:
        with FlopCounterMode(display=False) as counter:
            fn()
        return float(counter.get_total_flops())

    video_side = count(lambda: model.encode_video(grid))
    query_side = count(lambda: model.encode_query(words, mask))
    encoded_v, encoded_q = model.encode_video(grid), model.encode_query(words, mask)
    pair_side = count(lambda: model.decode_pairs(encoded_v, encoded_q))
    return {"pair_GFLOP": pair_side / 1e9, "video_GFLOP": video_side / 1e9, "query_GFLOP": query_side / 1e9,
            "single_pair_forward_GFLOP": (pair_side + video_side + query_side) / 1e9}


# ---------------------------------------------------------------------------------------------------- memory
def write_library(path: Path, num_videos: int, dim: int, rng: np.random.Generator) -> None:
    from drn.store import FeatureStoreWriter, StoreMetadata, VideoRecord

    meta = StoreMetadata("synthetic", "random", "none", clip_len=2, clip_stride=1, fps="2", feature_dim=dim)
    with FeatureStoreWriter(path, meta, videos_per_shard=64) as writer:
        for n in range(num_videos):
            duration = float(rng.uniform(20, 60))
            starts = np.linspace(0, duration - 2.0, 24)
            writer.add_clips(f"vid{n:06d}", rng.random((24, dim), dtype=np.float32), starts, starts + 2.0)
            writer.finish_video(VideoRecord(f"vid{n:06d}", "synthetic://", duration_s=duration, num_clips=24))


def memory_run(num_videos: int, num_queries: int) -> dict:
    """One library size, in this (fresh) process: write the store, run the whole job, report peaks."""
    import ray

    from drn.checkpoint import save_checkpoint
    from moments.library import Resources, run_grounding

    torch.set_num_threads(1)
    rng = np.random.default_rng(num_videos)
    root = Path(tempfile.mkdtemp(prefix="ground-bench-"))
    write_library(root / "features", num_videos, 256, rng)
    config = load_config("configs/synthetic.yaml", ["model.feature_dim=256", "model.num_segments=32"])
    vocab = Vocabulary(["<pad>", "<unk>", *dict.fromkeys(WORDS)])
    save_checkpoint(root / "model.pt", DRN(config, torch.randn(len(vocab), 384)).eval(), vocab, stage=1)
    (root / "queries.txt").write_text("\n".join(make_queries(num_queries, rng)) + "\n")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    sampler = RssSampler(every_s=0.2)
    sampler.start()
    grounding_peak = {"driver": 0, "workers": 0}

    def after_write(videos: int, rows: int) -> None:  # the peaks up to the last write: grounding + writing only
        grounding_peak.update(driver=sampler.driver_peak, workers=sampler.workers_peak)

    summary = run_grounding(str(root / "model.pt"), str(root / "features"), str(root / "queries.txt"),
                            str(root / "db"), top_k=2, resources=Resources(videos_per_batch=64),
                            write_batch_rows=20_000, on_write=after_write)
    sampler.stop.set()
    sampler.join()
    ray.shutdown()
    return {"videos": num_videos, "queries": summary.queries, "rows": summary.rows_written,
            "seconds": summary.seconds, "pairs_per_s": summary.pairs / summary.seconds,
            "driver_peak_MB": sampler.driver_peak / 2**20, "workers_peak_MB": sampler.workers_peak / 2**20,
            "driver_grounding_peak_MB": grounding_peak["driver"] / 2**20,
            "workers_grounding_peak_MB": grounding_peak["workers"] / 2**20}


def memory(sizes: list[int], num_queries: int) -> list[dict]:
    out = []
    for size in sizes:
        result = subprocess.run([sys.executable, __file__, "--memory-run", str(size), "--memory-queries",
                                 str(num_queries)], cwd=REPO, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"memory run {size} failed:\n{result.stderr[-3000:]}")
        out.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=16, help="queries of the throughput part")
    parser.add_argument("--videos", type=int, default=32, help="videos of the throughput part")
    parser.add_argument("--loop-pairs", type=int, default=48, help="pairs timed one at a time")
    parser.add_argument("--pair-batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the throughput part")
    parser.add_argument("--memory-sizes", default="1000,10000", help="library sizes of the memory part")
    parser.add_argument("--memory-queries", type=int, default=4)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-run", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_run is not None:
        print(json.dumps(memory_run(args.memory_run, args.memory_queries)))
        return
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {args.threads} threads, load average at start {os.getloadavg()[0]:.1f}")
    t = throughput(args.queries, args.videos, args.loop_pairs, args.pair_batch_size)
    print(f"\n1. throughput, D=4096 T=32, {t['parameters_M']:.1f} M parameters, random weights, CPU")
    print("| path | pairs | pairs/s |\n|---|---|---|")
    print(f"| batched (Grounder.ground, pair batch {t['pair_batch_size']}) | {t['queries']} x {t['videos']} | "
          f"{t['batched_pairs_per_s']:.1f} |")
    print(f"| one pair at a time (DRN.forward + decode) | {t['loop_pairs']} | {t['loop_pairs_per_s']:.2f} |")
    print(f"ratio: {t['ratio']:.1f}x")
    f = flops()
    print("\n2. FLOPs (torch.utils.flop_counter; a multiply-add = 2)")
    print("| part | GFLOP | computed |\n|---|---|---|")
    print(f"| pair side (fusion, pyramid, heads) | {f['pair_GFLOP']:.3f} | per (query, video) |")
    print(f"| video side (Linear D->D on T x D) | {f['video_GFLOP']:.3f} | once per video |")
    print(f"| query side (BiLSTM, attention) | {f['query_GFLOP']:.4f} | once per query |")
    print(f"| one pair alone (all three) | {f['single_pair_forward_GFLOP']:.3f} | per pair in the loop |")
    cpu_rate = t["batched_pairs_per_s"] * f["pair_GFLOP"]
    print(f"batched CPU path sustains about {cpu_rate:.0f} GFLOP/s on the pair side")
    for gpu, peak in GPU_PEAKS_TFLOPS.items():
        print(f"{gpu} peak {peak:g} TFLOP/s: at most {peak * 1e3 / f['pair_GFLOP']:,.0f} pairs/s "
              "(an upper bound from FLOPs alone; NOT measured, no GPU here)")
    if args.skip_memory:
        return
    sizes = [int(s) for s in args.memory_sizes.split(",")]
    print(f"\n3. memory vs library size (whole job, D=256 T=32, {args.memory_queries} queries, top-k 2)")
    print("peak RSS in MB while grounding and writing / over the whole job (with library ranks and indices)")
    print("| videos | rows written | seconds | pairs/s | driver peak RSS MB | Ray workers peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for m in memory(sizes, args.memory_queries):
        print(f"| {m['videos']} | {m['rows']} | {m['seconds']:.1f} | {m['pairs_per_s']:.1f} | "
              f"{m['driver_grounding_peak_MB']:.0f} / {m['driver_peak_MB']:.0f} | "
              f"{m['workers_grounding_peak_MB']:.0f} / {m['workers_peak_MB']:.0f} |")


if __name__ == "__main__":
    main()
