"""The two no-video baselines: the whole video, and one fixed window learned from the training split.

The fixed window is the ``[start, end]`` fraction of the video, on a grid of ``step`` (default 0.01), that
maximises the objective on the training pairs: R@1 at IoU >= 0.5 by default (``objective="r1@0.3"`` etc. picks
another level, ``"mean"`` the mean of R@1 at 0.3, 0.5 and 0.7, ``"miou"`` the mean IoU). Ties go to the
smallest start, then the smallest end. On Charades-STA the default gives [0, 0.30].
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from drn.errors import InputError
from drn.pairs import GroundingPair
from drn.predictions import Prediction

OBJECTIVES = ("r1@0.3", "r1@0.5", "r1@0.7", "mean", "miou")
DEFAULT_OBJECTIVE = "r1@0.5"


@dataclass(frozen=True)
class FixedWindow:
    """A window as fractions of the video, with the objective it was fitted for and its training score."""

    start_frac: float
    end_frac: float
    objective: str = DEFAULT_OBJECTIVE
    train_score: float = float("nan")

    def segment(self, duration_s: float) -> tuple[float, float]:
        return self.start_frac * duration_s, self.end_frac * duration_s


def whole_video_predictions(pairs: Iterable[GroundingPair]) -> list[Prediction]:
    """One segment per query: the whole video, score 1."""
    return [Prediction(p.qid, p.video_id, np.array([[0.0, p.duration_s, 1.0]])) for p in pairs]


def fixed_window_predictions(pairs: Iterable[GroundingPair], window: FixedWindow) -> list[Prediction]:
    """One segment per query: ``window`` scaled to the query's video, score 1."""
    return [Prediction(p.qid, p.video_id, np.array([[*window.segment(p.duration_s), 1.0]])) for p in pairs]


def _objective_function(objective: str) -> Callable[[np.ndarray], np.ndarray]:
    """Maps an IoU matrix ``[windows, pairs]`` to one score per window."""
    if objective == "miou":
        return lambda iou: iou.mean(axis=1)
    if objective == "mean":
        return lambda iou: np.mean([(iou >= m).mean(axis=1) for m in (0.3, 0.5, 0.7)], axis=0)
    if objective.startswith("r1@"):
        level = float(objective[3:])
        return lambda iou: (iou >= level).mean(axis=1)
    raise InputError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")


def candidate_windows(step: float) -> np.ndarray:
    """All ``[start, end]`` with start < end on a grid of ``step`` over [0, 1], sorted by start then end."""
    count = round(1.0 / step)
    if count < 1 or abs(count * step - 1.0) > 1e-9:
        raise InputError(f"step must divide 1 evenly (e.g. 0.01, 0.05), got {step}")
    ticks = np.arange(count + 1) / count
    start, end = np.meshgrid(ticks, ticks, indexing="ij")
    keep = start < end
    return np.stack([start[keep], end[keep]], axis=1)


def fit_fixed_window(
    pairs: Sequence[GroundingPair],
    *,
    step: float = 0.01,
    objective: str = DEFAULT_OBJECTIVE,
    chunk_elements: int = 4_000_000,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> FixedWindow:
    """Search the grid of windows for the one that scores best on ``pairs`` (moments as fractions)."""
    if not pairs:
        raise InputError("no training pairs to fit the fixed window on")
    score_of = _objective_function(objective)
    truth = np.array([[p.start_frac, p.end_frac] for p in pairs])
    windows = candidate_windows(step)
    per_chunk = max(1, chunk_elements // len(truth))
    starts: Iterable[int] = range(0, len(windows), per_chunk)
    scores = np.empty(len(windows))
    for first in progress(starts) if progress else starts:
        block = windows[first : first + per_chunk]
        inter = np.minimum(block[:, 1:2], truth[:, 1]) - np.maximum(block[:, 0:1], truth[:, 0])
        union = np.maximum(block[:, 1:2], truth[:, 1]) - np.minimum(block[:, 0:1], truth[:, 0])
        scores[first : first + per_chunk] = score_of(np.clip(inter, 0.0, None) / union)
    best = int(np.argmax(scores))
    return FixedWindow(float(windows[best, 0]), float(windows[best, 1]), objective, float(scores[best]))
