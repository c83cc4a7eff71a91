"""A small real library for the search service's tests: synthetic videos, their feature store and an index.

The videos come from `pipeline.synthetic.make_library` (H.264 files with shapes at known times), the feature
store is written with `FeatureStoreWriter` (random 8-d clip features: the service never reads them, only the
`videos/` manifest with each file's URI), and the `segments` table is written through `Index.write_segments`
the way grounding does, with each query's true moment as its best segment in the video that holds it and a
weaker, shifted segment in every other video. So a search for a query's words finds the moment where the
shape really is, and its thumbnails show that shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drn.store import FeatureStoreWriter, StoreMetadata, VideoRecord
from drn.text.sentence import embed_texts
from moments.index import Index, query_rows, segment_rows
from pipeline.synthetic import COLORS, make_library

RUN_ID = "served-run"


@dataclass(frozen=True)
class ServedLibrary:
    root: Path
    videos: Path  # the folder of .mp4 files
    features: str
    db: str
    events: list[dict]  # one per shape event: video_id, color, shape, action, appear_s, vanish_s
    durations: dict[str, float]

    def event_of(self, query_text: str, video_id: str) -> dict | None:
        """The event a synthetic query ('the red square moves left') describes in a video, if any."""
        for event in self.events:
            text = f"the {event['color']} {event['shape']} {event['action']}"
            if event["video_id"] == video_id and text == query_text:
                return event
        return None


def build_served_library(root: Path, num_videos: int = 4, seed: int = 3) -> ServedLibrary:
    """Videos, feature store and index under `root` (a few seconds on two cores)."""
    library = root / "library"
    make_library(library, num_videos=num_videos, seed=seed, min_duration_s=9.0, max_duration_s=12.0)
    events = [json.loads(line) for line in (library / "annotations" / "events.jsonl").read_text().splitlines()]
    durations = _durations(library / "annotations")
    features = root / "features"
    meta = StoreMetadata("synthetic", "x", "none", clip_len=2, clip_stride=1, fps="1", feature_dim=8,
                         dtype="float32")
    rng = np.random.default_rng(seed)
    with FeatureStoreWriter(features, meta, videos_per_shard=8) as writer:
        for video_id, duration in sorted(durations.items()):
            starts = np.arange(0.0, duration - 1.0, 1.0)
            writer.add_clips(video_id, rng.normal(size=(len(starts), 8)).astype(np.float32), starts, starts + 2.0)
            writer.finish_video(VideoRecord(video_id, str(library / "videos" / f"{video_id}.mp4"), fps=25.0,
                                            duration_s=duration, width=160, height=120, num_clips=len(starts)))
    db = str(root / "lancedb")
    _write_index(db, events, durations, rng)
    return ServedLibrary(root, library / "videos", str(features), db, events, durations)


def _durations(annotations: Path) -> dict[str, float]:
    durations = {}
    for split in ("train", "val", "test"):
        for line in (annotations / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            durations[row["video_id"]] = float(row["duration_s"])
    return durations


def _write_index(db: str, events: list[dict], durations: dict[str, float], rng: np.random.Generator) -> None:
    texts = sorted({f"the {e['color']} {e['shape']} {e['action']}" for e in events})
    index = Index(db)
    index.write_queries(query_rows(RUN_ID, "tiny-ckpt", [f"q{number}" for number in range(len(texts))], texts,
                                   embed_texts(texts)))
    for number, text in enumerate(texts):
        rows = []
        for video_id, duration in sorted(durations.items()):
            holder = [e for e in events if e["video_id"] == video_id and
                      f"the {e['color']} {e['shape']} {e['action']}" == text]
            if holder:
                start, end, score = holder[0]["appear_s"], holder[0]["vanish_s"], 0.9
            else:
                start = float(rng.uniform(0.0, duration / 2))
                end, score = min(duration, start + 2.5), float(rng.uniform(0.2, 0.5))
            segments = np.array([[start, end, score, score, 1.0],
                                 [max(0.0, start - 1.0), min(duration, end + 1.5), score * 0.5, score, 0.5]])
            rows += segment_rows(RUN_ID, "tiny-ckpt", f"q{number}", text, video_id, segments)
        index.write_segments(rows)
    index.update_library_ranks(RUN_ID)
    index.ensure_indices()


def colour_share(rgb: np.ndarray, colour: str) -> float:
    """The share of pixels near one of the synthetic library's shape colours (JPEG-tolerant)."""
    target = np.array(COLORS[colour], dtype=np.float32)
    distance = np.linalg.norm(rgb.reshape(-1, 3).astype(np.float32) - target, axis=1)
    return float((distance < 60).mean())
