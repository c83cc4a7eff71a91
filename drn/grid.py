"""Clip features to the model's grid: max-pool into T equal segments of the video (DESIGN.md section 5).

Segment n covers [n/T, (n+1)/T) of the video's timeline duration (``drn.durations``: the store's decoded
duration, or the last clip's end where it has none; the ground truth is scaled by the same number). A clip
belongs to the segment holding its centre time; a segment is the element-wise max of its clips. A segment that
holds no clip centre (always the case for some segments when the video has fewer clips than T, e.g. a video
shorter than the grid) takes the features of the clip whose centre is nearest to the segment's centre, so short
videos repeat their clips ("nearest fill").
"""

from __future__ import annotations

import numpy as np

from drn.durations import timeline_duration
from drn.errors import InputError


def pool_to_grid(video, num_segments: int) -> np.ndarray:
    """``[T, D]`` float32 grid of a ``VideoFeatures`` (features ``[N, D]``, clip times, duration in seconds)."""
    vid = video.video_id
    features = np.asarray(video.features)
    if features.ndim != 2 or features.shape[0] == 0:
        raise InputError(f"video {vid!r} has no clip features (shape {features.shape})")
    if not np.isfinite(features).all():
        bad = int((~np.isfinite(features)).any(axis=1).argmax())
        raise InputError(f"video {vid!r} has NaN or infinite features (first at clip {bad})")
    starts = np.asarray(video.clip_start_s, dtype=np.float64)
    ends = np.asarray(video.clip_end_s, dtype=np.float64)
    duration = timeline_duration(video.duration_s, ends)
    if not np.isfinite(duration) or duration <= 0:
        raise InputError(f"video {vid!r} has a duration of {video.duration_s!r} seconds")
    centres = (starts + ends) / 2
    segment = np.clip(np.floor(centres / duration * num_segments).astype(np.int64), 0, num_segments - 1)
    order = np.argsort(segment, kind="stable")
    segment, sorted_features = segment[order], features[order]
    grid = np.empty((num_segments, features.shape[1]), dtype=np.float32)
    run_starts = np.flatnonzero(np.r_[True, segment[1:] != segment[:-1]])
    filled = np.zeros(num_segments, dtype=bool)
    grid[segment[run_starts]] = np.maximum.reduceat(sorted_features, run_starts, axis=0)
    filled[segment[run_starts]] = True
    if not filled.all():
        empty = np.flatnonzero(~filled)
        segment_centres = (empty + 0.5) / num_segments * duration
        nearest = np.abs(centres[None, :] - segment_centres[:, None]).argmin(axis=1)
        grid[empty] = features[nearest]
    return grid
