"""The clip rule: counts, frame indices, padding of short videos, streamed cutting and clip times."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.clips import ClipCutter, clip_frame_indices, clip_times, num_clips


@pytest.mark.parametrize(
    ("frames", "clip_len", "stride", "expected"),
    [(0, 16, 8, 0), (1, 16, 8, 1), (3, 16, 8, 1), (15, 16, 8, 1), (16, 16, 8, 1), (23, 16, 8, 1), (24, 16, 8, 2),
     (310, 16, 8, 37), (31, 16, 8, 2), (100, 16, 16, 6), (10, 4, 10, 1), (14, 4, 10, 2)],
)
def test_num_clips_follows_the_rule(frames: int, clip_len: int, stride: int, expected: int) -> None:
    assert num_clips(frames, clip_len, stride) == expected
    if frames >= clip_len:
        assert expected == (frames - clip_len) // stride + 1


def test_short_video_gives_one_clip_padded_with_its_last_frame() -> None:
    np.testing.assert_array_equal(clip_frame_indices(3, 6, 2), [[0, 1, 2, 2, 2, 2]])
    assert clip_frame_indices(0, 16, 8).shape == (0, 16)
    np.testing.assert_array_equal(clip_frame_indices(12, 4, 4), [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]])
    with pytest.raises(ValueError, match="positive"):
        num_clips(10, 0, 8)


def test_clip_times_come_from_frame_times() -> None:
    starts = np.array([0.0, 0.033, 0.067, 0.1, 0.133, 0.167])
    ends = np.append(starts[1:], 0.2)
    s, e = clip_times(starts, ends, clip_len=4, clip_stride=2)
    np.testing.assert_allclose(s, [0.0, 0.067])
    np.testing.assert_allclose(e, [0.133, 0.2])
    s, e = clip_times(starts[:3], ends[:3], clip_len=4, clip_stride=2)  # padded: ends at the last real frame
    np.testing.assert_allclose(e, [0.1])


@pytest.mark.parametrize(
    ("frames", "clip_len", "stride"), [(57, 16, 8), (3, 16, 8), (40, 5, 3), (33, 4, 10), (16, 16, 8)]
)
def test_streamed_cutting_matches_the_rule(frames: int, clip_len: int, stride: int) -> None:
    rng = np.random.default_rng(frames)
    video = np.arange(frames, dtype=np.int64)[:, None, None, None] * np.ones((1, 2, 3, 3), np.int64)
    times = np.arange(frames + 1) / 25.0
    cutter = ClipCutter(clip_len, stride)
    got, got_s, got_e = [], [], []
    at = 0
    while at < frames:  # blocks of random sizes, as the decoder delivers them
        size = int(rng.integers(1, 12))
        for clips, s, e in cutter.push(video[at : at + size], times[at : at + size], times[at + 1 : at + size + 1]):
            got.append(clips)
            got_s.append(s)
            got_e.append(e)
        at += size
    for clips, s, e in cutter.finish():
        got.append(clips)
        got_s.append(s)
        got_e.append(e)
    clips = np.concatenate(got)
    expected = clip_frame_indices(frames, clip_len, stride)
    assert len(clips) == num_clips(frames, clip_len, stride) == cutter.clips_cut
    np.testing.assert_array_equal(clips[:, :, 0, 0, 0], expected)
    exp_s, exp_e = clip_times(times[:-1], times[1:], clip_len, stride)
    np.testing.assert_allclose(np.concatenate(got_s), exp_s)
    np.testing.assert_allclose(np.concatenate(got_e), exp_e)
