"""TACoS in the 2D-TAN layout: ``{video_id: {timestamps: [[s_frame, e_frame], ...], sentences, fps, num_frames}}``.

Frame indices are divided by ``fps``; the duration is ``num_frames / fps``. Splits ``train``, ``val``, ``test``.
qid = running 0-based index over videos in key order, then sentences in order.
"""

from __future__ import annotations

from pathlib import Path

from drn.datasets.captions_json import iter_video_entries, number_field, stamp_pair
from drn.datasets.cleaning import LoadedSplit, LoadReport, RawPair, clean_pairs
from drn.datasets.reading import read_json
from drn.datasets.sources import check_split, resolve_source
from drn.errors import InputError

NAME = "tacos"
SPLITS = ("train", "val", "test")
FILES = {split: f"{split}.json" for split in SPLITS}


def load(annotations: str | Path, split: str) -> LoadedSplit:
    """Load one TACoS split, converting frames to seconds."""
    check_split(NAME, split, SPLITS)
    source = resolve_source(annotations, split, FILES)
    raw: list[RawPair] = []
    for video_id, entry, items in iter_video_entries(read_json(source), source):
        fps = number_field(entry, "fps", video_id, source)
        if fps <= 0:
            raise InputError(f"video {video_id!r}: field 'fps' must be positive, got {fps}", path=source)
        duration = number_field(entry, "num_frames", video_id, source) / fps
        for index, (stamp, sentence) in enumerate(items):
            start, end = stamp_pair(stamp, index, video_id, source)
            raw.append(RawPair(len(raw), video_id, sentence, start / fps, end / fps, duration))
    report = LoadReport(NAME, split, (str(source),))
    return LoadedSplit(clean_pairs(raw, report), report)
