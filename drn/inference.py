"""Grounding many queries against many videos with a trained checkpoint.

>>> grounder = Grounder.from_checkpoint("runs/charades/best.pt")
>>> queries = grounder.encode_queries(["person opens the fridge", "someone sits down"])
>>> results = grounder.ground([store.load("3MSZA"), store.load("AO8RW")], queries)

The video side (the Linear(D->D) projection of each grid) and the query side (BiLSTM + attention) are each
computed once; only the fusion, pyramid and heads run per (query, video) pair, ``pair_batch_size`` pairs at a time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from drn.checkpoint import check_feature_dim, load_checkpoint
from drn.config import DRNConfig
from drn.decoding import decode_segments
from drn.durations import timeline_duration
from drn.errors import InputError
from drn.grid import pool_to_grid
from drn.model import DRN
from drn.text.vocabulary import OpenVocabulary, Vocabulary, is_unknown, pad_word_ids


@dataclass
class EncodedQueries:
    """The query side of the model for a list of texts: ``features [Q, 3, H]``."""

    texts: list[str]
    features: torch.Tensor

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class GroundingResult:
    """Ranked segments for one (query, video): ``segments [n, 5]`` = start_s, end_s, score, match, quality."""

    query_index: int
    video_id: str
    segments: np.ndarray


class Grounder:
    """A model in eval mode with its vocabulary: encode queries once, score them against video grids in batches."""

    def __init__(self, model: DRN, config: DRNConfig, vocab: Vocabulary | OpenVocabulary,
                 device: str | torch.device = "cpu") -> None:
        self.model = model.to(device).eval()
        self.config = config
        self.vocab = vocab
        self.device = torch.device(device)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Grounder:
        model, config, vocab = load_checkpoint(path)
        return cls(model, config, vocab, device)

    @property
    def num_segments(self) -> int:
        return self.config.model.num_segments

    def check_features(self, feature_dim: int, source: object = None) -> None:
        """InputError when a feature store's dimension differs from the model's."""
        check_feature_dim(self.config, feature_dim, source)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded word ids ``[Q, L, S]`` and mask ``[Q, L]``. An empty or too-long query, or one of which the
        vocabulary knows no word at all, is an InputError naming its index."""
        text = self.config.text
        rows = []
        for i, t in enumerate(texts):
            ids = self.vocab.encode(t, text.max_words, text.truncate_long_queries, text.lowercase, where=f"query {i}")
            if all(is_unknown(self.vocab, word) for word in ids):
                what = "MiniLM's WordPiece table cannot spell" if self.vocab.open else "the vocabulary knows"
                raise InputError(f"query {i}: {what} none of the words of {t!r}")
            rows.append(ids)
        words, mask = pad_word_ids(rows)
        return torch.from_numpy(words), torch.from_numpy(mask)

    @torch.no_grad()
    def encode_queries(self, texts: Sequence[str]) -> EncodedQueries:
        """The query side, computed once per text."""
        texts = list(texts)
        if not texts:
            raise InputError("no queries to encode")
        words, mask = self.tokenize(texts)
        features = self.model.encode_query(words.to(self.device), mask.to(self.device))
        return EncodedQueries(texts, features)

    def grids(self, videos: Sequence) -> tuple[np.ndarray, list[str], np.ndarray]:
        """``[V, T, D]`` grids, video ids and durations of ``VideoFeatures`` (NaN/inf features: InputError)."""
        if not videos:
            raise InputError("no videos to ground against")
        for video in videos:
            self.check_features(np.asarray(video.features).shape[-1], f"video {video.video_id!r}")
        grids = np.stack([pool_to_grid(v, self.num_segments) for v in videos])
        durations = [timeline_duration(v.duration_s, v.clip_end_s) for v in videos]  # None: the last clip's end
        return grids, [v.video_id for v in videos], np.array(durations)

    @torch.no_grad()
    def encode_videos(self, grids: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The video side, computed once per video: ``[V, T, D]`` -> ``[V, D, T]``."""
        grids = torch.as_tensor(np.asarray(grids, dtype=np.float32)).to(self.device)
        if grids.dim() == 3:
            self.check_features(grids.shape[-1], "video grids")
        return self.model.encode_video(grids)

    @torch.no_grad()
    def ground(
        self,
        videos: Sequence | np.ndarray | torch.Tensor,
        queries: EncodedQueries,
        video_ids: Sequence[str] | None = None,
        durations: Sequence[float] | np.ndarray | None = None,
        pair_batch_size: int = 256,
    ) -> list[GroundingResult]:
        """Every query against every video: ``len(queries) * V`` results, query-major.

        ``videos`` is a list of ``VideoFeatures`` or grids ``[V, T, D]``; with grids give ``video_ids`` and
        ``durations`` (seconds; without durations the segments are fractions of the video).
        """
        if isinstance(videos, (np.ndarray, torch.Tensor)):
            grids = videos
            count = grids.shape[0]
            video_ids = list(video_ids) if video_ids is not None else [str(i) for i in range(count)]
            durations = np.ones(count) if durations is None else np.asarray(durations, dtype=np.float64)
        else:
            grids, video_ids, durations = self.grids(list(videos))
        encoded = self.encode_videos(grids)
        num_q, num_v = len(queries), encoded.shape[0]
        q_index = torch.arange(num_q).repeat_interleave(num_v)
        v_index = torch.arange(num_v).repeat(num_q)
        results: list[GroundingResult] = []
        for first in range(0, num_q * num_v, pair_batch_size):
            qi, vi = q_index[first : first + pair_batch_size], v_index[first : first + pair_batch_size]
            output = self.model.decode_pairs(encoded[vi], queries.features[qi]).flat()
            segments = decode_segments(output, durations[vi.numpy()], self.num_segments, self.config.decode)
            for q, v, segs in zip(qi.tolist(), vi.tolist(), segments, strict=True):
                results.append(GroundingResult(q, video_ids[v], segs))
        return results
