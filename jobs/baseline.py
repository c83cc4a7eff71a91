"""Write and score the two no-video baselines: the whole video, and one fixed window fitted on a training split.

    python -m jobs.baseline --dataset charades_sta --annotations ../shared/data/annotations/charades_sta \
        --split test --out runs/baselines/charades_sta
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from drn.baselines import (
    DEFAULT_OBJECTIVE,
    OBJECTIVES,
    fit_fixed_window,
    fixed_window_predictions,
    whole_video_predictions,
)
from drn.evaluation import evaluate
from drn.predictions import write_predictions
from jobs.cli import job_main
from jobs.dataset_args import add_dataset_arguments, load_split_from_args
from jobs.evaluate import add_eval_arguments, eval_config_from_args, result_text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.baseline",
        description="Write prediction files for the no-video baselines (whole video; the fixed window that scores "
        "best on the training split) and print their evaluation.",
    )
    add_dataset_arguments(parser, default_split="test")
    parser.add_argument("--out", required=True, type=Path, help="folder for whole_video.jsonl, fixed_window.jsonl")
    parser.add_argument("--train-split", default="train", help="split the fixed window is fitted on (default train)")
    parser.add_argument("--step", type=float, default=0.01, help="grid step of window start/end (default 0.01)")
    parser.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default=DEFAULT_OBJECTIVE,
        help="what the window maximises on the training split: R@1 at one IoU level (IoU >= m), "
        f"the mean of R@1 at 0.3/0.5/0.7, or mIoU (default {DEFAULT_OBJECTIVE})",
    )
    add_eval_arguments(parser)
    return parser


@job_main
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = eval_config_from_args(args)
    target = load_split_from_args(args)
    train = load_split_from_args(args, split=args.train_split)
    window = fit_fixed_window(
        train.pairs,
        step=args.step,
        objective=args.objective,
        progress=lambda chunks: tqdm(list(chunks), desc="fitting the fixed window", unit="chunk", leave=False),
    )
    baselines = {
        "whole_video": whole_video_predictions(target.pairs),
        "fixed_window": fixed_window_predictions(target.pairs, window),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fixed_window.json").write_text(
        json.dumps({**asdict(window), "fitted_on": args.train_split, "step": args.step}, indent=1) + "\n"
    )
    outputs = []
    for name, predictions in baselines.items():
        write_predictions(args.out / f"{name}.jsonl", predictions)
        result = evaluate(target.pairs, {p.qid: p for p in predictions}, config)
        if name == "fixed_window":
            name = f"fixed_window [{window.start_frac:.2f}, {window.end_frac:.2f}] fitted on {args.train_split}"
        outputs.append(result_text(result, target, args.json, title=name))
    print(("\n" if args.json else "\n\n").join(outputs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
