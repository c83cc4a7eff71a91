"""Score predictions against a dataset split: R@{1,5} at IoU {0.3,0.5,0.7} and mIoU, with the convention printed.

    python -m jobs.evaluate --dataset charades_sta --annotations ../shared/data/annotations/charades_sta \
        --split test --predictions preds.jsonl [--nms m-0.05] [--comparison gt] [--json]

Predictions are JSONL, one query a line: {"qid", "video_id", "segments": [[start_s, end_s, score], ...]}.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence

from drn.datasets import LoadedSplit
from drn.evaluation import EvalConfig, EvalResult, evaluate, format_result
from drn.predictions import Prediction, read_predictions
from jobs.dataset_args import add_dataset_arguments, load_split_from_args, run_main

COMPARISON_CHOICES = {">=": ">=", "ge": ">=", ">": ">", "gt": ">"}


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The scoring options (shared with jobs.baseline)."""
    group = parser.add_argument_group("scoring")
    group.add_argument(
        "--ious", type=float, nargs="+", default=[0.3, 0.5, 0.7], help="IoU levels m (default 0.3 0.5 0.7)"
    )
    group.add_argument("--recall-at", type=int, nargs="+", default=[1, 5], help="the n of R@n (default 1 5)")
    group.add_argument(
        "--comparison",
        choices=sorted(COMPARISON_CHOICES),
        default=">=",
        help="a hit is IoU >= m (>=, ge; default) or IoU > m (>, gt)",
    )
    group.add_argument(
        "--nms",
        default="off",
        help="NMS before taking the top n: off (default), a threshold such as 0.5, or m-0.05 "
        "(the IoU level minus 0.05, as the DRN authors did)",
    )
    group.add_argument(
        "--allow-missing", action="store_true", help="count queries without a prediction as misses instead of failing"
    )
    group.add_argument("--json", action="store_true", help="print the result as JSON")


def eval_config_from_args(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(
        recall_at=tuple(args.recall_at),
        ious=tuple(args.ious),
        comparison=COMPARISON_CHOICES[args.comparison],
        nms=args.nms,
        allow_missing=args.allow_missing,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.evaluate",
        description="Evaluate moment predictions on a dataset split (R@n,IoU=m and mIoU of the top-1).",
    )
    add_dataset_arguments(parser, default_split="test")
    source = parser.add_argument_group("what to evaluate").add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", help="a predictions JSONL file")
    add_eval_arguments(parser)
    return parser


def predictions_from_args(args: argparse.Namespace, loaded: LoadedSplit) -> Mapping[int | str, Prediction]:
    """The predictions to score; other sources (a checkpoint run on a feature store) plug in here."""
    return read_predictions(args.predictions)


def result_text(result: EvalResult, loaded: LoadedSplit, as_json: bool, title: str | None = None) -> str:
    """The printed result: the table (or JSON) with the dataset, split and convention."""
    report = loaded.report
    if as_json:
        return json.dumps({"dataset": report.dataset, "split": report.split, "title": title, **result.to_dict()})
    heading = f"{report.dataset} {report.split}" + (f" - {title}" if title else "")
    return format_result(result, title=heading)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = eval_config_from_args(args)
    loaded = load_split_from_args(args)
    result = evaluate(loaded.pairs, predictions_from_args(args, loaded), config)
    print(result_text(result, loaded, args.json))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
