"""Charades-STA: ``VID start_s end_s##sentence`` text files, durations from the Charades CSVs (column ``length``).

Splits: ``train`` and ``test`` as published, and ``val``, carved from ``train`` by video (seeded; see
``drn.datasets.splits``). ``train`` stays the full published split unless ``exclude_val=True``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from drn.datasets.cleaning import LoadedSplit, LoadReport, RawPair, clean_pairs
from drn.datasets.reading import parse_seconds, read_lines, read_text
from drn.datasets.sources import check_split, resolve_source
from drn.datasets.splits import DEFAULT_VAL_FRACTION, DEFAULT_VAL_SEED, check_val_fraction, select_side
from drn.errors import InputError

NAME = "charades_sta"
SPLITS = ("train", "val", "test")
FILES = {"train": "charades_sta_train.txt", "test": "charades_sta_test.txt"}
CSV_PATTERN = "Charades_v1_*.csv"


def read_durations(csv_paths: Sequence[Path]) -> dict[str, float]:
    """Video id -> duration in seconds from Charades metadata CSVs (columns ``id`` and ``length``)."""
    durations: dict[str, float] = {}
    for path in csv_paths:
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
        missing = {"id", "length"} - set(reader.fieldnames or ())
        if missing:
            raise InputError(f"missing column(s) {', '.join(sorted(missing))} in the header", path=path, line=1)
        for row in reader:
            line = reader.line_num
            video_id = (row["id"] or "").strip()
            if not video_id:
                raise InputError("empty field 'id'", path=path, line=line)
            durations[video_id] = parse_seconds((row["length"] or "").strip(), "length", path, line)
    return durations


def read_raw_pairs(path: Path, durations: dict[str, float], csv_note: str) -> list[RawPair]:
    """Every pair of a Charades-STA text file; qid = 0-based position among the file's non-blank lines."""
    pairs = []
    for qid, (line, text) in enumerate(read_lines(path)):
        head, sep, sentence = text.partition("##")
        fields = head.split()
        if not sep or len(fields) != 3:
            raise InputError(f"expected 'VIDEO START END##SENTENCE', got {text[:80]!r}", path=path, line=line)
        video_id = fields[0]
        start = parse_seconds(fields[1], "start", path, line)
        end = parse_seconds(fields[2], "end", path, line)
        if video_id not in durations:
            raise InputError(f"video {video_id!r} has no duration in {csv_note}", path=path, line=line)
        pairs.append(RawPair(qid, video_id, sentence, start, end, durations[video_id], line))
    return pairs


def load(
    annotations: str | Path,
    split: str,
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    val_seed: int = DEFAULT_VAL_SEED,
    exclude_val: bool = False,
    durations_csv: Sequence[str | Path] | None = None,
) -> LoadedSplit:
    """Load one Charades-STA split. ``durations_csv`` overrides the ``Charades_v1_*.csv`` files found beside it."""
    check_split(NAME, split, SPLITS)
    source_split = "train" if split == "val" else split
    source = resolve_source(annotations, source_split, FILES)
    if durations_csv is not None:
        csv_paths = [Path(p) for p in durations_csv]
    else:
        csv_paths = sorted(source.parent.glob(CSV_PATTERN))
        if not csv_paths:
            raise InputError(f"no {CSV_PATTERN} with video durations beside the annotations", path=source.parent)
    durations = read_durations(csv_paths)
    raw = read_raw_pairs(source, durations, " / ".join(p.name for p in csv_paths))
    report = LoadReport(NAME, split, (str(source), *map(str, csv_paths)))
    if split == "val" or (split == "train" and exclude_val):
        fraction = check_val_fraction(val_fraction)
        raw = select_side(raw, lambda p: p.video_id, val=split == "val", fraction=fraction, seed=val_seed)
        side = "carved from" if split == "val" else "excludes the val videos of"
        report.notes.append(f"{split} {side} train by video (fraction {fraction}, seed {val_seed})")
    return LoadedSplit(clean_pairs(raw, report), report)
