"""DRN losses (DESIGN.md section 5): IoU loss for location, focal loss for matching, Smooth-L1 for the IoU head.

Negative rows (``Targets.negative``: a query with a video that does not hold it) add matching terms with every
label 0 and IoU-head terms with target 0, and nothing to the location loss. The normalisers count positives only
(matching: positive locations; IoU head: the locations of positive rows), so a positive row weighs what it
weighs without negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from drn.config import DRNConfig
from drn.model import FlatOutput
from drn.targets import Targets

LOSS_NAMES = ("location", "matching", "quality")
_EPS = 1e-6


def segment_iou(a: Tensor, b: Tensor) -> Tensor:
    """Element-wise IoU of segments ``a [..., 2]`` and ``b [..., 2]`` (0 where the union is empty)."""
    inter = (torch.minimum(a[..., 1], b[..., 1]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    union = torch.maximum(a[..., 1], b[..., 1]) - torch.minimum(a[..., 0], b[..., 0])
    return torch.where(union > 0, inter / union.clamp(min=_EPS), torch.zeros_like(inter))


def iou_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean of ``-log(I / U)`` over rows of predicted and target segments ``[N, 2]``; 0 for no rows."""
    if pred.shape[0] == 0:
        return pred.sum() * 0.0
    return -torch.log(segment_iou(pred, target).clamp(min=_EPS)).mean()


def sigmoid_focal_loss(logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Summed sigmoid focal loss (Lin et al. 2017) of ``logits`` against 0/1 ``labels`` of the same shape."""
    labels = labels.to(logits.dtype)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    p_t = p * labels + (1 - p) * (1 - labels)
    alpha_t = alpha * labels + (1 - alpha) * (1 - labels)
    return (alpha_t * (1 - p_t) ** gamma * ce).sum()


def centerness(points: Tensor, gt: Tensor) -> Tensor:
    """FCOS centerness ``sqrt(min(l, r) / max(l, r))`` of each location for each ground truth; 0 outside."""
    left = points.unsqueeze(0) - gt[:, :1]
    right = gt[:, 1:] - points.unsqueeze(0)
    inside = (left > 0) & (right > 0)
    ratio = torch.minimum(left, right).clamp(min=0) / torch.maximum(left, right).clamp(min=_EPS)
    return torch.where(inside, ratio.sqrt(), torch.zeros_like(ratio))


def compute_losses(
    output: FlatOutput, targets: Targets, config: DRNConfig, which: tuple[str, ...] = LOSS_NAMES
) -> dict[str, Tensor]:
    """The losses named in ``which`` and their sum under ``"total"``."""
    losses: dict[str, Tensor] = {}
    positive = targets.positive
    if "location" in which:
        pred = torch.stack([output.points - output.distances[..., 0], output.points + output.distances[..., 1]], -1)
        gt = targets.gt.unsqueeze(1).expand_as(pred)
        losses["location"] = iou_loss(pred[positive], gt[positive])
    if "matching" in which:
        focal = sigmoid_focal_loss(output.match_logits, positive, config.loss.focal_alpha, config.loss.focal_gamma)
        losses["matching"] = focal / max(int(positive.sum()), 1)
    if "quality" in which and output.iou_logits is not None:
        with torch.no_grad():
            if config.model.quality == "centerness":
                target = centerness(output.points, targets.gt)
            else:
                boxes = output.boxes(config.model.num_segments)
                target = segment_iou(boxes, targets.gt.unsqueeze(1).expand_as(boxes))
            if targets.negative is not None:
                target = target.masked_fill(targets.negative.unsqueeze(1), 0.0)
        keep = target > config.loss.iou_head_min_target if config.loss.iou_head_min_target > 0 else None
        pred = torch.sigmoid(output.iou_logits)
        if keep is None and targets.negative is None:
            losses["quality"] = F.smooth_l1_loss(pred, target)
        elif keep is None:  # the mean over the positive rows' locations, as without negatives
            positive_cells = max(targets.num_positive_rows, 1) * pred.shape[1]
            losses["quality"] = F.smooth_l1_loss(pred, target, reduction="sum") / positive_cells
        elif bool(keep.any()):
            losses["quality"] = F.smooth_l1_loss(pred[keep], target[keep])
        else:
            losses["quality"] = pred.sum() * 0.0
    losses["total"] = sum(losses.values()) if losses else output.match_logits.sum() * 0.0
    return losses
