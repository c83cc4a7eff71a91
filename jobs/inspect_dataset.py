"""Show what a dataset split holds: pairs, videos, what cleaning dropped or clipped, and length statistics.

    python -m jobs.inspect_dataset --dataset charades_sta --annotations ../shared/data/annotations/charades_sta \
        --split train [--features features/]

With ``--features`` it also compares each video's annotated duration with the feature store's timeline duration
(the one training, evaluation and grounding use; see ``drn.durations``): how many videos differ by more than 2 %
and by how much.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import numpy as np

from drn.datasets import LoadedSplit
from drn.durations import DEFAULT_TOLERANCE, compare_durations
from drn.errors import InputError
from drn.store import FeatureStore
from jobs.cli import job_main
from jobs.dataset_args import add_dataset_arguments, load_split_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.inspect_dataset",
        description="Load one split of a dataset, apply the cleaning rules and print what it holds.",
    )
    add_dataset_arguments(parser, default_split="train")
    parser.add_argument("--show-qids", type=int, default=10, help="how many dropped/clipped qids to list per reason")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--features", default=None,
                        help="a feature store: compare the annotated durations with its decoded ones")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="relative difference counted as differing (default 0.02, i.e. 2 %%)")
    return parser


def describe(values: Sequence[float]) -> dict[str, float]:
    """min / mean / median / max of ``values`` (zeros when empty)."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return {"min": 0.0, "mean": 0.0, "median": 0.0, "max": 0.0}
    stats = (array.min(), array.mean(), np.median(array), array.max())
    return {name: float(value) for name, value in zip(("min", "mean", "median", "max"), stats, strict=True)}


def summarize(loaded: LoadedSplit) -> dict[str, object]:
    """The numbers this job prints, as a dict."""
    pairs = loaded.pairs
    durations = loaded.durations
    return {
        "report": loaded.report.to_dict(),
        "pairs": len(pairs),
        "videos": len(durations),
        "moment_s": describe([p.end_s - p.start_s for p in pairs]),
        "moment_fraction": describe([(p.end_s - p.start_s) / p.duration_s for p in pairs]),
        "video_s": describe(list(durations.values())),
        "query_words": describe([len(p.query.split()) for p in pairs]),
        "queries_per_video": describe(
            np.unique([p.video_id for p in pairs], return_counts=True)[1].tolist() if pairs else []
        ),
    }


def format_durations(comparison: dict, features: str) -> list[str]:
    """The lines comparing annotated and decoded durations (``drn.durations.compare_durations``)."""
    lines = [f"durations against the feature store {features}: {comparison['videos']} videos in both, "
             f"{comparison['only_annotated']} without features"]
    if comparison["videos"]:
        rel, sec = comparison["relative"], comparison["seconds"]
        lines.append(f"  {comparison['differing']} of {comparison['videos']} differ by more than "
                     f"{comparison['tolerance']:.0%}; |store - annotated| / annotated: median {rel['median']:.2%}, "
                     f"p95 {rel['p95']:.2%}, max {rel['max']:.2%}; store - annotated (s): mean {sec['mean']:+.2f}, "
                     f"min {sec['min']:+.2f}, max {sec['max']:+.2f}")
        for video_id, annotated, decoded in comparison["largest"]:
            lines.append(f"  {video_id}: annotated {annotated:.2f} s, store {decoded:.2f} s "
                         f"({(decoded - annotated) / annotated:+.1%})")
    return lines


def format_summary(summary: dict[str, object], show_qids: int) -> str:
    report = summary["report"]
    lines = [
        f"dataset {report['dataset']}  split {report['split']}",
        f"sources: {', '.join(report['sources'])}",
        *[f"note: {note}" for note in report["notes"]],
        f"raw pairs {report['raw_count']}   pairs {summary['pairs']}   videos {summary['videos']}",
        f"dropped {report['num_dropped']}   clipped {report['num_clipped']}   "
        f"queries with whitespace normalised {report['normalized_queries']}",
    ]
    for kind in ("dropped", "clipped"):
        for reason, qids in report[kind].items():
            shown = ", ".join(map(str, qids[:show_qids])) + (", ..." if len(qids) > show_qids else "")
            lines.append(f"  {kind} ({reason}): {len(qids)}  qids {shown}")
    lines.append(f"{'':22}{'min':>9}{'mean':>9}{'median':>9}{'max':>9}")
    for key, label in [
        ("moment_s", "moment length (s)"),
        ("moment_fraction", "moment / video"),
        ("video_s", "video length (s)"),
        ("query_words", "query length (words)"),
        ("queries_per_video", "queries per video"),
    ]:
        stats = summary[key]
        lines.append(f"{label:22}" + "".join(f"{stats[name]:9.2f}" for name in ("min", "mean", "median", "max")))
    if "durations_vs_store" in summary:
        lines += format_durations(summary["durations_vs_store"], summary["features"])
    return "\n".join(lines)


@job_main
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    loaded = load_split_from_args(args)
    summary = summarize(loaded)
    if args.features is not None:
        if not 0 <= args.tolerance < 1:
            raise InputError(f"--tolerance must be in [0, 1), not {args.tolerance}")
        comparison = compare_durations(loaded.durations, FeatureStore(args.features).durations(), args.tolerance)
        summary.update(features=args.features, durations_vs_store=comparison.to_dict())
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary, args.show_qids))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
