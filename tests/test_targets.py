"""assign_targets: hand-computed positives, level ranges, the positive modes and the at-least-one rule."""

from __future__ import annotations

import math

import torch

from drn.config import DRNConfig
from drn.model import level_points
from drn.targets import assign_targets

T = 32
RANGES = DRNConfig().scaled_level_ranges()  # [0, 6], [5.6, 11], [11, inf] at T = 32


def layout():
    points = level_points(T)
    levels = torch.cat([torch.full_like(p, i, dtype=torch.long) for i, p in enumerate(points)])
    return torch.cat(points), levels


def positives(gt, mode="all"):
    points, levels = layout()
    targets = assign_targets(torch.tensor([gt]), points, levels, RANGES, mode, torch.Generator().manual_seed(0))
    chosen = targets.positive[0]
    return sorted(zip(levels[chosen].tolist(), points[chosen].tolist(), strict=True)), targets


def test_short_moment_hand_computed() -> None:
    # gt (2, 7): level-0 points 2.5..6.5 are inside with reach <= 4.5; level-1 points 3 and 5 reach 4 < 5.6;
    # level-2 point 6 reaches 4 < 11.
    found, targets = positives((2.0, 7.0))
    assert found == [(0, 2.5), (0, 3.5), (0, 4.5), (0, 5.5), (0, 6.5)]
    points, _ = layout()
    index = int((points == 4.5).nonzero()[0])  # first 4.5 is level 0
    assert targets.regression[0, index].tolist() == [2.5, 2.5]


def test_level_ranges_send_long_moments_up() -> None:
    # gt (0, 30): level 0 reaches >= 15.5 (> 6); level 1 points reach >= 15 (> 11); level 2 (2, 6, ..., 26)
    # reach max(t, 30 - t) >= 15 -> all inside ones qualify at level 2 only.
    found, _ = positives((0.0, 30.0))
    assert {lvl for lvl, _ in found} == {2}
    assert [t for _, t in found] == [2.0, 6.0, 10.0, 14.0, 18.0, 22.0, 26.0]


def test_overlapping_bounds_allow_two_levels() -> None:
    # gt (4, 16): reach of the centre 10 is 6 -> level 0 point 9.5/10.5 reach 6.5 > 6 (no); level-1 point 9
    # reaches 7 and 11 reaches 7 (yes, in [5.6, 11]); level 2 point 10 reaches 6 < 11 (no).
    found, _ = positives((4.0, 16.0))
    assert {lvl for lvl, _ in found} == {1}
    assert (1, 9.0) in found and (1, 11.0) in found and (1, 5.0) in found


def test_every_ground_truth_gets_at_least_one_positive() -> None:
    # gt (3.55, 3.95) holds no location at all: the nearest level-0 location (3.5) becomes positive.
    found, _ = positives((3.55, 3.95))
    assert found == [(0, 3.5)]
    found, _ = positives((3.55, 3.95), "half")
    assert found == [(0, 3.5)]


def test_centre_random_and_half_modes() -> None:
    all_found, _ = positives((2.0, 7.0), "all")
    centre, _ = positives((2.0, 7.0), "center")
    assert centre == [(0, 4.5)]
    random_one, _ = positives((2.0, 7.0), "random")
    assert len(random_one) == 1 and random_one[0] in all_found
    half, _ = positives((2.0, 7.0), "half")  # |t - 4.5| <= 1.25
    assert half == [(0, 3.5), (0, 4.5), (0, 5.5)]


def test_batch_rows_are_independent_and_ranges_scale_with_t() -> None:
    points, levels = layout()
    gt = torch.tensor([[2.0, 7.0], [0.0, 30.0]])
    targets = assign_targets(gt, points, levels, RANGES)
    assert targets.positive.sum(dim=1).tolist() == [5, 7]
    config = DRNConfig()
    config.model.num_segments = 64
    assert config.scaled_level_ranges()[1] == (11.2, 22.0) and math.isinf(config.scaled_level_ranges()[2][1])
