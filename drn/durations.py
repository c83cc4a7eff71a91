"""One duration per video: the feature store's timeline, for the grid and for the ground truth alike.

Annotations give moments in seconds of the real video, and the features' clip times are seconds of the same
video as it was decoded, so where a pair meets features both must be scaled by one duration, the video's
**timeline duration** in the store:

- the decoded duration recorded in ``videos/`` (``duration_s``: the end of the last decoded frame), or
- where a row has none (null, NaN or not positive, e.g. a store written by other tools), the last clip's end.

``drn.grid.pool_to_grid`` lays the T segments over ``[0, timeline duration)`` and ``on_timeline`` gives every
pair that duration, so that ``start_s / duration_s * T`` lands on the segment holding those seconds of video.
An annotated end after the timeline's end is clipped to it; a pair that starts at or after it is dropped, with
the reason. The annotation's own duration (Charades-STA's CSV ``length``, ActivityNet's ``duration``, TACoS's
``num_frames / fps``) is used only where no features are involved: loading and cleaning a split, the no-video
baselines, scoring a predictions file. ``compare_durations`` measures how far the two disagree
(``jobs.inspect_dataset --features``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from drn.pairs import GroundingPair

DEFAULT_TOLERANCE = 0.02  # relative difference above which an annotated and a decoded duration "differ"


def timeline_duration(duration_s: float | None, clip_end_s: Sequence[float] | np.ndarray) -> float:
    """A video's timeline duration in seconds: ``duration_s`` when it is a positive number, else the last clip's
    end (NaN when there is neither)."""
    if duration_s is not None:
        value = float(duration_s)
        if math.isfinite(value) and value > 0:
            return value
    ends = np.asarray(clip_end_s, dtype=np.float64)
    return float(ends.max()) if ends.size else math.nan


@dataclass
class PlacedPairs:
    """Pairs put on the store's timeline, and those that could not be (``(qid, reason)``)."""

    pairs: list[GroundingPair]
    dropped: list[tuple[object, str]] = field(default_factory=list)
    changed: int = 0  # pairs whose duration differed from the store's


def on_timeline(pairs: Sequence[GroundingPair], durations: Mapping[str, float]) -> PlacedPairs:
    """Give each pair its video's timeline duration (``durations``, e.g. ``FeatureStore.durations()``).

    The moment's seconds are kept; an end after the timeline's end is clipped to it, and a pair that starts at or
    after the end is dropped. Pairs of videos not in ``durations`` are returned unchanged.
    """
    placed = PlacedPairs(pairs=[])
    for pair in pairs:
        duration = durations.get(pair.video_id)
        if duration is None or not math.isfinite(duration) or duration == pair.duration_s:
            placed.pairs.append(pair)
            continue
        if pair.start_s >= duration:
            placed.dropped.append((pair.qid, f"starts at {pair.start_s:g} s, at or after the end of video "
                                             f"{pair.video_id!r} in the feature store ({duration:g} s)"))
            continue
        placed.changed += 1
        placed.pairs.append(dataclasses.replace(pair, end_s=min(pair.end_s, duration), duration_s=duration))
    return placed


@dataclass
class DurationComparison:
    """Annotated against decoded durations, over the videos both know."""

    videos: int  # videos with both durations
    differing: int  # of them, those whose relative difference exceeds ``tolerance``
    tolerance: float
    relative: dict[str, float]  # statistics of |store - annotated| / annotated over all compared videos
    seconds: dict[str, float]  # the same, in seconds (store - annotated, signed: mean, min, max)
    largest: list[tuple[str, float, float]]  # (video_id, annotated_s, store_s), largest relative difference first
    only_annotated: int = 0  # videos of the annotations that the store lacks

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def compare_durations(annotated: Mapping[str, float], store: Mapping[str, float],
                      tolerance: float = DEFAULT_TOLERANCE, show: int = 5) -> DurationComparison:
    """How many videos' annotated durations differ from the store's by more than ``tolerance``, and by how much."""
    common = sorted(v for v in annotated if v in store and math.isfinite(store[v]))
    given = np.array([annotated[v] for v in common], dtype=np.float64)
    decoded = np.array([store[v] for v in common], dtype=np.float64)
    delta = decoded - given
    relative = np.abs(delta) / np.maximum(given, 1e-9)
    order = np.argsort(-relative, kind="stable")[:show]

    def stats(values: np.ndarray, signed: bool) -> dict[str, float]:
        if values.size == 0:
            return {}
        if signed:
            return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}
        return {"median": float(np.median(values)), "p95": float(np.percentile(values, 95)),
                "max": float(values.max())}

    return DurationComparison(
        videos=len(common), differing=int((relative > tolerance).sum()), tolerance=tolerance,
        relative=stats(relative, signed=False), seconds=stats(delta, signed=True),
        largest=[(common[i], float(given[i]), float(decoded[i])) for i in order if relative[i] > tolerance],
        only_annotated=sum(1 for v in annotated if v not in store),
    )
