"""Model outputs to ranked segments in seconds: score, top candidates per level, temporal NMS, top-n.

The score of a location is ``m * u`` (matching times IoU or centerness), or ``m`` alone when the model has no
quality head (``model.quality: none``). Each result is an array ``[n, 5]`` with the columns of
``SEGMENT_COLUMNS``, best first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from drn.config import DecodeConfig
from drn.model import FlatOutput
from drn.nms import temporal_iou

SEGMENT_COLUMNS = ("start_s", "end_s", "score", "match", "quality")


def location_scores(output: FlatOutput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(final score, matching m, quality u) per location, each ``[B, P]``; u is 1 without a quality head."""
    match = torch.sigmoid(output.match_logits)
    quality = torch.ones_like(match) if output.iou_logits is None else torch.sigmoid(output.iou_logits)
    return match * quality, match, quality


def nms_order(segments: np.ndarray, threshold: float, max_keep: int) -> list[int]:
    """Indices of rows ``(start, end, score, ...)`` kept by greedy temporal NMS, best first."""
    order = np.argsort(-segments[:, 2], kind="stable")
    if threshold >= 1.0:
        return order[:max_keep].tolist()
    keep: list[int] = []
    suppressed = np.zeros(len(segments), dtype=bool)
    for pos, i in enumerate(order):
        if suppressed[pos]:
            continue
        keep.append(int(i))
        if len(keep) >= max_keep:
            break
        rest = order[pos + 1 :]
        suppressed[pos + 1 :] |= temporal_iou(segments[i], segments[rest]) > threshold
    return keep


@torch.no_grad()
def decode_segments(
    output: FlatOutput, durations: Sequence[float] | np.ndarray, num_segments: int, config: DecodeConfig
) -> list[np.ndarray]:
    """Ranked segments ``[n, 5]`` in seconds for each row of ``output`` (``durations`` in seconds per row)."""
    score, match, quality = location_scores(output)
    boxes = output.boxes(num_segments) / num_segments
    levels = output.levels
    picks = []
    for level in torch.unique(levels).tolist():
        idx = torch.nonzero(levels == level).squeeze(1)
        k = min(config.top_per_level, idx.numel())
        top = score[:, idx].topk(k, dim=1).indices
        picks.append(idx[top])
    chosen = torch.cat(picks, dim=1)  # [B, K]
    rows = torch.arange(score.shape[0], device=score.device).unsqueeze(1)
    cand = torch.cat(
        [boxes[rows, chosen], score[rows, chosen, None], match[rows, chosen, None], quality[rows, chosen, None]],
        dim=-1,
    ).float().cpu().numpy().astype(np.float64)  # .float(): outputs computed under bf16 autocast
    durations = np.asarray(durations, dtype=np.float64)
    results = []
    for b in range(cand.shape[0]):
        segs = cand[b].copy()
        segs[:, :2] *= durations[b]
        results.append(segs[nms_order(segs, config.nms_threshold, config.top_n)])
    return results
