"""Temporal non-maximum suppression over 1-D segments."""

from __future__ import annotations

import numpy as np


def temporal_iou(segment: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one segment ``[start, end]`` with each row of ``others`` (``[K, >=2]``); 0 where the union is 0."""
    inter = np.clip(np.minimum(segment[1], others[:, 1]) - np.maximum(segment[0], others[:, 0]), 0.0, None)
    union = np.maximum(segment[1], others[:, 1]) - np.minimum(segment[0], others[:, 0])
    return np.divide(inter, union, out=np.zeros_like(inter, dtype=np.float64), where=union > 0)


def temporal_nms(segments: np.ndarray, threshold: float, max_keep: int | None = None) -> np.ndarray:
    """Keep the best segments, dropping any whose IoU with a kept one exceeds ``threshold``.

    ``segments`` is ``[K, 3]`` rows of ``(start, end, score)``. Rows are visited by descending score (stable, so
    ties keep their input order); the result is the kept rows, best first. ``threshold >= 1`` keeps everything.
    """
    segments = np.asarray(segments, dtype=np.float64).reshape(-1, 3)
    order = np.argsort(-segments[:, 2], kind="stable")
    ranked = segments[order]
    if threshold >= 1.0:
        return ranked if max_keep is None else ranked[:max_keep]
    keep: list[int] = []
    suppressed = np.zeros(len(ranked), dtype=bool)
    for i in range(len(ranked)):
        if suppressed[i]:
            continue
        keep.append(i)
        if max_keep is not None and len(keep) >= max_keep:
            break
        rest = np.arange(i + 1, len(ranked))
        rest = rest[~suppressed[rest]]
        if len(rest):
            suppressed[rest[temporal_iou(ranked[i], ranked[rest]) > threshold]] = True
    return ranked[keep]
