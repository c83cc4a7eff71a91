"""Own data (DESIGN.md section 6): a folder with ``train.jsonl``, ``test.jsonl`` and optionally ``val.jsonl``.

One pair a line: ``{"video_id", "query", "start_s", "end_s", "duration_s" (optional), "qid" (optional)}``.
Without ``val.jsonl`` the ``val`` split is carved from ``train`` by video (seeded) and ``train`` then excludes
it. A line without ``duration_s`` takes the duration from the ``durations`` mapping (e.g. a feature store's);
without either it is an error naming the file and line. qid defaults to the 0-based position among the
file's non-blank lines; given qids must be unique (``5`` and ``"5"`` count as the same).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from drn.datasets.cleaning import LoadedSplit, LoadReport, RawPair, clean_pairs
from drn.datasets.reading import as_seconds, parse_json_line, read_lines
from drn.datasets.sources import check_split, resolve_source
from drn.datasets.splits import DEFAULT_VAL_FRACTION, DEFAULT_VAL_SEED, check_val_fraction, select_side
from drn.errors import InputError

NAME = "jsonl"
SPLITS = ("train", "val", "test")
FILES = {split: f"{split}.jsonl" for split in SPLITS}


def read_raw_pairs(path: Path, durations: Mapping[str, float] | None) -> list[RawPair]:
    """Every record of one JSONL file, checked field by field."""
    pairs: list[RawPair] = []
    seen: dict[str, int] = {}
    for position, (line, text) in enumerate(read_lines(path)):
        record = parse_json_line(text, path, line)
        for field in ("video_id", "query", "start_s", "end_s"):
            if field not in record:
                raise InputError(f"missing field {field!r}", path=path, line=line)
        video_id, query = record["video_id"], record["query"]
        if not isinstance(video_id, str) or not video_id:
            raise InputError(f"field 'video_id' must be a non-empty string, got {video_id!r}", path=path, line=line)
        if not isinstance(query, str):
            raise InputError(f"field 'query' must be a string, got {query!r}", path=path, line=line)
        qid = record.get("qid", position)
        if isinstance(qid, bool) or not isinstance(qid, (int, str)):
            raise InputError(f"field 'qid' must be a string or an integer, got {qid!r}", path=path, line=line)
        if str(qid) in seen:
            raise InputError(f"qid {qid!r} repeats the qid of line {seen[str(qid)]}", path=path, line=line)
        seen[str(qid)] = line
        start = as_seconds(record["start_s"], "start_s", path, line)
        end = as_seconds(record["end_s"], "end_s", path, line)
        if record.get("duration_s") is not None:
            duration = as_seconds(record["duration_s"], "duration_s", path, line)
        elif durations is not None and video_id in durations:
            duration = float(durations[video_id])
        else:
            known = "" if durations is None else " nor in the given durations"
            raise InputError(
                f"no 'duration_s' for video {video_id!r} in the line{known}; "
                "add it or give the durations (e.g. from the feature store)",
                path=path,
                line=line,
            )
        pairs.append(RawPair(qid, video_id, query, start, end, duration, line))
    return pairs


def load(
    annotations: str | Path,
    split: str,
    *,
    durations: Mapping[str, float] | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    val_seed: int = DEFAULT_VAL_SEED,
    exclude_val: bool = True,
) -> LoadedSplit:
    """Load one split of an own-data JSONL dataset."""
    check_split(NAME, split, SPLITS)
    folder = Path(annotations)
    carve = folder.is_dir() and split in ("train", "val") and not (folder / FILES["val"]).is_file()
    source = resolve_source(annotations, "train" if carve else split, FILES)
    raw = read_raw_pairs(source, durations)
    report = LoadReport(NAME, split, (str(source),))
    if carve and (split == "val" or exclude_val):
        fraction = check_val_fraction(val_fraction)
        raw = select_side(raw, lambda p: p.video_id, val=split == "val", fraction=fraction, seed=val_seed)
        side = "carved from" if split == "val" else "excludes the val videos of"
        report.notes.append(f"{split} {side} train.jsonl by video (fraction {fraction}, seed {val_seed})")
    return LoadedSplit(clean_pairs(raw, report), report)
