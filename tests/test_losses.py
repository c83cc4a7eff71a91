"""IoU loss, focal loss and the quality loss, against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from drn.config import load_config
from drn.losses import centerness, compute_losses, iou_loss, segment_iou, sigmoid_focal_loss
from drn.model import FlatOutput
from drn.targets import Targets


def test_segment_iou_and_iou_loss() -> None:
    pred = torch.tensor([[0.0, 2.0], [1.0, 3.0], [5.0, 6.0]])
    gt = torch.tensor([[1.0, 3.0], [1.0, 3.0], [1.0, 3.0]])
    assert segment_iou(pred, gt).tolist() == pytest.approx([1 / 3, 1.0, 0.0])
    assert iou_loss(pred[:2], gt[:2]).item() == pytest.approx(math.log(3) / 2)
    assert iou_loss(pred[1:2], gt[1:2]).item() == pytest.approx(0.0, abs=1e-6)
    assert iou_loss(pred[2:], gt[2:]).item() > 10  # disjoint: large, finite
    assert iou_loss(pred[:0], gt[:0]).item() == 0.0


def test_focal_loss_hand_values() -> None:
    logits = torch.tensor([0.0, 0.0, 2.0])
    labels = torch.tensor([1, 0, 1])
    p = 1 / (1 + math.exp(-2))
    expected = (0.25 * 0.25 * math.log(2)) + (0.75 * 0.25 * math.log(2)) + 0.25 * (1 - p) ** 2 * -math.log(p)
    assert sigmoid_focal_loss(logits, labels, 0.25, 2.0).item() == pytest.approx(expected, rel=1e-5)
    # gamma 0, alpha 0.5 is half the binary cross-entropy
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float(), reduction="sum")
    assert sigmoid_focal_loss(logits, labels, 0.5, 0.0).item() == pytest.approx(0.5 * bce.item(), rel=1e-5)


def test_centerness_values() -> None:
    c = centerness(torch.tensor([1.0, 2.0, 3.5, 5.0]), torch.tensor([[0.0, 4.0]]))
    assert c[0].tolist() == pytest.approx([math.sqrt(1 / 3), 1.0, math.sqrt(0.5 / 3.5), 0.0])


def make_output(match, distances, iou_logits, points):
    return FlatOutput(torch.tensor([match]), torch.tensor([distances]), torch.tensor([iou_logits]),
                      torch.tensor(points), torch.zeros(len(points), dtype=torch.long))


def test_compute_losses_normalises_by_positives_and_targets_the_predicted_iou() -> None:
    config = load_config(None, ["model.num_segments=4"])
    out = make_output([0.0, 0.0], [[0.5, 0.5], [1.5, 0.5]], [0.0, 0.0], [0.5, 1.5])
    targets = Targets(positive=torch.tensor([[True, False]]),
                      regression=torch.zeros(1, 2, 2), gt=torch.tensor([[0.0, 1.0]]))
    losses = compute_losses(out, targets, config)
    assert losses["location"].item() == pytest.approx(0.0, abs=1e-6)  # box (0, 1) equals the ground truth
    focal = 0.25 * 0.25 * math.log(2) + 0.75 * 0.25 * math.log(2)
    assert losses["matching"].item() == pytest.approx(focal, rel=1e-5)  # one positive
    # quality targets: IoU of (0, 1) is 1, of (0, 2) is 0.5; prediction sigmoid(0) = 0.5 -> smooth-L1 mean
    assert losses["quality"].item() == pytest.approx((0.5 * 0.5**2 + 0.0) / 2)
    assert losses["total"].item() == pytest.approx(sum(losses[k].item() for k in ("location", "matching",
                                                                                     "quality")))
    only = compute_losses(out, targets, config, ("quality",))
    assert set(only) == {"quality", "total"}


def test_quality_loss_only_on_high_targets_as_in_the_authors_code() -> None:
    config = load_config(None, ["model.num_segments=4", "loss.iou_head_min_target=0.9"])
    out = make_output([0.0, 0.0], [[0.5, 0.5], [1.5, 0.5]], [0.0, 0.0], [0.5, 1.5])
    targets = Targets(torch.tensor([[True, False]]), torch.zeros(1, 2, 2), torch.tensor([[0.0, 1.0]]))
    assert compute_losses(out, targets, config, ("quality",))["quality"].item() == pytest.approx(0.5 * 0.5**2)


def test_quality_loss_does_not_push_gradients_into_the_boxes() -> None:
    config = load_config(None, ["model.num_segments=4"])
    distances = torch.tensor([[[0.5, 0.5], [1.5, 0.5]]], requires_grad=True)
    iou_logits = torch.zeros(1, 2, requires_grad=True)
    out = FlatOutput(torch.zeros(1, 2), distances, iou_logits, torch.tensor([0.5, 1.5]),
                     torch.zeros(2, dtype=torch.long))
    targets = Targets(torch.tensor([[True, False]]), torch.zeros(1, 2, 2), torch.tensor([[0.0, 1.0]]))
    compute_losses(out, targets, config, ("quality",))["total"].backward()
    assert distances.grad is None and iou_logits.grad is not None
