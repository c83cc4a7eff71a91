"""Long videos in overlapping windows: cut, ground each window, map back to seconds, merge with temporal NMS.

A DRN model sees a video as T equal segments, so on a video far longer than those it was trained on, one grid
cell spans minutes and every moment comes out minutes wide. A video longer than ``max_whole_s`` is therefore
grounded in windows of ``window_s`` seconds starting every ``stride_s`` (half a window by default; the last
window ends at the video's end), each window as if it were a video of its own. Segments are shifted back to
absolute seconds and the candidates of all windows are merged by temporal NMS, best first.

The window follows the training durations: the median and the 95th percentile of the training videos'
durations when the checkpoint records them (``metrics["train_duration_s"] = {"median": ..., "p95": ...}``),
else the figures of the dataset the config names (measured on the training annotations), else 60 s and 90 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from drn.config import DRNConfig
from drn.decoding import nms_order
from drn.durations import timeline_duration
from drn.errors import InputError
from drn.store import VideoFeatures

# Training-split durations in seconds (median, 95th percentile), measured on the annotation files in
# ../shared/data (Charades-STA: the Charades CSV `length` of the videos in charades_sta_train.txt).
TRAINING_DURATIONS_S: dict[str, tuple[float, float]] = {
    "charades_sta": (30.6, 42.9),
    "activitynet": (113.9, 224.1),
    "tacos": (158.7, 552.1),
    "synthetic": (40.0, 58.0),  # drn.datasets.synthetic: videos of 20 to 60 s, uniform
}
FALLBACK_DURATIONS_S = (60.0, 90.0)


@dataclass(frozen=True)
class WindowRule:
    """Videos up to ``max_whole_s`` are grounded whole; longer ones in windows of ``window_s`` every ``stride_s``."""

    window_s: float
    stride_s: float
    max_whole_s: float
    source: str = "flags"

    def __post_init__(self) -> None:
        for name in ("window_s", "stride_s", "max_whole_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"window setting {name} must be a positive number of seconds, not {value}")
        if self.stride_s > self.window_s:
            raise InputError(f"the window stride ({self.stride_s} s) must not exceed the window ({self.window_s} s): "
                             "moments between windows would be missed")
        if self.max_whole_s < self.window_s:
            raise InputError(f"max_whole_s ({self.max_whole_s} s) must be at least the window ({self.window_s} s)")

    def spans(self, duration_s: float) -> list[tuple[float, float]]:
        """``(start, end)`` seconds of the windows of a video: one span, the whole video, when it is short."""
        if duration_s <= self.max_whole_s:
            return [(0.0, float(duration_s))]
        count = math.ceil((duration_s - self.window_s) / self.stride_s) + 1
        starts = [min(i * self.stride_s, duration_s - self.window_s) for i in range(count)]
        return [(s, s + self.window_s) for s in starts]

    def describe(self) -> str:
        return (f"windows of {self.window_s:g} s every {self.stride_s:g} s for videos over {self.max_whole_s:g} s "
                f"({self.source})")


def window_rule(
    config: DRNConfig, metrics: dict[str, Any] | None = None, *, window_s: float | None = None,
    stride_s: float | None = None, max_whole_s: float | None = None,
) -> WindowRule:
    """The rule for a checkpoint: explicit values win, then the checkpoint's training durations, then the table."""
    recorded = (metrics or {}).get("train_duration_s")
    if isinstance(recorded, dict) and {"median", "p95"} <= set(recorded):
        median, p95, source = float(recorded["median"]), float(recorded["p95"]), "checkpoint training durations"
    elif config.name in TRAINING_DURATIONS_S or config.dataset in TRAINING_DURATIONS_S:
        key = config.name if config.name in TRAINING_DURATIONS_S else config.dataset
        (median, p95), source = TRAINING_DURATIONS_S[key], f"typical {key} training durations"
    else:
        (median, p95), source = FALLBACK_DURATIONS_S, "default for unknown training durations"
    if window_s is not None:
        source = "flags"
    window = float(window_s) if window_s is not None else median
    stride = float(stride_s) if stride_s is not None else window / 2
    whole = float(max_whole_s) if max_whole_s is not None else max(p95, window)
    return WindowRule(window, stride, whole, source)


@dataclass
class Window:
    """One window of a video: the clips whose centre lies inside it, times relative to ``offset_s``."""

    video_index: int
    offset_s: float
    features: VideoFeatures


def cut_windows(video: VideoFeatures, rule: WindowRule, video_index: int = 0) -> list[Window]:
    """The windows of one video (the video itself when it is short); windows holding no clip are left out."""
    spans = rule.spans(timeline_duration(video.duration_s, video.clip_end_s))
    if len(spans) == 1:
        return [Window(video_index, 0.0, video)]
    starts = np.asarray(video.clip_start_s, dtype=np.float64)
    ends = np.asarray(video.clip_end_s, dtype=np.float64)
    centres = (starts + ends) / 2
    windows = []
    for begin, end in spans:
        inside = np.flatnonzero((centres >= begin) & (centres <= end))
        if inside.size == 0:
            continue
        part = VideoFeatures(
            f"{video.video_id}@{begin:.3f}", np.asarray(video.features)[inside],
            np.clip(starts[inside] - begin, 0.0, None), np.clip(ends[inside] - begin, None, end - begin), end - begin,
        )
        windows.append(Window(video_index, begin, part))
    return windows


def merge_windows(parts: list[tuple[float, np.ndarray]], duration_s: float, nms_threshold: float,
                  top_k: int) -> np.ndarray:
    """Segments ``[n, 5]`` of several windows (``(offset_s, segments)``) in absolute seconds, NMS-merged, best first.

    A single part at offset 0 (a video grounded whole) is only cut to ``top_k``.
    """
    if len(parts) == 1 and parts[0][0] == 0.0:
        return parts[0][1][:top_k]
    shifted = []
    for offset, segments in parts:
        moved = np.array(segments, dtype=np.float64, copy=True)
        moved[:, :2] = np.clip(moved[:, :2] + offset, 0.0, duration_s)
        shifted.append(moved)
    candidates = np.concatenate(shifted) if shifted else np.zeros((0, 5))
    if len(candidates) == 0:
        return candidates
    return candidates[nms_order(candidates, nms_threshold, top_k)]
