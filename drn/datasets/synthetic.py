"""A synthetic grounding benchmark at feature level (no video): a feature store plus JSONL annotations.

Each video (20 to 60 s, one clip every 0.5 s, 1 s long) has background noise and two to four coloured events
that do not overlap. Every colour has its own feature signature, added to the clips of its events. Queries:

* ``the red event`` for a colour that occurs once;
* ``the red event before the blue event`` / ``the red event after the blue event`` when red occurs twice with
  blue in between, so the words before/after decide which of the two is meant;
* the other events of a video are distractors for each query (same kind of signal, another signature).

Events sit anywhere in the video with lengths of 8 to 35 percent of it, so one fixed window scores low, while a
model that reads the signatures and the order scores high. Written as ``<out>/features`` (a feature store of
DESIGN.md section 3, float32) and ``<out>/annotations/{train,val,test}.jsonl`` (DESIGN.md section 6), split by
video 70 / 10 / 20.

``make_recurring_benchmark`` is the corpus-level variant: event descriptions recur across videos, as
Charades-STA's sentences do. Each event is "the <colour> ball <motion>" (8 colours x 4 motions = 32
descriptions), its features the sum of a colour and a motion signature, and each video holds two to four events
of distinct colours with random motions, so a description occurs in about a tenth of the videos. Within a video
the colour alone finds the moment (as in Charades-STA, where one video seldom holds two door actions); whether a
video holds "the red ball rises" or only "the red ball falls" is a question that only other videos ask, and the
motion's share of the signature is the smaller one (``motion_share``, default 0.3), as the detail that tells
"opens" from "closes the door" is a small part of a clip. That is what training on positive pairs alone has no
reason to learn, and what negative pairs teach.

Its ``annotations/labels.jsonl`` lists every event each video shows, one a line: ``{"video_id", "label",
"start_s", "end_s"}`` (the label is the event's description, so an annotated moment's label equals its query).
With ``omit_fraction`` some events are left out of the split files but stay in the videos, as real datasets
annotate only some of what a video shows.

From the command line: ``python -m jobs.make_synthetic_features --out OUT [--recurring [--omit-fraction F]]``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drn.errors import InputError
from drn.store.features import FeatureStoreWriter, StoreMetadata, VideoRecord

COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black")
CLIP_LEN_S, CLIP_STRIDE_S = 1.0, 0.5
EVENT_FRACTION = (0.08, 0.35)  # shortest and longest event, as fractions of the video


@dataclass
class SyntheticBenchmark:
    """Where a benchmark was written (the feature store, the annotations folder, the labels file) and its size.

    ``events`` counts the events the videos show, ``omitted`` those left out of the split files and
    ``omitted_fraction`` is their share (``omitted / events``); ``labels`` is None where no labels file is written.
    """

    features: str
    annotations: str
    num_videos: int
    num_pairs: dict[str, int]
    labels: str | None = None
    events: int = 0
    omitted: int = 0
    omitted_fraction: float = 0.0


def _place_events(
    rng: np.random.Generator, duration: float, count: int, event_fraction: tuple[float, float] = EVENT_FRACTION
) -> list[tuple[float, float]]:
    """``count`` non-overlapping (start, end) spans in time order, each ``event_fraction`` (8-35 %) of the video."""
    for _ in range(100):
        lengths = rng.uniform(*event_fraction, size=count) * duration
        free = duration - lengths.sum()
        if free <= 0:
            continue
        gaps = rng.dirichlet(np.ones(count + 1)) * free
        spans, t = [], 0.0
        for gap, length in zip(gaps[:-1], lengths, strict=True):
            t += gap
            spans.append((t, t + length))
            t += length
        return spans
    raise RuntimeError("could not place events")


def _video(rng: np.random.Generator, signatures: np.ndarray, noise: float,
           event_fraction: tuple[float, float] = EVENT_FRACTION):
    """Clip features, clip times, duration and a list of (colour index, start, end) events of one video."""
    duration = float(rng.uniform(20.0, 60.0))
    starts = np.arange(0.0, duration - CLIP_LEN_S + 1e-9, CLIP_STRIDE_S)
    ends = starts + CLIP_LEN_S
    repeated = rng.random() < 0.5
    if repeated:  # c, o, c (+ maybe one distractor somewhere)
        c, o, *rest = rng.choice(len(COLORS), size=3, replace=False)
        order = [c, o, c] + ([rest[0]] if rng.random() < 0.5 else [])
        if len(order) == 4:
            order.insert(int(rng.integers(0, 4)), order.pop())
    else:
        order = list(rng.choice(len(COLORS), size=int(rng.integers(2, 5)), replace=False))
    spans = _place_events(rng, duration, len(order), event_fraction)
    dim = signatures.shape[1]
    features = rng.normal(0.0, noise, size=(len(starts), dim)).astype(np.float32)
    centres = (starts + ends) / 2
    events = []
    for colour, (s, e) in zip(order, spans, strict=True):
        inside = (centres >= s) & (centres < e)
        features[inside] += signatures[colour]
        events.append((int(colour), s, e))
    return features, starts, ends, duration, events


def _queries(events: list[tuple[int, float, float]]) -> list[tuple[str, float, float]]:
    counts = {}
    for colour, _, _ in events:
        counts[colour] = counts.get(colour, 0) + 1
    out = []
    for i, (colour, s, e) in enumerate(events):
        name = COLORS[colour]
        if counts[colour] == 1:
            out.append((f"the {name} event", s, e))
            continue
        others = [(j, c) for j, (c, _, _) in enumerate(events) if counts[c] == 1]
        later = [c for j, c in others if j > i and any(
            k > j and events[k][0] == colour for k in range(len(events)))]
        earlier = [c for j, c in others if j < i and any(
            k < j and events[k][0] == colour for k in range(len(events)))]
        if later:
            out.append((f"the {name} event before the {COLORS[later[0]]} event", s, e))
        if earlier:
            out.append((f"the {name} event after the {COLORS[earlier[-1]]} event", s, e))
    return out


def make_synthetic_benchmark(
    out_dir: str | os.PathLike, num_videos: int = 400, feature_dim: int = 64, seed: int = 0,
    noise: float = 0.5, signal: float = 1.5, event_fraction: tuple[float, float] = EVENT_FRACTION,
) -> SyntheticBenchmark:
    """Write the benchmark under ``out_dir`` (``features/`` and ``annotations/``) and describe it.

    ``noise`` is the background's standard deviation, ``signal`` the strength of the colour signatures and
    ``event_fraction`` the (shortest, longest) event as fractions of the video: more noise, less signal or
    shorter events make the benchmark harder.
    """
    lo, hi = event_fraction
    if not (0.0 < lo <= hi and 4 * lo < 1.0):
        raise ValueError(f"event_fraction must satisfy 0 < shortest <= longest, shortest < 0.25; got {event_fraction}")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    signatures = rng.normal(0.0, 1.0, size=(len(COLORS), feature_dim))
    signatures *= signal / np.linalg.norm(signatures, axis=1, keepdims=True) * np.sqrt(feature_dim) * 0.5
    metadata = StoreMetadata(
        extractor="synthetic", layer="signature", weights_sha256="none", clip_len=2, clip_stride=1,
        fps="2", feature_dim=feature_dim, dtype="float32",
    )
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    total = 0
    with FeatureStoreWriter(out / "features", metadata) as writer:
        for v in range(num_videos):
            video_id = f"syn{v:05d}"
            features, starts, ends, duration, events = _video(rng, signatures.astype(np.float32), noise, event_fraction)
            total += len(events)
            writer.add_clips(video_id, features, starts, ends)
            writer.finish_video(_video_record(video_id, duration, len(starts)))
            split = _split_of(v, num_videos)
            for query, s, e in _queries(events):
                splits[split].append({"video_id": video_id, "query": query, "start_s": round(s, 3),
                                      "end_s": round(e, 3), "duration_s": round(duration, 3)})
    return _write_annotations(out, splits, num_videos, events=total)


def _split_of(index: int, num_videos: int) -> str:
    """The first 70% of the videos train, the next 10% validate, the rest test."""
    fraction = index / max(num_videos, 1)
    return "train" if fraction < 0.7 else "val" if fraction < 0.8 else "test"


def _video_record(video_id: str, duration: float, num_clips: int) -> VideoRecord:
    return VideoRecord(video_id=video_id, uri=f"synthetic://{video_id}", fps=2.0, num_frames=int(duration * 2),
                       duration_s=duration, num_clips=num_clips)


def _write_annotations(out: Path, splits: dict[str, list[dict]], num_videos: int, *, events: int,
                       labels: list[dict] | None = None, omitted: int = 0) -> SyntheticBenchmark:
    """One JSONL file per split under ``out/annotations``, each row numbered by ``qid``, and ``labels.jsonl``
    (every event of every video) when ``labels`` is given."""
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        with open(out / "annotations" / f"{split}.jsonl", "w") as fh:
            for qid, row in enumerate(rows):
                fh.write(json.dumps({"qid": qid, **row}) + "\n")
    labels_path = None
    if labels is not None:
        labels_path = out / "annotations" / "labels.jsonl"
        with open(labels_path, "w") as fh:
            for row in labels:
                fh.write(json.dumps(row) + "\n")
    return SyntheticBenchmark(
        features=str(out / "features"), annotations=str(out / "annotations"), num_videos=num_videos,
        num_pairs={k: len(v) for k, v in splits.items()},
        labels=None if labels_path is None else str(labels_path), events=events, omitted=omitted,
        omitted_fraction=round(omitted / events, 4) if events else 0.0,
    )


MOTIONS = ("rises", "falls", "spins", "bounces")


def make_recurring_benchmark(
    out_dir: str | os.PathLike, num_videos: int = 400, feature_dim: int = 64, seed: int = 0,
    noise: float = 0.5, signal: float = 1.5, event_fraction: tuple[float, float] = EVENT_FRACTION,
    motion_share: float = 0.3, omit_fraction: float = 0.0,
) -> SyntheticBenchmark:
    """Write the recurring-descriptions benchmark under ``out_dir`` (same layout as ``make_synthetic_benchmark``,
    plus ``annotations/labels.jsonl``: every event each video shows).

    ``motion_share`` is the motion signature's norm as a share of the event signature's (the colour takes the
    rest); ``noise``, ``signal`` and ``event_fraction`` are those of ``make_synthetic_benchmark``.

    ``omit_fraction`` leaves each event out of the split files with that probability; its features stay in the
    video and its line in ``labels.jsonl``. Every video keeps at least one annotated event (a video without one
    would drop out of every split), so the realised share, reported as ``omitted_fraction``, falls short of
    ``omit_fraction`` as it grows (about 0.45 at 0.5) and never passes about 2/3. The omissions come from their
    own random stream, so ``omit_fraction=0`` writes the same benchmark as before for the same seed.
    """
    if not 0.0 < motion_share < 1.0:
        raise ValueError(f"motion_share must lie in (0, 1), not {motion_share}")
    if not 0.0 <= omit_fraction < 1.0:
        raise InputError(f"omit_fraction must be in [0, 1), not {omit_fraction}")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    scale = signal * np.sqrt(feature_dim) * 0.5
    colours = rng.normal(size=(len(COLORS), feature_dim))
    motions = rng.normal(size=(len(MOTIONS), feature_dim))
    colours *= scale * (1.0 - motion_share) / np.linalg.norm(colours, axis=1, keepdims=True)
    motions *= scale * motion_share / np.linalg.norm(motions, axis=1, keepdims=True)
    metadata = StoreMetadata(
        extractor="synthetic", layer="recurring", weights_sha256="none", clip_len=2, clip_stride=1,
        fps="2", feature_dim=feature_dim, dtype="float32",
    )
    kinds = [(c, m) for c in range(len(COLORS)) for m in range(len(MOTIONS))]
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    labels: list[dict] = []
    omit_rng = np.random.default_rng([seed, 1])  # its own stream: the main one stays as without omissions
    omitted = 0
    with FeatureStoreWriter(out / "features", metadata) as writer:
        for v in range(num_videos):
            video_id = f"rec{v:05d}"
            duration = float(rng.uniform(20.0, 60.0))
            starts = np.arange(0.0, duration - CLIP_LEN_S + 1e-9, CLIP_STRIDE_S)
            ends = starts + CLIP_LEN_S
            count = int(rng.integers(2, 5))
            chosen = [c * len(MOTIONS) + int(m) for c, m in zip(rng.choice(len(COLORS), size=count, replace=False),
                                                                 rng.integers(0, len(MOTIONS), size=count),
                                                                 strict=True)]
            spans = _place_events(rng, duration, len(chosen), event_fraction)
            features = rng.normal(0.0, noise, size=(len(starts), feature_dim)).astype(np.float32)
            centres = (starts + ends) / 2
            split = _split_of(v, num_videos)
            omit = omit_rng.random(len(chosen)) < omit_fraction
            if omit.all():  # keep one, so the video stays in its split
                omit[int(omit_rng.integers(len(chosen)))] = False
            omitted += int(omit.sum())
            for kind, (s, e), left_out in zip(chosen, spans, omit, strict=True):
                colour, motion = kinds[int(kind)]
                inside = (centres >= s) & (centres < e)
                features[inside] += (colours[colour] + motions[motion]).astype(np.float32)
                label = f"the {COLORS[colour]} ball {MOTIONS[motion]}"
                labels.append({"video_id": video_id, "label": label, "start_s": round(s, 3), "end_s": round(e, 3)})
                if not left_out:
                    splits[split].append({"video_id": video_id, "query": label, "start_s": round(s, 3),
                                          "end_s": round(e, 3), "duration_s": round(duration, 3)})
            writer.add_clips(video_id, features, starts, ends)
            writer.finish_video(_video_record(video_id, duration, len(starts)))
    return _write_annotations(out, splits, num_videos, events=len(labels), labels=labels, omitted=omitted)
