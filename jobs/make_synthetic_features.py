"""Write the synthetic feature-level benchmark (no video files): a feature store and its JSONL annotations.

    python -m jobs.make_synthetic_features --out runs/syn [--videos 400 --dim 64 --seed 0] [--recurring
        [--omit-fraction 0.5]]

Writes OUT/features (DESIGN.md section 3) and OUT/annotations/{train,val,test}.jsonl (section 6) with
``drn.datasets.synthetic.make_synthetic_benchmark``, or with ``--recurring`` the corpus-level variant whose
descriptions recur across videos (``make_recurring_benchmark``; it also writes OUT/annotations/labels.jsonl, every
event each video shows, and ``--omit-fraction`` leaves that share of events out of the split files), and prints
one line of JSON saying what it wrote.
For a library of real video files with known moments, use ``python -m jobs.make_synthetic``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence

from drn.errors import InputError
from jobs.cli import job_main


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m jobs.make_synthetic_features``."""
    parser = argparse.ArgumentParser(
        prog="python -m jobs.make_synthetic_features",
        description="Write the synthetic grounding benchmark at feature level: a feature store of clip features "
                    "with coloured events at known times, and JSONL annotations (no video files).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="output folder (features/ and annotations/ go inside)")
    parser.add_argument("--videos", type=int, default=400, help="number of videos")
    parser.add_argument("--dim", type=int, default=64, help="feature dimension D")
    parser.add_argument("--seed", type=int, default=0, help="seed: the same seed gives the same benchmark")
    parser.add_argument("--recurring", action="store_true",
                        help="the corpus-level variant: descriptions recur across videos (make_recurring_benchmark)")
    parser.add_argument("--omit-fraction", type=float, default=argparse.SUPPRESS,
                        help="with --recurring: leave each event out of the split files with this probability, in "
                             "[0, 1) (its features stay; every video keeps one annotated event); 0 when not given")
    return parser


@job_main
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    omit_fraction = getattr(args, "omit_fraction", None)  # absent unless given
    problems = []
    if args.videos < 1:
        problems.append(f"--videos must be at least 1, not {args.videos}")
    if args.dim < 1:
        problems.append(f"--dim must be at least 1, not {args.dim}")
    if omit_fraction is not None and not args.recurring:
        problems.append("--omit-fraction needs --recurring")
    elif omit_fraction is not None and not 0.0 <= omit_fraction < 1.0:
        problems.append(f"--omit-fraction must be in [0, 1), not {omit_fraction}")
    if problems:
        raise InputError("; ".join(problems))
    from drn.datasets.synthetic import make_recurring_benchmark, make_synthetic_benchmark
    from drn.store.object_store import check_writable, is_object_store_uri

    if is_object_store_uri(args.out):
        raise InputError("--out must be a local folder (the annotations are written as local files)", path=args.out)
    check_writable(args.out, "output folder")
    if args.recurring:
        bench = make_recurring_benchmark(args.out, num_videos=args.videos, feature_dim=args.dim, seed=args.seed,
                                         omit_fraction=omit_fraction or 0.0)
    else:
        bench = make_synthetic_benchmark(args.out, num_videos=args.videos, feature_dim=args.dim, seed=args.seed)
    print(json.dumps(dataclasses.asdict(bench)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
