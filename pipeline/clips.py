"""Clip arithmetic: which frames make each clip and when each clip starts and ends (DESIGN.md section 3).

The rule, for a video of ``N`` decoded frames, clips of ``L`` frames starting every ``S`` frames:

- ``N >= L``: ``floor((N - L) / S) + 1`` clips; clip ``k`` holds frames ``k*S .. k*S + L - 1``. Frames after the
  last full clip are not covered (at most ``S - 1`` of them).
- ``1 <= N < L``: ONE clip, the ``N`` frames followed by the last frame repeated ``L - N`` times.
- ``N = 0``: no clip; the video is a failure.

A clip starts at its first frame's start time and ends at its last real frame's end time, both in seconds as the
decoder reports them, so every later step maps back to the video's own clock.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def num_clips(num_frames: int, clip_len: int, clip_stride: int) -> int:
    """How many clips the rule above gives for ``num_frames`` frames."""
    if clip_len < 1 or clip_stride < 1:
        raise ValueError(f"clip_len and clip_stride must be positive, not {clip_len} and {clip_stride}")
    if num_frames <= 0:
        return 0
    if num_frames < clip_len:
        return 1
    return (num_frames - clip_len) // clip_stride + 1


def clip_frame_indices(num_frames: int, clip_len: int, clip_stride: int) -> np.ndarray:
    """``[num_clips, clip_len]`` frame indices of every clip (a short video's one clip repeats its last frame)."""
    count = num_clips(num_frames, clip_len, clip_stride)
    starts = np.arange(count, dtype=np.int64)[:, None] * clip_stride
    return np.minimum(starts + np.arange(clip_len, dtype=np.int64)[None, :], num_frames - 1)


def clip_times(
    frame_start_s: np.ndarray, frame_end_s: np.ndarray, clip_len: int, clip_stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """Start and end in seconds of every clip, from the per-frame start and end times."""
    indices = clip_frame_indices(len(frame_start_s), clip_len, clip_stride)
    if len(indices) == 0:
        return np.zeros(0, np.float64), np.zeros(0, np.float64)
    return np.asarray(frame_start_s)[indices[:, 0]], np.asarray(frame_end_s)[indices[:, -1]]


class ClipCutter:
    """Cuts overlapping clips out of a stream of contiguous frame blocks, holding at most one block plus a clip.

    ``push(frames, start_s, end_s)`` takes the next frames in order and yields ``(clips, clip_start_s, clip_end_s)``
    for every clip that is now complete; ``finish()`` yields the padded clip of a video shorter than one clip.
    ``clips`` is ``[k, clip_len, H, W, C]`` (a copy, so the caller may keep it).
    """

    def __init__(self, clip_len: int, clip_stride: int) -> None:
        num_clips(1, clip_len, clip_stride)  # validates
        self.clip_len = clip_len
        self.clip_stride = clip_stride
        self.frames_seen = 0
        self.clips_cut = 0
        self._frames: np.ndarray | None = None  # buffered frames, the first being frame number self._first
        self._starts = np.zeros(0)
        self._ends = np.zeros(0)
        self._first = 0

    def push(
        self, frames: np.ndarray, start_s: np.ndarray, end_s: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if len(frames) == 0:
            return
        if self._frames is None or len(self._frames) == 0:
            self._frames, self._starts, self._ends = frames, np.asarray(start_s), np.asarray(end_s)
        else:
            self._frames = np.concatenate([self._frames, frames])
            self._starts = np.concatenate([self._starts, start_s])
            self._ends = np.concatenate([self._ends, end_s])
        self.frames_seen += len(frames)
        ready = num_clips(self.frames_seen, self.clip_len, self.clip_stride) if self.frames_seen >= self.clip_len else 0
        if ready > self.clips_cut:
            offsets = np.arange(self.clips_cut, ready) * self.clip_stride - self._first
            window = offsets[:, None] + np.arange(self.clip_len)[None, :]
            clips = self._frames[window]
            yield clips, self._starts[offsets], self._ends[offsets + self.clip_len - 1]
            self.clips_cut = ready
        keep_from = min(self.clips_cut * self.clip_stride - self._first, len(self._frames))  # next clip's start
        if keep_from > 0:
            self._frames = self._frames[keep_from:]
            self._starts, self._ends = self._starts[keep_from:], self._ends[keep_from:]
            self._first += keep_from

    def finish(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The one padded clip of a video with fewer frames than a clip; nothing otherwise."""
        if 0 < self.frames_seen < self.clip_len and self.clips_cut == 0 and self._frames is not None:
            window = np.minimum(np.arange(self.clip_len), self.frames_seen - 1)
            yield self._frames[window][None], self._starts[:1], self._ends[-1:]
            self.clips_cut = 1
        self._frames = None
