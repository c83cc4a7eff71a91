"""Command-line pieces the data jobs share: the dataset arguments, loading a split, and exiting on bad input."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

from drn.datasets import LoadedSplit, dataset_names, load_split, options_of
from drn.datasets.reading import read_text
from drn.errors import InputError


def add_dataset_arguments(parser: argparse.ArgumentParser, default_split: str | None = "test",
                          dataset_help: str | None = None) -> None:
    """``--dataset``, ``--annotations``, ``--split`` and the loader options.

    ``--dataset`` is required unless ``dataset_help`` says where its default comes from (the job then fills it in).
    """
    group = parser.add_argument_group("dataset")
    group.add_argument("--dataset", required=dataset_help is None, choices=dataset_names(),
                       help=dataset_help or "which dataset format to read")
    group.add_argument(
        "--annotations",
        required=True,
        type=Path,
        help="the dataset's folder (e.g. ../shared/data/annotations/charades_sta), or one split's file",
    )
    group.add_argument(
        "--split",
        default=default_split,
        required=default_split is None,
        help="split name: charades_sta train|val|test, activitynet train|val_1|val_2, tacos and jsonl "
        f"train|val|test (default: {default_split})",
    )
    group.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="charades_sta, jsonl: share of training videos carved out as val (default 0.1)",
    )
    group.add_argument(
        "--val-seed", type=int, default=None, help="charades_sta, jsonl: seed of the val carve (default 0)"
    )
    group.add_argument(
        "--exclude-val",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="charades_sta, jsonl: drop the carved val videos from train "
        "(default: no for charades_sta, yes for jsonl without val.jsonl)",
    )
    group.add_argument(
        "--durations",
        type=Path,
        default=None,
        help="jsonl: video durations for lines without duration_s, a JSON object {video_id: seconds} "
        "or a CSV with columns video_id,duration_s",
    )


def read_durations_file(path: Path) -> dict[str, float]:
    """Video durations from a JSON object or a ``video_id,duration_s`` CSV."""
    text = read_text(path)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON: {exc.msg}", path=path, line=exc.lineno) from None
        if not isinstance(data, dict):
            raise InputError("expected a JSON object {video_id: seconds}", path=path)
        items = list(data.items())
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not {"video_id", "duration_s"} <= set(reader.fieldnames or ()):
            raise InputError("expected CSV columns video_id,duration_s", path=path, line=1)
        items = [(row["video_id"], row["duration_s"]) for row in reader]
    durations = {}
    for video_id, value in items:
        try:
            durations[str(video_id)] = float(value)
        except (TypeError, ValueError):
            raise InputError(f"duration of video {video_id!r} is not a number: {value!r}", path=path) from None
    return durations


def load_split_from_args(args: argparse.Namespace, split: str | None = None) -> LoadedSplit:
    """Load ``split`` (default ``args.split``) with the loader options given on the command line."""
    given = {
        "val_fraction": args.val_fraction,
        "val_seed": args.val_seed,
        "exclude_val": args.exclude_val,
        "durations": read_durations_file(args.durations) if args.durations is not None else None,
    }
    options = {name: value for name, value in given.items() if value is not None}
    unsupported = sorted(set(options) - set(options_of(args.dataset)))
    if unsupported:
        flags = ", ".join("--" + name.replace("_", "-") for name in unsupported)
        raise InputError(f"{flags} do(es) not apply to dataset {args.dataset}")
    return load_split(args.dataset, args.annotations, split or args.split, **options)
