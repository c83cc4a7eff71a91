"""The evaluator: hand-worked cases, a brute-force reference on random predictions, NMS, and bad input."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest

from drn.errors import InputError
from drn.evaluation import EvalConfig, evaluate, format_result, parse_nms
from drn.nms import temporal_iou, temporal_nms
from drn.pairs import GroundingPair
from drn.predictions import Prediction


def pair(qid: int | str, start: float, end: float, video: str = "v", duration: float = 100.0) -> GroundingPair:
    return GroundingPair(qid, video, "a query", start, end, duration)


def preds(*items: tuple[int | str, list[list[float]]], video: str = "v") -> dict[int | str, Prediction]:
    return {qid: Prediction(qid, video, np.array(segments, dtype=float).reshape(-1, 3)) for qid, segments in items}


# --- hand-worked cases -----------------------------------------------------------------------------------------


def test_boundary_iou_counts_with_ge_but_not_gt() -> None:
    pairs = [pair(0, 0.0, 10.0)]
    predictions = preds((0, [[0, 5, 0.9], [0, 10, 0.8]]))  # top-1 IoU exactly 0.5, second IoU 1
    ge = evaluate(pairs, predictions, EvalConfig(ious=(0.5,)))
    gt = evaluate(pairs, predictions, EvalConfig(ious=(0.5,), comparison=">"))
    assert ge.recall == {(1, 0.5): 100.0, (5, 0.5): 100.0}
    assert gt.recall == {(1, 0.5): 0.0, (5, 0.5): 100.0}
    assert ge.miou == pytest.approx(50.0)


def test_segments_are_ranked_by_score_not_file_order() -> None:
    pairs = [pair(0, 0.0, 4.0)]
    result = evaluate(pairs, preds((0, [[6, 8, 0.1], [0, 4, 0.9]])))
    assert result.recall[(1, 0.7)] == 100.0 and result.miou == pytest.approx(100.0)


def test_ties_in_score_keep_file_order() -> None:
    pairs = [pair(0, 0.0, 4.0)]
    wrong_first = evaluate(pairs, preds((0, [[6, 8, 0.5], [0, 4, 0.5]])))
    right_first = evaluate(pairs, preds((0, [[0, 4, 0.5], [6, 8, 0.5]])))
    assert wrong_first.recall[(1, 0.3)] == 0.0 and wrong_first.recall[(5, 0.3)] == 100.0
    assert right_first.recall[(1, 0.3)] == 100.0


def test_nms_before_top_n_hand_worked() -> None:
    # Five near-duplicates of a wrong segment outrank the right one: only NMS brings it into the top 5.
    segments = [[20, 30, 0.9], [21, 30, 0.8], [22, 30, 0.7], [23, 30, 0.6], [24, 30, 0.5], [0, 10, 0.4]]
    pairs, predictions = [pair(0, 0.0, 10.0)], preds((0, segments))
    off = evaluate(pairs, predictions, EvalConfig(ious=(0.5,)))
    relative = evaluate(pairs, predictions, EvalConfig(ious=(0.5,), nms="m-0.05"))
    loose = evaluate(pairs, predictions, EvalConfig(ious=(0.5,), nms=0.95))  # IoU([20,30],[21,30]) = 0.9 is kept
    assert off.recall[(5, 0.5)] == 0.0
    assert relative.recall[(5, 0.5)] == 100.0
    assert loose.recall[(5, 0.5)] == 0.0
    assert relative.recall[(1, 0.5)] == off.recall[(1, 0.5)] == 0.0  # NMS never changes the top-1


def test_recall_and_miou_over_several_queries() -> None:
    pairs = [pair(0, 0, 10), pair(1, 0, 10), pair(2, 0, 10), pair(3, 0, 10)]
    predictions = preds(
        (0, [[0, 10, 1]]),  # IoU 1
        (1, [[0, 6, 1]]),  # IoU 0.6
        (2, [[0, 2, 1], [1, 9, 0.5]]),  # top-1 IoU 0.2, second IoU 0.8
        (3, []),  # nothing: a miss everywhere
    )
    result = evaluate(pairs, predictions, EvalConfig(ious=(0.3, 0.5, 0.7)))
    assert result.recall[(1, 0.3)] == 50.0 and result.recall[(1, 0.5)] == 50.0 and result.recall[(1, 0.7)] == 25.0
    assert result.recall[(5, 0.3)] == 75.0 and result.recall[(5, 0.7)] == 50.0
    assert result.miou == pytest.approx(100 * (1 + 0.6 + 0.2 + 0) / 4)
    assert result.top1_iou.tolist() == pytest.approx([1.0, 0.6, 0.2, 0.0])
    assert result.hits[(5, 0.7)].tolist() == [True, False, True, False]


# --- brute-force reference -------------------------------------------------------------------------------------


def reference_iou(a: list[float], b: list[float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def reference_scores(pairs, predictions, recall_at, ious, comparison, nms, allow_missing):
    """Plain loops over lists: sorted() is stable, greedy NMS keeps a segment if it overlaps no kept one."""
    hits = {(n, m): 0 for n in recall_at for m in ious}
    total_iou = 0.0
    for p in pairs:
        prediction = predictions.get(p.qid)
        if prediction is None:
            assert allow_missing
            continue
        ranked = sorted(prediction.segments.tolist(), key=lambda s: -s[2])
        truth = [p.start_s, p.end_s]
        if ranked:
            total_iou += reference_iou(truth, ranked[0])
        for m in ious:
            kept = ranked
            if nms != "off":
                threshold = m - 0.05 if nms == "m-0.05" else float(nms)
                kept = []
                for segment in ranked:
                    if all(reference_iou(segment, k) <= threshold for k in kept):
                        kept.append(segment)
            for n in recall_at:
                values = [reference_iou(truth, s) for s in kept[:n]]
                hit = any(v >= m for v in values) if comparison == ">=" else any(v > m for v in values)
                hits[(n, m)] += hit
    return {key: 100.0 * count / len(pairs) for key, count in hits.items()}, 100.0 * total_iou / len(pairs)


def random_case(seed: int, missing: bool):
    """Integer endpoints make IoUs land exactly on 0.3 / 0.5 / 0.7; one-decimal scores make ties."""
    rng = random.Random(seed)
    pairs, predictions = [], {}
    for qid in range(150):
        start = rng.randint(0, 15)
        pairs.append(pair(qid, float(start), float(rng.randint(start + 1, 20)), duration=20.0))
        if missing and rng.random() < 0.15:
            continue
        segments = []
        for _ in range(rng.randint(0, 10)):
            s = rng.randint(0, 19)
            segments.append([float(s), float(rng.randint(s, 20)), round(rng.random(), 1)])
        predictions[qid] = Prediction(qid, "v", np.array(segments).reshape(-1, 3))
    return pairs, predictions


@pytest.mark.parametrize(
    ("comparison", "nms", "allow_missing"),
    list(itertools.product([">=", ">"], ["off", "0.4", "m-0.05", "0"], [False, True])),
)
def test_matches_brute_force_reference(comparison: str, nms: str, allow_missing: bool) -> None:
    recall_at, ious = (1, 5, 10), (0.1, 0.3, 0.5, 0.7)
    for seed in range(3):
        pairs, predictions = random_case(seed, missing=allow_missing)
        config = EvalConfig(recall_at, ious, comparison, nms, allow_missing)
        result = evaluate(pairs, predictions, config)
        expected_recall, expected_miou = reference_scores(
            pairs, predictions, recall_at, ious, comparison, nms, allow_missing
        )
        assert result.recall == pytest.approx(expected_recall, abs=1e-9)
        assert result.miou == pytest.approx(expected_miou, abs=1e-9)
        assert result.num_missing == len(pairs) - len(predictions)


def test_random_case_exercises_boundaries_and_options() -> None:
    """Guard for the reference test: the options must actually change the numbers on these cases."""
    pairs, predictions = random_case(0, missing=False)
    base = evaluate(pairs, predictions, EvalConfig(ious=(0.3, 0.5, 0.7)))
    strict = evaluate(pairs, predictions, EvalConfig(ious=(0.3, 0.5, 0.7), comparison=">"))
    nms = evaluate(pairs, predictions, EvalConfig(ious=(0.3, 0.5, 0.7), nms="m-0.05"))
    assert base.recall != strict.recall and base.recall != nms.recall


# --- temporal NMS (drn/nms.py) ---------------------------------------------------------------------------------


def test_temporal_iou_hand_worked() -> None:
    others = np.array([[5, 15], [10, 20], [0, 10], [2, 3], [3, 3]], dtype=float)
    assert temporal_iou(np.array([0.0, 10.0]), others).tolist() == pytest.approx([1 / 3, 0.0, 1.0, 0.1, 0.0])
    assert temporal_iou(np.array([3.0, 3.0]), np.array([[3.0, 3.0]])).tolist() == [0.0]  # empty union


def test_temporal_nms_hand_worked() -> None:
    segments = np.array([[0, 10, 0.5], [0, 5, 0.9], [20, 30, 0.7], [1, 10, 0.6]])
    # Best first: [0,5] .9; [20,30] .7; [1,10] .6 overlaps [0,5] by 4/10 = 0.4; [0,10] .5 overlaps [1,10] by 0.9.
    assert temporal_nms(segments, 0.5).tolist() == [[0, 5, 0.9], [20, 30, 0.7], [1, 10, 0.6]]
    assert temporal_nms(segments, 0.3).tolist() == [[0, 5, 0.9], [20, 30, 0.7]]
    assert temporal_nms(segments, 0.4).tolist() == [[0, 5, 0.9], [20, 30, 0.7], [1, 10, 0.6]]  # IoU = thr kept
    assert temporal_nms(segments, 1.0).tolist() == [[0, 5, 0.9], [20, 30, 0.7], [1, 10, 0.6], [0, 10, 0.5]]
    assert temporal_nms(segments, 0.5, max_keep=2).tolist() == [[0, 5, 0.9], [20, 30, 0.7]]
    assert temporal_nms(np.zeros((0, 3)), 0.5).shape == (0, 3)


def test_temporal_nms_ties_keep_input_order() -> None:
    segments = np.array([[0, 10, 0.5], [1, 10, 0.5], [40, 50, 0.5]])
    assert temporal_nms(segments, 0.5).tolist() == [[0, 10, 0.5], [40, 50, 0.5]]
    assert temporal_nms(segments[[1, 0, 2]], 0.5).tolist() == [[1, 10, 0.5], [40, 50, 0.5]]


# --- bad input and output --------------------------------------------------------------------------------------


def test_missing_prediction_is_an_error_unless_allowed() -> None:
    pairs = [pair(0, 0, 10), pair(7, 0, 10)]
    predictions = preds((0, [[0, 10, 1]]))
    with pytest.raises(InputError, match="no prediction for qid 7"):
        evaluate(pairs, predictions)
    result = evaluate(pairs, predictions, EvalConfig(allow_missing=True))
    assert result.num_missing == 1 and result.recall[(1, 0.5)] == 50.0


def test_wrong_video_names_qid_and_line() -> None:
    predictions = {3: Prediction(3, "other", np.array([[0, 1, 1.0]]), line=4, source="p.jsonl")}
    with pytest.raises(InputError, match=r"p\.jsonl, line 4: qid 3: the prediction names video 'other'"):
        evaluate([pair(3, 0, 10)], predictions)


def test_string_and_int_qids_match_and_extras_are_counted() -> None:
    predictions = preds(("0", [[0, 10, 1]]), ("99", [[0, 10, 1]]))
    result = evaluate([pair(0, 0, 10)], predictions)
    assert result.recall[(1, 0.7)] == 100.0 and result.num_ignored == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"comparison": "=>"}, "comparison must be one of"),
        ({"nms": "fast"}, "NMS must be 'off'"),
        ({"nms": 1.5}, "NMS threshold must be in"),
        ({"ious": (1.2,)}, "IoU levels must lie in"),
        ({"recall_at": (0,)}, "recall_at must be positive"),
    ],
)
def test_bad_config(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        EvalConfig(**kwargs)


def test_parse_nms_forms() -> None:
    assert [parse_nms(v) for v in (None, "off", "OFF", 0.5, "0.50", "m-0.05", "m - 0.1")] == [
        "off",
        "off",
        "off",
        "0.5",
        "0.5",
        "m-0.05",
        "m-0.1",
    ]
    assert EvalConfig(nms="m-0.05").nms_threshold(0.5) == pytest.approx(0.45)
    assert EvalConfig(nms="0.4").nms_threshold(0.7) == 0.4 and EvalConfig().nms_threshold(0.7) is None


def test_format_and_json_carry_the_convention() -> None:
    result = evaluate([pair(0, 0, 10)], preds((0, [[0, 5, 1]])), EvalConfig(ious=(0.1, 0.5), nms="m-0.05"))
    text = format_result(result, title="demo")
    assert text.splitlines()[0] == "demo"
    assert "IoU=0.1" in text and "100.00" in text and "mIoU 50.00" in text
    assert "IoU >= m" in text and "m-0.05" in text and "ties: stable, file order" in text
    data = json.loads(json.dumps(result.to_dict()))
    assert data["recall"]["R@1,IoU=0.5"] == 100.0 and data["convention"]["nms"] == "m-0.05"
    assert data["num_queries"] == 1


def test_no_pairs_is_an_error() -> None:
    with pytest.raises(InputError, match="no pairs"):
        evaluate([], {})
