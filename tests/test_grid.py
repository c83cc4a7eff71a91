"""pool_to_grid: max-pooling clips into T segments, short videos, and bad features."""

from __future__ import annotations

import numpy as np
import pytest

from drn.errors import InputError
from drn.grid import pool_to_grid
from drn.store import VideoFeatures


def video(features, starts, ends, duration, video_id="v1") -> VideoFeatures:
    return VideoFeatures(video_id, np.asarray(features, dtype=np.float32), np.asarray(starts, dtype=np.float32),
                         np.asarray(ends, dtype=np.float32), duration)


def test_clips_are_max_pooled_by_their_centre() -> None:
    # 8 s video, 4 segments of 2 s; clip centres 0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5
    feats = np.arange(16, dtype=np.float32).reshape(8, 2) * np.array([1, -1])
    grid = pool_to_grid(video(feats, np.arange(8), np.arange(8) + 1, 8.0), 4)
    expected = [[2, -1], [6, -5], [10, -9], [14, -13]]  # rows [2k, -(2k+1)]
    np.testing.assert_array_equal(grid, expected)
    assert grid.dtype == np.float32 and grid.shape == (4, 2)


def test_a_video_shorter_than_the_grid_repeats_its_nearest_clips() -> None:
    feats = np.array([[1.0], [2.0], [3.0]])
    grid = pool_to_grid(video(feats, [0, 1, 2], [1, 2, 3], 3.0), 8)
    # segment centres 0.1875 .. 2.8125 s; clip centres 0.5, 1.5, 2.5
    np.testing.assert_array_equal(grid[:, 0], [1, 1, 1, 2, 2, 3, 3, 3])


def test_a_single_clip_fills_the_whole_grid() -> None:
    grid = pool_to_grid(video([[7.0, 8.0]], [0], [0.5], 0.5), 32)
    assert grid.shape == (32, 2) and (grid == [7.0, 8.0]).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_features_name_the_video(bad) -> None:
    feats = np.ones((4, 3))
    feats[2, 1] = bad
    with pytest.raises(InputError, match=r"video 'clip42' has NaN or infinite features \(first at clip 2\)"):
        pool_to_grid(video(feats, np.arange(4), np.arange(4) + 1, 4.0, "clip42"), 4)


def test_no_clips_or_no_duration_is_an_error() -> None:
    with pytest.raises(InputError, match="'v1' has no clip features"):
        pool_to_grid(video(np.zeros((0, 3)), [], [], 4.0), 4)
    with pytest.raises(InputError, match="duration"):
        pool_to_grid(video(np.ones((2, 3)), [0, 0], [0, 0], float("nan")), 4)


def test_a_video_without_a_duration_is_laid_over_its_last_clips_end() -> None:
    features = np.arange(12, dtype=np.float32).reshape(4, 3)
    starts, ends = [0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]
    expected = pool_to_grid(video(features, starts, ends, 4.0), 2)
    for missing in (None, float("nan"), 0.0):
        assert np.array_equal(pool_to_grid(video(features, starts, ends, missing), 2), expected)
    assert not np.array_equal(pool_to_grid(video(features, starts, ends, 8.0), 2), expected)
