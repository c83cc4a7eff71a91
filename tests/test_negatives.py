"""Negative pairs: the paraphrase filter, in-batch negative rows, their targets and losses, and K = 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drn.config import load_config
from drn.data import PairCollator, collate
from drn.errors import InputError
from drn.losses import compute_losses
from drn.model import DRN
from drn.negatives import build_negative_filter
from drn.pairs import GroundingPair
from drn.targets import assign_targets
from drn.training import stages_from_config, step_losses, train_step

SMALL = [
    "model.feature_dim=16", "model.num_segments=8", "model.lstm_hidden=8", "model.attention_dim=8",
    "model.location_dim=4", "model.level_channels=[8,8,16]", "model.fpn_channels=8", "model.iou_channels=[8,4]",
]
DOOR_PAIRS = [
    GroundingPair(0, "v1", "person opens the door", 1.0, 5.0, 10.0),
    GroundingPair(1, "v2", "Person opens the door.", 2.0, 6.0, 10.0),  # the same text
    GroundingPair(2, "v3", "a person is opening the door", 0.0, 4.0, 10.0),  # a near paraphrase (MiniLM 0.975)
    GroundingPair(3, "v4", "person sits on the sofa", 3.0, 7.0, 10.0),
    GroundingPair(4, "v5", "person eats a sandwich", 3.0, 9.0, 10.0),
]


@pytest.fixture(scope="module")
def door_filter():
    return build_negative_filter(DOOR_PAIRS, paraphrase_cosine=0.9)


def items(pairs) -> list[dict]:
    gen = torch.Generator().manual_seed(3)
    return [{"video": torch.randn(8, 16, generator=gen), "words": [(2 + i,), (3,), (4 + i,)],
             "gt": torch.tensor([p.start_s * 0.8, p.end_s * 0.8]), "duration": p.duration_s, "qid": p.qid,
             "video_id": p.video_id, "query": p.query} for i, p in enumerate(pairs)]


def test_the_filter_keeps_same_text_and_paraphrase_videos_out_of_the_negatives(door_filter) -> None:
    assert door_filter.blocks("person opens the door", "v2")  # same text after normalisation
    assert door_filter.blocks("person opens the door", "v3")  # paraphrase
    assert not door_filter.blocks("person opens the door", "v4")
    assert door_filter.blocks("person sits on the sofa", "v4") and not door_filter.blocks("person sits on the sofa",
                                                                                            "v1")
    report = door_filter.report
    assert report.candidates == 5 * 4
    assert report.same_text == 2  # v1 <-> v2
    assert report.paraphrase == 2 + 2  # v1 and v2 -> v3, v3 -> v1 and v2
    assert "excluded" in report.line() and "0.9" in report.line()
    collator = PairCollator(door_filter, per_positive=4, seed=0)
    for seed in range(5):
        collator.sampler.seed = seed
        batch = collator(items(DOOR_PAIRS))
        for row, video in zip(batch["query_index"].tolist(), batch["video_index"].tolist(), strict=True):
            if row != video:  # a negative row: never a video that holds the query
                assert not door_filter.blocks(DOOR_PAIRS[row].query, DOOR_PAIRS[video].video_id)
        negatives = batch["negative"]
        door_rows = batch["query_index"][negatives] == 0
        assert sorted(batch["video_index"][negatives][door_rows].tolist()) == [3, 4]  # only v4 and v5 remain
        assert batch["blocked"][0].tolist() == [True, True, True, False, False]


def test_hard_negatives_come_from_the_nearest_other_texts_of_the_split(door_filter) -> None:
    hard = door_filter.hard_videos("person opens the door")
    assert sorted(hard) == ["v4", "v5"]  # every other video is blocked: same text or paraphrase
    items_ = items(DOOR_PAIRS)
    grids = {it["video_id"]: it["video"].numpy() for it in items_}
    collator = PairCollator(door_filter, per_positive=1, seed=0, hard_fraction=1.0, grids=grids)
    batch = collator(items_[:2])  # both rows are about the door; neither v4 nor v5 is in the batch
    assert batch["video"].shape[0] > 2  # the hard videos' grids were appended
    negatives = batch["negative"]
    assert int(negatives.sum()) == 2
    for column in batch["video_index"][negatives].tolist():
        torch.testing.assert_close(batch["video"][column], torch.from_numpy(grids[hard[0]]) if
                                   torch.equal(batch["video"][column], torch.from_numpy(grids[hard[0]])) else
                                   torch.from_numpy(grids[hard[1]]))
    assert PairCollator(door_filter, 0, grids=grids)(items_[:2]).keys() == collate(items_[:2]).keys()


def test_negative_rows_have_no_positive_location_and_zero_targets(door_filter) -> None:
    config = load_config(None, SMALL)
    torch.manual_seed(0)
    model = DRN(config, torch.randn(12, 6))
    batch = PairCollator(door_filter, per_positive=2, seed=1)(items(DOOR_PAIRS))
    negative = batch["negative"]
    assert int(negative.sum()) > 0 and batch["query_index"].shape[0] == 5 + int(negative.sum())
    stage = stages_from_config(config, [3])[0]
    losses, targets = step_losses(model, batch, stage, config)
    assert not bool(targets.positive[negative].any())  # all-zero matching labels, hence no location loss terms
    assert bool(targets.positive[~negative].any(dim=1).all())  # every positive row keeps its positives
    assert targets.num_positive_rows == 5
    # the location loss sees positive rows only: it equals the loss of the positive rows alone
    model.eval()  # batch norm in eval mode: rows do not influence each other
    losses, targets = step_losses(model, batch, stage, config)
    alone, alone_targets = step_losses(model, collate(items(DOOR_PAIRS)), stage, config)
    torch.testing.assert_close(losses["location"], alone["location"])
    # the matching normaliser counts positives only, so negatives add loss without diluting positive rows
    assert targets.num_positive == alone_targets.num_positive
    assert float(losses["matching"].detach()) > float(alone["matching"].detach())


def test_quality_targets_are_zero_on_negative_rows() -> None:
    config = load_config(None, SMALL)
    torch.manual_seed(0)
    model = DRN(config, torch.randn(12, 6)).eval()
    video, words = torch.randn(2, 8, 16), torch.tensor([[2, 3], [4, 5]])
    output = model(video, words, words != 0, torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0])).flat()
    gt = torch.tensor([[1.0, 5.0], [2.0, 6.0], [1.0, 5.0]])
    negative = torch.tensor([False, False, True])
    targets = assign_targets(gt, output.points, output.levels, config.scaled_level_ranges(), negative=negative)
    pred = torch.sigmoid(output.iou_logits)
    losses = compute_losses(output, targets, config, ("quality",))
    # expected: Smooth-L1 of every row (the negative row against 0), divided by the positive rows' locations
    from drn.losses import segment_iou

    boxes = output.boxes(8)
    target = segment_iou(boxes, gt.unsqueeze(1).expand_as(boxes))
    target[2] = 0.0
    expected = torch.nn.functional.smooth_l1_loss(pred, target, reduction="sum") / (2 * pred.shape[1])
    torch.testing.assert_close(losses["quality"], expected)


def test_zero_negatives_reproduce_training_without_them(door_filter) -> None:
    config = load_config(None, SMALL)
    stage = stages_from_config(config, [1])[0]
    results = []
    for collator in (collate, PairCollator(door_filter, per_positive=0), PairCollator(None, per_positive=3)):
        torch.manual_seed(0)
        model = DRN(config, torch.randn(12, 6))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        batch = collator(items(DOOR_PAIRS))
        assert "negative" not in batch
        results.append((train_step(model, batch, optimizer, stage, config), model.state_dict()))
    for losses, state in results[1:]:
        assert losses == results[0][0]
        for name, value in state.items():
            torch.testing.assert_close(value, results[0][1][name], rtol=0, atol=0)


def test_bad_negative_settings_are_clear_errors() -> None:
    with pytest.raises(InputError, match="train.negatives.per_positive must be 0"):
        load_config(None, ["train.negatives.per_positive=-1"])
    everywhere = [GroundingPair(i, f"v{i}", "person opens the door", 1.0, 2.0, 10.0) for i in range(3)]
    with pytest.raises(InputError, match="every one of the 3 training videos holds the query"):
        build_negative_filter(everywhere, paraphrase_cosine=0.9)


def test_the_filter_blocks_by_paraphrase_cosine_with_an_injected_embedding() -> None:
    pairs = [GroundingPair(i, f"v{i}", text, 0.0, 1.0, 5.0) for i, text in enumerate(["a b", "c d", "e f"])]
    vectors = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=np.float32)  # cos(a b, c d) = 0.8
    loose = build_negative_filter(pairs, 0.75, embed=lambda texts: vectors)
    strict = build_negative_filter(pairs, 0.85, embed=lambda texts: vectors)
    assert loose.blocks("a b", "v1") and not strict.blocks("a b", "v1")
    assert not loose.blocks("a b", "v2")


def test_a_video_showing_the_querys_labelled_action_is_never_its_negative() -> None:
    """v3 shows a door being opened but is annotated only with another action: with labels it is blocked."""
    from drn.datasets.labels import Action, VideoLabels

    pairs = [
        GroundingPair(0, "v1", "person opens the door", 1.0, 5.0, 10.0),
        GroundingPair(1, "v2", "person sits on the sofa", 3.0, 7.0, 10.0),
        GroundingPair(2, "v3", "person eats a sandwich", 3.0, 9.0, 10.0),
        GroundingPair(3, "v4", "person drinks from a cup", 0.0, 4.0, 10.0),
    ]
    labels = VideoLabels({
        "v1": [Action("c008", 1.2, 5.0), Action("c151", 0.0, 10.0)],  # c008 overlaps v1's door moment best
        "v2": [Action("c123", 3.0, 7.0)],
        "v3": [Action("c061", 3.0, 9.0), Action("c008", 0.0, 2.0)],  # shows c008 too, unannotated
        "v4": [Action("c106", 0.0, 4.0), Action("c151", 5.0, 9.0)],  # shows c151, which is not the door's label
    }, source="hand-made labels")
    plain = build_negative_filter(pairs, 0.99, embed=lambda texts: np.eye(len(texts), dtype=np.float32))
    labelled = build_negative_filter(pairs, 0.99, embed=lambda texts: np.eye(len(texts), dtype=np.float32),
                                     labels=labels)
    assert not plain.blocks("person opens the door", "v3")
    assert labelled.blocks("person opens the door", "v3")
    assert not labelled.blocks("person opens the door", "v2")
    assert not labelled.blocks("person opens the door", "v4")  # v4 shows c151, not c008
    assert labelled.blocks("person eats a sandwich", "v3") and not labelled.blocks("person eats a sandwich", "v1")
    assert "v3" not in labelled.hard_videos("person opens the door")
    report = labelled.report
    assert (report.same_text, report.paraphrase, report.labelled) == (0, 0, 1)
    assert report.labels_source == "hand-made labels" and report.unlabelled_texts == 0
    assert "1 by the text's labelled action (hand-made labels" in report.line()
    collator = PairCollator(labelled, per_positive=3, seed=0)
    for seed in range(10):
        collator.sampler.seed = seed
        batch = collator(items(pairs))
        negatives = {(row, video) for row, video, neg in zip(batch["query_index"].tolist(),
                                                             batch["video_index"].tolist(),
                                                             batch["negative"].tolist(), strict=True) if neg}
        assert negatives and (0, 2) not in negatives  # the door query never meets v3


def test_the_score_guard_drops_negatives_scored_as_high_as_their_positive() -> None:
    from drn.training import guarded_negatives

    # rows 0, 1: positives of queries 0 and 1; rows 2, 3: negatives of query 0; row 4: a negative of query 1
    logits = torch.tensor([[2.0, 0.0], [-3.0, -1.0], [0.0, 2.5], [1.0, 1.9], [0.0, 0.5]])
    negative = torch.tensor([False, False, True, True, True])
    query_index = torch.tensor([0, 1, 0, 0, 1])
    guarded = guarded_negatives(logits, negative, query_index, min_score=0.5)
    # row 2 reaches its positive's 2.0; row 3 does not; row 4 beats its positive (-1.0) but that positive scores
    # below 0.5 (the model has not learned to find it), so the guard keeps it
    assert guarded.tolist() == [False, False, True, False, False]
    assert guarded_negatives(logits, negative, query_index, min_score=0.0).tolist() == [False, False, True, False,
                                                                                       True]


def test_a_guarded_step_leaves_the_guarded_rows_out_and_counts_them() -> None:
    config = load_config(None, [*SMALL, "train.negatives.per_positive=2", "train.negatives.score_guard=true",
                                "train.negatives.guard_min_score=0.0"])
    pairs = DOOR_PAIRS[2:]
    flt = build_negative_filter(pairs, 0.99, embed=lambda texts: np.eye(len(texts), dtype=np.float32))
    batch = PairCollator(flt, per_positive=2, seed=0)(items(pairs))
    torch.manual_seed(0)
    model = DRN(config, torch.randn(12, 6))
    stage = stages_from_config(config)[0]
    losses, targets = step_losses(model, batch, stage, config)
    assert targets.negative_rows == int(batch["negative"].sum()) > 0
    assert 0 < targets.negatives_guarded < targets.negative_rows  # at random weights some negative scores higher
    assert targets.gt.shape[0] == len(batch["query_index"]) - targets.negatives_guarded
    assert int(targets.negative.sum()) == targets.negative_rows - targets.negatives_guarded
    assert torch.isfinite(losses["total"])
    config.train.negatives.score_guard = False
    _, unguarded = step_losses(model, batch, stage, config)
    assert unguarded.gt.shape[0] == len(batch["query_index"]) and unguarded.negatives_guarded == 0
