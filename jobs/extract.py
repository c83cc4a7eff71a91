"""Extract C3D clip features of a video library into a feature store, on Ray Data.

    python -m jobs.extract --videos videos/ --out features/ --weights c3d.pickle
    ray job submit --working-dir . -- python -m jobs.extract --videos s3://bucket/videos --out s3://bucket/features

Reruns on the same --out skip the videos already done; --retry-failed tries the failed ones again.
See docs/extraction.md.
"""

from __future__ import annotations

import argparse
import sys

from drn.errors import InputError
from jobs.cli import job_main

COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")  # pipeline.c3d's; here so that --help needs no torch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.extract",
        description="Decode every video of a library, compute C3D clip features and write them to a feature store.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--videos", required=True,
                        help="a folder (searched recursively), a glob, a .txt/.parquet manifest, a video file, "
                             "or an object-store URI (s3://, gs://)")
    parser.add_argument("--out", required=True, help="the feature store (a folder or an object-store URI)")
    parser.add_argument("--weights", required=True,
                        help="the Sports-1M c3d.pickle state dict, or 'random' for seeded random weights "
                             "(recorded in the store as random-seed<N>)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --weights random")
    parser.add_argument("--layer", choices=("fc6", "fc7"), default="fc6", help="the feature: ReLU(fc6) or ReLU(fc7)")
    parser.add_argument("--dtype", choices=COMPUTE_DTYPES, default="auto",
                        help="what C3D computes in; auto: bfloat16 where the CPU (AVX-512-BF16, AMX) or the GPU "
                             "(compute capability 8.0+) does it natively, float16 on older CUDA GPUs, else float32. "
                             "Recorded in the store as drn.compute_dtype")
    parser.add_argument("--store-dtype", choices=("float16", "float32"), default="float16",
                        help="stored feature type (drn.dtype)")
    parser.add_argument("--fps", default="native", help="'native' or a sampling rate in frames per second")
    parser.add_argument("--clip-len", type=int, default=16, help="frames per clip (C3D: 16)")
    parser.add_argument("--clip-stride", type=int, default=8, help="frames between clip starts")
    parser.add_argument("--num-gpus-per-actor", type=float, default=0.0, help="GPUs per C3D actor (0: run on CPU)")
    parser.add_argument("--num-actors", type=int, default=None, help="C3D actors (default: one per GPU, or 1)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs reserved per C3D actor")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="CPU threads of each actor's network (default: on GPU --cpus-per-actor; on CPU the "
                             "smallest node's CPUs shared among the actors, since decoding needs little)")
    parser.add_argument("--decode-tasks", type=int, default=None,
                        help="concurrent decoding tasks, one CPU each (default: the CPUs the actors leave)")
    parser.add_argument("--batch-size", type=int, default=None, help="clips per forward pass (default 64 GPU, 8 CPU)")
    parser.add_argument("--videos-per-shard", type=int, default=64,
                        help="videos per Parquet shard (a killed job redoes at most one shard)")
    parser.add_argument("--retry-failed", action="store_true", help="extract again the videos recorded as failed")
    parser.add_argument("--capacity-wait-s", type=float, default=120.0,
                        help="when lost nodes leave the cluster too small for the C3D actors plus one decoding CPU, "
                             "stop (exit 1, naming the missing resource) after this many seconds; rerun to resume")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_fps(text: str) -> str:
    if text == "native":
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise InputError(f"--fps must be 'native' or a positive number, not {text!r}")
    return f"{value:g}"


@job_main
def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pipeline.c3d import C3DConfig, load_c3d_weights, random_weights_id
    from pipeline.extract import default_resources, plan_extraction, run_extraction
    from pipeline.ray_runtime import start_ray
    from pipeline.sources import list_videos

    if args.clip_len < 1 or args.clip_stride < 1:
        raise InputError("--clip-len and --clip-stride must be positive")
    config = C3DConfig(weights=args.weights, layer=args.layer, dtype=args.store_dtype, seed=args.seed,
                       fps=parse_fps(args.fps), clip_len=args.clip_len, clip_stride=args.clip_stride,
                       compute_dtype=args.dtype)
    if args.weights == "random":
        weights, sha = None, random_weights_id(args.seed)
        print(f"note: C3D with RANDOM weights (seed {args.seed}); the store records weights_sha256={sha}")
    else:
        weights, sha = load_c3d_weights(args.weights)
    sources = list_videos(args.videos)  # duplicate ids and bad manifests fail here, before any work
    todo, skipped = plan_extraction(sources, args.out, args.retry_failed)
    print(f"{len(sources)} videos listed: {len(todo)} to extract, {len(skipped)} already in {args.out}")

    start_ray()
    resources = default_resources(
        args.num_gpus_per_actor, args.num_actors, cpus_per_actor=args.cpus_per_actor,
        decode_tasks=args.decode_tasks, batch_size=args.batch_size, torch_threads=args.torch_threads,
    )
    bar = tqdm(total=len(todo), unit="video", desc="extract", disable=args.no_progress or not todo)

    def advance(record) -> None:
        bar.update(1)
        if record.status == "failed":
            bar.set_postfix_str(f"failed: {record.video_id}")

    try:
        summary = run_extraction(sources, args.out, config, weights=weights, weights_sha256=sha,
                                 resources=resources, retry_failed=args.retry_failed,
                                 videos_per_shard=args.videos_per_shard, on_video=advance,
                                 capacity_wait_s=args.capacity_wait_s)
    finally:
        bar.close()  # here, not at exit: a bar closed at exit prints after the job's error line
    print(f"done: {summary.done}  failed: {summary.failed}  skipped: {summary.skipped}  clips: {summary.clips}  "
          f"(C3D computed in {summary.compute_dtype}, stored as {args.store_dtype})")
    if summary.failures:
        print(f"failed videos are rows with status 'failed' in {args.out}/videos/*.parquet; the first of them:")
        for vid, error in summary.failures[:10]:
            print(f"  {vid}: {error}")
        print("rerun with --retry-failed to try them again")
    print(summary.throughput_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
