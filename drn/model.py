"""The Dense Regression Network (Zeng et al., CVPR 2020), exactly as DESIGN.md section 5 describes it.

Pieces, each a module of its own::

    QueryEncoder      word vectors -> BiLSTM -> per-level attended query vectors q_0, q_1, q_2
    MultiLevelFusion  Linear(D->D) video projection, fused with q_i at three temporal levels (T, T/2, T/4)
    FeaturePyramid    lateral + top-down + output convs -> P0, P1, P2 (512 channels)
    GroundingHead     shared over levels: matching score m, distances (d_s, d_e), IoU score u
    RetrievalHead     optional (model.retrieval_dim > 0): query and video cells in one space (drn.retrieval)

The video side (``encode_video``) and the query side (``encode_query``) are computed separately, once per video
and once per query; ``decode_pairs`` runs the pair-specific rest. ``forward`` chains the three for paired rows.
Everything inside the model is in grid units: segment n of the T-segment grid covers [n, n + 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from drn.config import DRNConfig
from drn.errors import InputError
from drn.retrieval import RetrievalHead

NUM_LEVELS = 3


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2),
        nn.BatchNorm1d(out_ch),
        nn.ReLU(inplace=True),
    )


def level_points(num_segments: int, device: torch.device | None = None) -> list[Tensor]:
    """Positions (grid units) of the locations of each level: t = j * s + s / 2 with stride s = 2^l."""
    out = []
    for level in range(NUM_LEVELS):
        stride = 2**level
        count = math.ceil(num_segments / stride)
        out.append(torch.arange(count, dtype=torch.float32, device=device) * stride + stride / 2)
    return out


@dataclass
class DRNOutput:
    """Per-level raw outputs; ``flat()`` concatenates the levels along the location axis."""

    match_logits: list[Tensor]  # [B, L_l]
    distances: list[Tensor]  # [B, L_l, 2]: (d_s, d_e) in grid units
    iou_logits: list[Tensor] | None  # [B, L_l], None when the model has no quality head
    points: list[Tensor]  # [L_l], grid units

    def flat(self) -> FlatOutput:
        levels = torch.cat([torch.full_like(p, i, dtype=torch.long) for i, p in enumerate(self.points)])
        return FlatOutput(
            match_logits=torch.cat(self.match_logits, dim=1),
            distances=torch.cat(self.distances, dim=1),
            iou_logits=None if self.iou_logits is None else torch.cat(self.iou_logits, dim=1),
            points=torch.cat(self.points),
            levels=levels,
        )


@dataclass
class FlatOutput:
    match_logits: Tensor  # [B, P]
    distances: Tensor  # [B, P, 2]
    iou_logits: Tensor | None  # [B, P]
    points: Tensor  # [P]
    levels: Tensor  # [P]

    def float(self) -> FlatOutput:
        """The outputs in float32 (after a mixed-precision forward; no copy when they already are)."""
        iou = None if self.iou_logits is None else self.iou_logits.float()
        return FlatOutput(self.match_logits.float(), self.distances.float(), iou, self.points, self.levels)

    def rows(self, keep: Tensor) -> FlatOutput:
        """The outputs of the rows where ``keep [B]`` is True (gradients flow through)."""
        iou = None if self.iou_logits is None else self.iou_logits[keep]
        return FlatOutput(self.match_logits[keep], self.distances[keep], iou, self.points, self.levels)

    def boxes(self, num_segments: int) -> Tensor:
        """Predicted (start, end) in grid units, clamped to [0, T]: ``[B, P, 2]``."""
        start = (self.points - self.distances[..., 0]).clamp(0, num_segments)
        end = (self.points + self.distances[..., 1]).clamp(0, num_segments)
        return torch.stack([start, end], dim=-1)


class QueryEncoder(nn.Module):
    """Word vectors -> one-layer BiLSTM -> h_n; g = [h_1; h_N]; per-level textual attention -> q_i.

    ``a_i = softmax_n(W1(h_n * W2_i(ReLU(W3 g))))`` with W3, W1 shared and W2_i per level (one W2 shared by all
    levels when ``same_query_all_levels``); padding positions are masked out.
    """

    def __init__(self, word_vectors: Tensor, hidden: int, attention_dim: int, same_query_all_levels: bool,
                 keep_word_vectors: bool = True) -> None:
        super().__init__()
        # A closed vocabulary's matrix is part of the weights; the open MiniLM table is not (the package ships it).
        self.register_buffer("word_vectors", torch.as_tensor(word_vectors, dtype=torch.float32),
                             persistent=keep_word_vectors)
        word_dim = self.word_vectors.shape[1]
        self.lstm = nn.LSTM(word_dim, hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.out_dim = 2 * hidden
        self.w3 = nn.Linear(2 * self.out_dim, attention_dim)
        self.w1 = nn.Linear(self.out_dim, 1)
        self.w2 = nn.ModuleList(
            nn.Linear(attention_dim, self.out_dim) for _ in range(1 if same_query_all_levels else NUM_LEVELS)
        )

    def embed(self, words: Tensor) -> Tensor:
        """Word vectors ``[B, L, E]`` of ids ``[B, L]`` or ``[B, L, S]`` (a word is the mean of its S ids' rows,
        id 0 being padding)."""
        if words.dim() == 2:
            return F.embedding(words, self.word_vectors)
        present = (words != 0).unsqueeze(-1).to(self.word_vectors.dtype)
        summed = (F.embedding(words, self.word_vectors) * present).sum(dim=2)
        return summed / present.sum(dim=2).clamp(min=1.0)

    def forward(self, words: Tensor, word_mask: Tensor) -> Tensor:
        """``words [B, L]`` or ``[B, L, S]`` ids, ``word_mask [B, L]`` (True for words) -> ``[B, 3, 2 * hidden]``."""
        lengths = word_mask.sum(dim=1)
        if bool((lengths == 0).any()):
            raise InputError("an empty query reached the query encoder")
        embedded = self.embed(words)
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        h, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=words.shape[1])
        last = h[torch.arange(h.shape[0], device=h.device), lengths - 1]
        g = torch.cat([h[:, 0], last], dim=1)
        guide = F.relu(self.w3(g))
        queries = []
        for level in range(NUM_LEVELS):
            w2 = self.w2[min(level, len(self.w2) - 1)]
            scores = self.w1(h * w2(guide).unsqueeze(1)).squeeze(-1)
            scores = scores.masked_fill(~word_mask, float("-inf"))
            attention = torch.softmax(scores, dim=1)
            queries.append(torch.bmm(attention.unsqueeze(1), h).squeeze(1))
        return torch.stack(queries, dim=1)


class MultiLevelFusion(nn.Module):
    """Video projection fused with the query at three levels (T, T/2, T/4), location embedding at level 0."""

    def __init__(self, config: DRNConfig, query_dim: int) -> None:
        super().__init__()
        m = config.model
        c0, c1, c2 = m.level_channels
        self.num_segments = m.num_segments
        self.video_proj = nn.Linear(m.feature_dim, m.feature_dim)
        self.location = nn.Linear(3, m.location_dim) if m.use_location_embedding else None
        fused_levels = NUM_LEVELS if m.multi_level_fusion else 1
        self.query_proj = nn.ModuleList(nn.Linear(query_dim, ch) for ch in [m.feature_dim, c0, c1][:fused_levels])
        self.level0 = conv_bn_relu(m.feature_dim + (m.location_dim if self.location else 0), c0, 3, 1)
        self.level1 = conv_bn_relu(c0, c1, 3, 2)
        self.level2 = conv_bn_relu(c1, c2, 3, 2)

    def location_features(self, device: torch.device) -> Tensor:
        """l_n = [n/T, (n+1)/T, 1/T] for n = 0..T-1: ``[T, 3]``."""
        n = torch.arange(self.num_segments, dtype=torch.float32, device=device)
        t = float(self.num_segments)
        return torch.stack([n / t, (n + 1) / t, torch.full_like(n, 1 / t)], dim=1)

    def encode_video(self, grid: Tensor) -> Tensor:
        """``[V, T, D]`` pooled clip features -> projected ``[V, D, T]`` (once per video)."""
        return self.video_proj(grid).transpose(1, 2)

    def forward(self, video: Tensor, queries: Tensor) -> list[Tensor]:
        """``video [B, D, T]`` (encoded), ``queries [B, 3, Q]`` -> [C0 (T), C1 (T/2), C2 (T/4)]."""
        x = video * self.query_proj[0](queries[:, 0]).unsqueeze(-1)
        if self.location is not None:
            loc = self.location(self.location_features(video.device)).t().unsqueeze(0)
            x = torch.cat([x, loc.expand(x.shape[0], -1, -1)], dim=1)
        c0 = self.level0(x)
        x = c0 * self.query_proj[1](queries[:, 1]).unsqueeze(-1) if len(self.query_proj) > 1 else c0
        c1 = self.level1(x)
        x = c1 * self.query_proj[2](queries[:, 2]).unsqueeze(-1) if len(self.query_proj) > 2 else c1
        c2 = self.level2(x)
        return [c0, c1, c2]


class FeaturePyramid(nn.Module):
    """Lateral Conv1d(k1) and output Conv1d(k3) to ``channels``, each with BN+ReLU; nearest top-down addition."""

    def __init__(self, in_channels: list[int], channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(conv_bn_relu(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in in_channels)

    def forward(self, levels: list[Tensor]) -> list[Tensor]:
        merged = [self.lateral[-1](levels[-1])]
        for i in range(len(levels) - 2, -1, -1):
            lateral = self.lateral[i](levels[i])
            merged.insert(0, lateral + F.interpolate(merged[0], size=lateral.shape[-1], mode="nearest"))
        return [out(x) for out, x in zip(self.output, merged, strict=True)]


class GroundingHead(nn.Module):
    """Matching, location and IoU branches shared by all levels (one learnable distance scale per level)."""

    def __init__(self, channels: int, iou_channels: list[int] | None, init_std: float, prior: float) -> None:
        super().__init__()
        self.match_tower = conv_bn_relu(channels, channels, 3)
        self.box_tower = conv_bn_relu(channels, channels, 3)
        self.match_out = nn.Conv1d(channels, 1, 3, padding=1)
        self.box_out = nn.Conv1d(channels, 2, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(NUM_LEVELS))
        self.iou = None
        if iou_channels is not None:
            h1, h2 = iou_channels
            self.iou = nn.Sequential(conv_bn_relu(2 * channels, h1, 1), conv_bn_relu(h1, h2, 3), nn.Conv1d(h2, 1, 1))
        for module in self.modules():
            if isinstance(module, nn.Conv1d):
                nn.init.normal_(module.weight, std=init_std)
                nn.init.zeros_(module.bias)
        nn.init.constant_(self.match_out.bias, -math.log((1 - prior) / prior))

    def forward(self, x: Tensor, level: int) -> tuple[Tensor, Tensor, Tensor | None]:
        match_feat, box_feat = self.match_tower(x), self.box_tower(x)
        match_logits = self.match_out(match_feat).squeeze(1)
        exponent = (self.scales[level] * self.box_out(box_feat)).clamp(max=20.0)
        distances = torch.exp(exponent).transpose(1, 2)
        iou_logits = None
        if self.iou is not None:
            iou_logits = self.iou(torch.cat([match_feat, box_feat], dim=1)).squeeze(1)
        return match_logits, distances, iou_logits


class DRN(nn.Module):
    """The whole network. ``word_vectors`` is the vocabulary's ``[V, E]`` matrix (a buffer, never trained), saved
    with the weights unless ``keep_word_vectors`` is False (the open MiniLM table, which the package ships)."""

    def __init__(self, config: DRNConfig, word_vectors: Tensor | np.ndarray, keep_word_vectors: bool = True) -> None:
        super().__init__()
        m = config.model
        self.config = config
        word_vectors = torch.as_tensor(np.asarray(word_vectors), dtype=torch.float32)
        m.word_dim = int(word_vectors.shape[1])
        self.query_encoder = QueryEncoder(word_vectors, m.lstm_hidden, m.attention_dim, m.same_query_all_levels,
                                          keep_word_vectors)
        if not keep_word_vectors:  # a constant table: DDP need not broadcast it every step
            self._ddp_params_and_buffers_to_ignore = ["query_encoder.word_vectors"]
        self.fusion = MultiLevelFusion(config, self.query_encoder.out_dim)
        self.pyramid = FeaturePyramid(list(m.level_channels), m.fpn_channels)
        iou_channels = None if m.quality == "none" else list(m.iou_channels)
        self.head = GroundingHead(m.fpn_channels, iou_channels, m.head_init_std, m.match_prior)
        self.retrieval = RetrievalHead(config, self.query_encoder.out_dim) if m.retrieval_dim > 0 else None

    @property
    def num_segments(self) -> int:
        return self.config.model.num_segments

    def encode_video(self, grid: Tensor) -> Tensor:
        """The video side, once per video: ``[V, T, D]`` -> ``[V, D, T]``."""
        m = self.config.model
        if grid.dim() != 3 or grid.shape[1] != m.num_segments or grid.shape[2] != m.feature_dim:
            raise InputError(
                f"video grid has shape {tuple(grid.shape)}, the model expects (V, {m.num_segments}, {m.feature_dim})"
                " (model.num_segments, model.feature_dim)"
            )
        return self.fusion.encode_video(grid)

    def encode_query(self, words: Tensor, word_mask: Tensor) -> Tensor:
        """The query side, once per query: ``[Q, L]`` ids -> ``[Q, 3, 2 * lstm_hidden]``."""
        return self.query_encoder(words, word_mask)

    def decode_pairs(self, video: Tensor, queries: Tensor) -> DRNOutput:
        """The pair side: row b of the encoded ``video`` with row b of the encoded ``queries``."""
        pyramid = self.pyramid(self.fusion(video, queries))
        match_logits, distances, iou_logits = [], [], []
        for level, x in enumerate(pyramid):
            m, d, u = self.head(x, level)
            match_logits.append(m)
            distances.append(d)
            iou_logits.append(u)
        points = level_points(self.num_segments, video.device)
        return DRNOutput(match_logits, distances, None if self.head.iou is None else iou_logits, points)

    def forward(self, video: Tensor, words: Tensor, word_mask: Tensor, video_index: Tensor | None = None,
                query_index: Tensor | None = None) -> DRNOutput:
        """Row b of ``video`` with row b of the queries; with ``video_index``/``query_index`` ``[R]``, row r pairs
        video ``video_index[r]`` with query ``query_index[r]`` (each video and query encoded once)."""
        videos, queries = self.encode_video(video), self.encode_query(words, word_mask)
        if video_index is not None:
            videos, queries = videos[video_index], queries[query_index]
        return self.decode_pairs(videos, queries)

    def quality_head(self) -> nn.Module | None:
        """The IoU (or centerness) branch: the only part that stage 2 trains."""
        return self.head.iou


def new_model(config: DRNConfig, vocab) -> DRN:
    """A fresh DRN for a vocabulary of ``drn.text`` (its matrix kept in the weights only when it is closed)."""
    return DRN(config, vocab.matrix, keep_word_vectors=not vocab.open)


def count_parameters(model: nn.Module) -> int:
    """Parameters (the word vectors are a buffer and do not count)."""
    return sum(p.numel() for p in model.parameters())
