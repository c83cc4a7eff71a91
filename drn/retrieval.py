"""The retrieval stage: a sentence and the cells of every video in one R-dimensional space, for ANN search.

A *cell* is a span of the model's T-segment grid: for each width w of ``retrieval.cell_widths`` (in grid segments)
one cell starts every max(1, w // 2) segments, and the last one of each width ends at T. In seconds a cell of a
video of duration d covers [start / T * d, end / T * d].

    query   DRN's query side [Q, 3, H] (``DRN.encode_query``) -> Linear, ReLU, Linear -> unit vectors [Q, R]
    cells   pooled grid [V, T, D] -> LayerNorm, Linear(D -> R), ReLU, Conv1d(k3), ReLU, max over each cell's
            segments, Linear -> unit vectors [V, C, R]

The score of a (sentence, cell) is their cosine. Training is contrastive (``RetrievalObjective``, InfoNCE): for a
(query, video, moment) row, the cells of its video that overlap the moment (IoU >= ``retrieval.positive_iou``, and
always the best one) are positives; every cell of every other video of the step (the batch's videos and
``retrieval.sampled_negatives`` videos drawn from the training set) is a negative, unless that video holds the
query's text or a near paraphrase (``drn.negatives.NegativeFilter``); the other cells of the query's own video
are left out (its annotations may be incomplete). Only the head trains; DRN is frozen (stage 4, see
``drn.retrieval_training``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drn.config import DRNConfig
from drn.errors import InputError

NUM_LEVELS = 3
RETRIEVAL_STAGE = 4


def cell_spans(num_segments: int, widths: Sequence[int]) -> np.ndarray:
    """``[C, 2]`` (start, end) of the cells in grid segments, width by width, in time order within a width."""
    spans: list[tuple[int, int]] = []
    for width in widths:
        stride = max(1, width // 2)
        starts = list(range(0, num_segments - width + 1, stride))
        if starts[-1] != num_segments - width:
            starts.append(num_segments - width)
        spans += [(s, s + width) for s in starts]
    return np.array(spans, dtype=np.int64)


def cells_in_seconds(spans: np.ndarray, num_segments: int, duration_s: float, offset_s: float = 0.0) -> np.ndarray:
    """``[C, 2]`` start and end in seconds of the cells of a video (or window at ``offset_s``) of ``duration_s``."""
    return offset_s + spans.astype(np.float64) / num_segments * float(duration_s)


class RetrievalHead(nn.Module):
    """Query projection and video-cell encoder; ``trained_epochs`` (a buffer) records the stage's training."""

    def __init__(self, config: DRNConfig, query_dim: int) -> None:
        super().__init__()
        m, r = config.model, config.model.retrieval_dim
        self.num_segments = m.num_segments
        self.feature_dim = m.feature_dim
        self.spans = cell_spans(m.num_segments, config.retrieval.cell_widths)
        self.widths = [int(w) for w in config.retrieval.cell_widths]
        self.query_proj = nn.Sequential(nn.Linear(NUM_LEVELS * query_dim, r), nn.ReLU(), nn.Linear(r, r))
        self.video_norm = nn.LayerNorm(m.feature_dim)
        self.video_proj = nn.Linear(m.feature_dim, r)
        self.context = nn.Conv1d(r, r, 3, padding=1)
        self.cell_proj = nn.Linear(r, r)
        self.register_buffer("trained_epochs", torch.zeros((), dtype=torch.long))

    @property
    def num_cells(self) -> int:
        return len(self.spans)

    @property
    def dim(self) -> int:
        return self.cell_proj.out_features

    @property
    def trained(self) -> bool:
        return int(self.trained_epochs) > 0

    def encode_query(self, query_features: Tensor) -> Tensor:
        """DRN's query side ``[Q, 3, H]`` -> unit vectors ``[Q, R]``."""
        return F.normalize(self.query_proj(query_features.flatten(1)), dim=-1)

    def encode_cells(self, grid: Tensor) -> Tensor:
        """Pooled grids ``[V, T, D]`` -> unit cell vectors ``[V, C, R]`` (cells in the order of ``spans``)."""
        if grid.dim() != 3 or grid.shape[1] != self.num_segments or grid.shape[2] != self.feature_dim:
            raise InputError(f"video grid has shape {tuple(grid.shape)}, the retrieval stage expects "
                             f"(V, {self.num_segments}, {self.feature_dim})")
        x = F.relu(self.video_proj(self.video_norm(grid)))
        x = F.relu(self.context(x.transpose(1, 2)))  # [V, R, T]
        pooled = []
        for width in self.widths:
            stride = max(1, width // 2)
            pooled.append(F.max_pool1d(x, width, stride))
            if (self.num_segments - width) % stride:  # the last cell of this width ends at T
                pooled.append(x[:, :, self.num_segments - width:].amax(dim=-1, keepdim=True))
        cells = torch.cat(pooled, dim=-1).transpose(1, 2)  # [V, C, R]
        return F.normalize(self.cell_proj(cells), dim=-1)


def attach_retrieval_head(model: nn.Module, config: DRNConfig) -> nn.Module:
    """Give a DRN model (e.g. one trained without it) a fresh retrieval head of ``config``; returns the model."""
    if config.model.retrieval_dim <= 0:
        raise InputError("model.retrieval_dim must be positive to add a retrieval stage")
    model.config.model.retrieval_dim = config.model.retrieval_dim
    model.config.retrieval = config.retrieval
    model.retrieval = RetrievalHead(model.config, model.query_encoder.out_dim)
    return model


def require_trained_retrieval(model: nn.Module, source: object = None) -> RetrievalHead:
    """The model's retrieval head; InputError when it has none or when the stage never trained."""
    head = getattr(model, "retrieval", None)
    if head is None:
        raise InputError("this checkpoint has no retrieval stage (model.retrieval_dim is 0): train one with "
                         "python -m jobs.train ... --set model.retrieval_dim=128 (or add it to a trained checkpoint "
                         "with --resume-from CHECKPOINT --stages 4 --set model.retrieval_dim=128)", path=source)
    if not head.trained:
        raise InputError("this checkpoint's retrieval stage was never trained (stage 4 did not run): train it with "
                         "python -m jobs.train ... --resume-from CHECKPOINT --stages 4", path=source)
    return head


# --------------------------------------------------------------------------------------------------- training
def positive_cells(gt: Tensor, spans: Tensor, positive_iou: float) -> Tensor:
    """``[B, C]`` bool: the cells whose IoU with each row's moment ``gt [B, 2]`` (grid units) reaches
    ``positive_iou``, and always the best cell."""
    start = torch.maximum(gt[:, None, 0], spans[None, :, 0])
    end = torch.minimum(gt[:, None, 1], spans[None, :, 1])
    inter = (end - start).clamp(min=0)
    union = (gt[:, None, 1] - gt[:, None, 0]) + (spans[None, :, 1] - spans[None, :, 0]) - inter
    iou = inter / union.clamp(min=1e-6)
    return (iou >= positive_iou) | (iou >= iou.max(dim=1, keepdim=True).values)


def contrastive_loss(queries: Tensor, cells: Tensor, positives: Tensor, negatives: Tensor,
                     temperature: float) -> Tensor:
    """InfoNCE over cells. ``queries [B, R]``, ``cells [N, C, R]`` (video i is row i's own video for i < B),
    ``positives [B, C]`` (cells of row i's video), ``negatives [B, N]`` (videos usable as negatives for row i)."""
    batch = queries.shape[0]
    logits = torch.einsum("br,ncr->bnc", queries, cells) / temperature
    rows = torch.arange(batch, device=queries.device)
    allowed = negatives[:, :, None].expand_as(logits).clone()
    allowed[rows, rows] = positives
    wanted = torch.zeros_like(allowed)
    wanted[rows, rows] = positives
    very_low = torch.finfo(logits.dtype).min
    positive = torch.logsumexp(logits.masked_fill(~wanted, very_low), dim=(1, 2))
    everything = torch.logsumexp(logits.masked_fill(~allowed, very_low), dim=(1, 2))
    return (everything - positive).mean()


class RetrievalObjective(nn.Module):
    """The stage's loss as a module (so that DDP can wrap it): DRN's query side frozen, the head trained.

    DDP synchronises the head's gradients only; DRN's buffers (the word table, fixed batch-norm statistics) are
    the same on every worker and are not broadcast at each step."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("spans", torch.as_tensor(model.retrieval.spans, dtype=torch.float32), persistent=False)
        self._ddp_params_and_buffers_to_ignore = [f"model.{name}" for name, _ in model.named_buffers()]

    @property
    def head(self) -> RetrievalHead:
        return self.model.retrieval

    def forward(self, video: Tensor, words: Tensor, word_mask: Tensor, gt: Tensor, negatives: Tensor,
                extra_video: Tensor | None = None) -> Tensor:
        """``video [B, T, D]`` of the rows, ``extra_video [K, T, D]`` sampled, ``negatives [B, B + K]`` bool."""
        config = self.model.config.retrieval
        with torch.no_grad():
            features = self.model.encode_query(words, word_mask)
        queries = self.head.encode_query(features)
        grids = video if extra_video is None or extra_video.shape[0] == 0 else torch.cat([video, extra_video])
        cells = self.head.encode_cells(grids)
        positives = positive_cells(gt, self.spans, config.positive_iou)
        return contrastive_loss(queries, cells, positives, negatives, config.temperature)
