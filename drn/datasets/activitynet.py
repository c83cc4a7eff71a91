"""ActivityNet Captions: ``{video_id: {duration, timestamps: [[s, e], ...], sentences: [...]}}`` in seconds.

Splits ``train``, ``val_1`` and ``val_2`` (files ``train.json``, ``val_1.json``, ``val_2.json``).
qid = running 0-based index over videos in key order, then sentences in order.
"""

from __future__ import annotations

from pathlib import Path

from drn.datasets.captions_json import iter_video_entries, number_field, stamp_pair
from drn.datasets.cleaning import LoadedSplit, LoadReport, RawPair, clean_pairs
from drn.datasets.reading import read_json
from drn.datasets.sources import check_split, resolve_source

NAME = "activitynet"
SPLITS = ("train", "val_1", "val_2")
FILES = {split: f"{split}.json" for split in SPLITS}


def load(annotations: str | Path, split: str) -> LoadedSplit:
    """Load one ActivityNet Captions split."""
    check_split(NAME, split, SPLITS)
    source = resolve_source(annotations, split, FILES)
    raw: list[RawPair] = []
    for video_id, entry, items in iter_video_entries(read_json(source), source):
        duration = number_field(entry, "duration", video_id, source)
        for index, (stamp, sentence) in enumerate(items):
            start, end = stamp_pair(stamp, index, video_id, source)
            raw.append(RawPair(len(raw), video_id, sentence, start, end, duration))
    report = LoadReport(NAME, split, (str(source),))
    return LoadedSplit(clean_pairs(raw, report), report)
