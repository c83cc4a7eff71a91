"""Write a synthetic video library with known moments and its JSONL annotations (for the demo and tests).

    python -m jobs.make_synthetic --out data/synthetic --videos 20 --seed 0

Writes OUT/videos/*.mp4 and OUT/annotations/{train,val,test}.jsonl (DESIGN.md section 6) plus events.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys

from drn.errors import InputError
from jobs.cli import job_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.make_synthetic",
        description="Generate videos of coloured shapes that appear, move, grow and vanish at known times, "
                    "with grounding annotations.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--videos", type=int, default=20, help="number of videos")
    parser.add_argument("--seed", type=int, default=0, help="seed: the same seed gives the same library")
    parser.add_argument("--min-duration", type=float, default=15.0, help="shortest video, seconds")
    parser.add_argument("--max-duration", type=float, default=30.0, help="longest video, seconds")
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate")
    parser.add_argument("--width", type=int, default=160, help="frame width (even)")
    parser.add_argument("--height", type=int, default=120, help="frame height (even)")
    parser.add_argument("--codec", choices=("libx264", "mpeg4"), default=None,
                        help="video codec (default: libx264 when the PyAV wheel has it, else mpeg4)")
    return parser


@job_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipeline.synthetic import make_library, pick_codec

    problems = []
    if args.videos < 1:
        problems.append("--videos must be at least 1")
    if not 0 < args.min_duration <= args.max_duration:
        problems.append("durations must satisfy 0 < --min-duration <= --max-duration")
    if args.fps <= 0 or args.width < 32 or args.height < 32:
        problems.append("--fps must be positive and --width/--height at least 32")
    if problems:
        raise InputError("; ".join(problems))
    if args.codec is None and pick_codec() != "libx264":
        print("note: this PyAV wheel has no libx264; writing MPEG-4 Part 2 videos instead")
    summary = make_library(args.out, num_videos=args.videos, seed=args.seed, min_duration_s=args.min_duration,
                           max_duration_s=args.max_duration, fps=args.fps, width=args.width, height=args.height,
                           codec=args.codec, progress=True)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
