"""The no-video baselines: the window grid, fitting, and the Charades-STA floor of DESIGN.md section 6."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drn.baselines import (
    FixedWindow,
    candidate_windows,
    fit_fixed_window,
    fixed_window_predictions,
    whole_video_predictions,
)
from drn.datasets import load_split
from drn.errors import InputError
from drn.evaluation import EvalConfig, evaluate
from drn.pairs import GroundingPair


def test_candidate_windows_grid() -> None:
    windows = candidate_windows(0.25)
    assert windows.tolist() == [
        [0, 0.25], [0, 0.5], [0, 0.75], [0, 1], [0.25, 0.5], [0.25, 0.75], [0.25, 1], [0.5, 0.75], [0.5, 1],
        [0.75, 1],
    ]  # fmt: skip
    assert len(candidate_windows(0.01)) == 101 * 100 // 2
    with pytest.raises(InputError, match="step must divide 1"):
        candidate_windows(0.3)


def test_fit_finds_the_window_the_moments_share() -> None:
    # Moments at [0.4, 0.6] of videos of different lengths: at IoU 0.7 only [0.4, 0.6] itself hits them.
    pairs = [GroundingPair(i, f"v{i}", "q", 0.4 * d, 0.6 * d, d) for i, d in enumerate([10.0, 20.0, 35.0])]
    pairs.append(GroundingPair(9, "w", "q", 0.0, 1.0, 10.0))  # an outlier
    window = fit_fixed_window(pairs, step=0.1, objective="r1@0.7")
    assert (window.start_frac, window.end_frac) == pytest.approx((0.4, 0.6))
    assert window.train_score == pytest.approx(0.75) and window.objective == "r1@0.7"
    assert fit_fixed_window(pairs, step=0.1).train_score == pytest.approx(0.75)  # default objective: R@1 IoU 0.5
    assert fit_fixed_window(pairs, step=0.1, objective="miou", chunk_elements=5).start_frac == pytest.approx(0.4)
    with pytest.raises(InputError, match="unknown objective"):
        fit_fixed_window(pairs, objective="r5")
    with pytest.raises(InputError, match="no training pairs"):
        fit_fixed_window([])


def test_baseline_predictions_scale_to_each_video() -> None:
    pairs = [GroundingPair(0, "a", "q", 1.0, 2.0, 10.0), GroundingPair("x", "b", "q", 1.0, 2.0, 40.0)]
    whole = whole_video_predictions(pairs)
    fixed = fixed_window_predictions(pairs, FixedWindow(0.25, 0.5))
    assert [p.segments.tolist() for p in whole] == [[[0.0, 10.0, 1.0]], [[0.0, 40.0, 1.0]]]
    assert [p.segments.tolist() for p in fixed] == [[[2.5, 5.0, 1.0]], [[10.0, 20.0, 1.0]]]
    assert [(p.qid, p.video_id) for p in fixed] == [(0, "a"), ("x", "b")]


def test_charades_sta_fixed_window_floor(shared_data: Path) -> None:
    folder = shared_data / "annotations" / "charades_sta"
    window = fit_fixed_window(load_split("charades_sta", folder, "train").pairs, step=0.05)
    assert (window.start_frac, window.end_frac) == pytest.approx((0.0, 0.30))
    test = load_split("charades_sta", folder, "test").pairs
    predictions = {p.qid: p for p in fixed_window_predictions(test, window)}
    result = evaluate(test, predictions, EvalConfig(ious=(0.3, 0.5, 0.7), comparison=">=", nms="off"))
    assert [round(result.recall[(1, m)], 2) for m in (0.3, 0.5, 0.7)] == [40.30, 30.65, 15.16]
    assert np.array_equal(result.hits[(1, 0.5)], result.hits[(5, 0.5)])  # one segment: R@5 = R@1
