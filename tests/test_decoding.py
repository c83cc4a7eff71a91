"""Points to segments in seconds: score m * u (or m), top per level, NMS, top-n."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from drn.config import DecodeConfig
from drn.decoding import SEGMENT_COLUMNS, decode_segments
from drn.model import FlatOutput


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def output(match, quality, distances, points, levels):
    return FlatOutput(
        match_logits=torch.tensor([[logit(p) for p in match]]),
        distances=torch.tensor([distances], dtype=torch.float32),
        iou_logits=None if quality is None else torch.tensor([[logit(p) for p in quality]]),
        points=torch.tensor(points, dtype=torch.float32),
        levels=torch.tensor(levels),
    )


def test_boxes_in_seconds_ranked_by_match_times_quality() -> None:
    # T = 4, video 20 s (5 s per segment). Location 0.5 -> box (0, 1) grid = (0, 5) s;
    # location 2.5 with (1.5, 1.5) -> (1, 4) -> (5, 20) s; location 2.0 (level 1) -> (0.0 clamp, 4) -> (0, 20) s.
    out = output(match=[0.9, 0.5, 0.8], quality=[0.2, 0.9, 0.5],
                 distances=[[0.5, 0.5], [1.5, 1.5], [3.0, 5.0]], points=[0.5, 2.5, 2.0], levels=[0, 0, 1])
    segs = decode_segments(out, [20.0], 4, DecodeConfig(top_per_level=4, nms_threshold=1.0, top_n=5))[0]
    assert SEGMENT_COLUMNS == ("start_s", "end_s", "score", "match", "quality")
    np.testing.assert_allclose(segs[:, :2], [[5, 20], [0, 20], [0, 5]], atol=1e-5)
    np.testing.assert_allclose(segs[:, 2], [0.45, 0.40, 0.18], atol=1e-5)
    np.testing.assert_allclose(segs[:, 3], [0.5, 0.8, 0.9], atol=1e-5)
    np.testing.assert_allclose(segs[:, 4], [0.9, 0.5, 0.2], atol=1e-5)


def test_without_quality_the_score_is_the_match() -> None:
    out = output(match=[0.9, 0.5], quality=None, distances=[[0.5, 0.5], [1.5, 1.5]], points=[0.5, 2.5],
                 levels=[0, 0])
    segs = decode_segments(out, [4.0], 4, DecodeConfig(nms_threshold=1.0))[0]
    np.testing.assert_allclose(segs[:, 2], [0.9, 0.5], atol=1e-6)
    np.testing.assert_allclose(segs[:, 4], [1.0, 1.0])


def test_nms_drops_near_duplicates_and_top_n_cuts() -> None:
    out = output(match=[0.9, 0.85, 0.3, 0.2], quality=None,
                 distances=[[0.5, 0.5], [0.5, 0.6], [0.5, 0.5], [0.5, 0.5]],
                 points=[0.5, 0.5, 2.5, 3.5], levels=[0, 0, 0, 0])
    segs = decode_segments(out, [4.0], 4, DecodeConfig(top_per_level=4, nms_threshold=0.5, top_n=5))[0]
    assert segs[:, 2].tolist() == pytest.approx([0.9, 0.3, 0.2])  # the 0.85 twin overlaps 0.9 by 0.91
    segs = decode_segments(out, [4.0], 4, DecodeConfig(top_per_level=4, nms_threshold=0.5, top_n=2))[0]
    assert len(segs) == 2


def test_top_per_level_limits_candidates_of_each_level() -> None:
    out = output(match=[0.9, 0.8, 0.7, 0.1], quality=None, distances=[[0.5, 0.5]] * 4,
                 points=[0.5, 1.5, 2.5, 2.0], levels=[0, 0, 0, 1])
    segs = decode_segments(out, [4.0], 4, DecodeConfig(top_per_level=1, nms_threshold=1.0, top_n=10))[0]
    assert segs[:, 2].tolist() == pytest.approx([0.9, 0.1])  # the best of level 0 and the best of level 1
