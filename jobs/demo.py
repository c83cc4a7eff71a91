"""The whole project on an embedded default: `python -m jobs.demo [--out DIR] [--size N] [--force] [--seed S]`.

Generates a synthetic video library, extracts C3D features (random weights) on local Ray Data, trains DRN's three
stages on Ray Train, evaluates on held-out queries beside the no-video baselines, grounds the test queries against
the library into a local LanceDB, searches it, and says where everything is. The steps live in `moments.demo`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from drn.errors import InputError
from jobs.cli import job_main
from moments.demo import run_demo
from moments.demo.settings import DEFAULT_OUT, DEMO_CONFIG, DemoSettings, SettingError

FLAGS = {  # DemoSettings field -> the flag that sets it, for the messages of bad settings
    "out": "--out", "size": "--size", "seed": "--seed", "force": "--force", "min_duration_s": "--min-duration",
    "max_duration_s": "--max-duration", "fps": "--fps", "clip_stride": "--clip-stride", "weights": "--weights",
    "config": "--config", "overrides": "--set", "num_workers": "--num-workers", "use_gpu": "--use-gpu",
    "progress": "--no-progress",
}


def build_parser() -> argparse.ArgumentParser:
    defaults = DemoSettings()
    parser = argparse.ArgumentParser(
        prog="python -m jobs.demo",
        description="Run the whole pipeline on a synthetic video library: generate, extract C3D features, train "
        "DRN (three stages, Ray Train), evaluate beside the no-video baselines, ground a query collection into "
        "LanceDB and search it. About 5-10 minutes on 2 CPU cores with the defaults.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="example: python -m jobs.demo --out demo_output --size 40 --force",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (must be empty, or --force)")
    parser.add_argument("--size", type=int, default=defaults.size,
                        help="videos in the synthetic library (larger on a bigger machine or a GPU)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the library and the C3D weights")
    parser.add_argument("--force", action="store_true",
                        help="use a non-empty --out: replace the demo's own files there, leave the rest")
    parser.add_argument("--min-duration", type=float, default=defaults.min_duration_s, help="shortest video, s")
    parser.add_argument("--max-duration", type=float, default=defaults.max_duration_s, help="longest video, s")
    parser.add_argument("--fps", type=float, default=defaults.fps,
                        help="extraction resamples the videos to this rate before cutting 16-frame clips")
    parser.add_argument("--clip-stride", type=int, default=defaults.clip_stride, help="frames between clip starts")
    parser.add_argument("--weights", default="random",
                        help="C3D weights: 'random' (seeded, said plainly in the output) or the Sports-1M c3d.pickle")
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG, help="DRN config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.stage1.epochs=10 (repeatable)")
    parser.add_argument("--num-workers", type=int, default=defaults.num_workers, help="Ray Train workers")
    parser.add_argument("--use-gpu", action="store_true", help="C3D and training on GPUs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--serve", action="store_true",
                        help="then serve the results: search page and JSON API on 127.0.0.1 (Ctrl-C stops it)")
    parser.add_argument("--port", type=int, default=8000, help="port of the search service with --serve")
    return parser


@job_main
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = DemoSettings(
        out=args.out, size=args.size, seed=args.seed, force=args.force, min_duration_s=args.min_duration,
        max_duration_s=args.max_duration, fps=args.fps, clip_stride=args.clip_stride, weights=args.weights,
        config=args.config, overrides=tuple(args.overrides), num_workers=args.num_workers, use_gpu=args.use_gpu,
        progress=not args.no_progress,
    )
    if args.serve:
        from moments.serve.app import check_port_free

        check_port_free("127.0.0.1", args.port)  # before minutes of work, not after
    try:
        report = run_demo(settings, echo=lambda line: print(line, flush=True))
    except SettingError as err:  # the same message, naming the flags instead of the settings
        raise InputError(err.worded(FLAGS), path=err.path) from None
    if args.serve:
        from jobs.serve import serve_and_wait
        from moments.serve.backend import ServiceSettings

        paths = report.paths
        print("\nServing the results (the page plays the moments it finds):", flush=True)
        serve_and_wait(ServiceSettings(db=str(paths.db), features=str(paths.features), videos=str(paths.videos)),
                       "127.0.0.1", args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
