"""Which locations are positive for a ground truth, and what they regress to (DESIGN.md section 5).

A location at position t (grid units) of level l is a candidate when gs < t < ge strictly and
max(t - gs, ge - t) lies in the level's range (both bounds inclusive). The ``positives`` switch (paper Table 4)
keeps all candidates, one nearest the centre, one at random, or those in the central half of the ground truth.
Every ground truth gets at least one positive: when none qualifies, the location nearest the ground truth's
centre at the level whose range holds its half-length (the last level for longer, the first for shorter ones).
A negative row (a query with a video that does not hold it, ``drn.negatives``) has no positive at all, and no
fallback.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Targets:
    positive: Tensor  # [B, P] bool
    regression: Tensor  # [B, P, 2]: (t - gs, ge - t) in grid units
    gt: Tensor  # [B, 2]: (gs, ge) in grid units
    negative: Tensor | None = None  # [B] bool: rows whose video does not hold the query (None: no such row)
    negatives_guarded: int = 0  # negative rows the score guard left out of the loss (drn.training.guarded_negatives)
    negative_rows: int = 0  # negative rows of the batch before the guard (0 when the guard is off)

    @property
    def num_positive_rows(self) -> int:
        return self.gt.shape[0] - (0 if self.negative is None else int(self.negative.sum()))

    @property
    def num_positive(self) -> int:
        return int(self.positive.sum())


def assign_targets(
    gt: Tensor,
    points: Tensor,
    levels: Tensor,
    level_ranges: list[tuple[float, float]],
    positives: str = "all",
    generator: torch.Generator | None = None,
    negative: Tensor | None = None,
) -> Targets:
    """Targets for ``gt [B, 2]`` (grid units) at locations ``points [P]`` of ``levels [P]``; rows where
    ``negative [B]`` is True get no positive location (their ``gt`` is ignored)."""
    gt = gt.to(points.dtype)
    gs, ge = gt[:, :1], gt[:, 1:]
    t = points.unsqueeze(0)
    ranges = torch.tensor(level_ranges, dtype=points.dtype, device=points.device)
    lo, hi = ranges[levels, 0].unsqueeze(0), ranges[levels, 1].unsqueeze(0)
    reach = torch.maximum(t - gs, ge - t)
    candidate = (t > gs) & (t < ge) & (reach >= lo) & (reach <= hi)
    centre = (gs + ge) / 2
    off_centre = (t - centre).abs()

    if positives == "all":
        positive = candidate
    elif positives == "half":
        positive = candidate & (off_centre <= (ge - gs) / 4)
    elif positives == "center":
        positive = _one_per_row(candidate, off_centre)
    elif positives == "random":
        noise = torch.rand(candidate.shape, generator=generator, device=points.device)
        positive = _one_per_row(candidate, noise)
    else:
        raise ValueError(f"unknown positives mode {positives!r}")

    if negative is not None and bool(negative.any()):
        positive = positive & ~negative.unsqueeze(1)
        empty = ~positive.any(dim=1) & ~negative
    else:
        negative = None
        empty = ~positive.any(dim=1)
    if bool(empty.any()):
        positive = positive | (_fallback(gt, off_centre, levels, ranges) & empty.unsqueeze(1))
    regression = torch.stack([t - gs, ge - t], dim=-1).expand(gt.shape[0], -1, -1)
    return Targets(positive=positive, regression=regression, gt=gt, negative=negative)


def _one_per_row(candidate: Tensor, key: Tensor) -> Tensor:
    """For each row, the one candidate with the smallest key (no positive when a row has no candidate)."""
    masked = key.masked_fill(~candidate, float("inf"))
    best = masked.argmin(dim=1, keepdim=True)
    one = torch.zeros_like(candidate).scatter_(1, best, True)
    return one & candidate.any(dim=1, keepdim=True)


def _fallback(gt: Tensor, off_centre: Tensor, levels: Tensor, ranges: Tensor) -> Tensor:
    """The location nearest the centre at the level whose range holds the ground truth's half-length."""
    half = (gt[:, 1] - gt[:, 0]) / 2
    fits = (half.unsqueeze(1) >= ranges[:, 0]) & (half.unsqueeze(1) <= ranges[:, 1])  # [B, levels]
    above = half.unsqueeze(1) > ranges[:, 1]
    level = torch.where(fits.any(dim=1), fits.float().argmax(dim=1),
                        torch.where(above.all(dim=1), len(ranges) - 1, 0))
    at_level = levels.unsqueeze(0) == level.unsqueeze(1)
    return _one_per_row(at_level, off_centre)
