"""Grounding many queries against many videos with a trained checkpoint.

>>> grounder = Grounder.from_checkpoint("runs/charades/best.pt")
>>> queries = grounder.encode_queries(["person opens the fridge", "someone sits down"])
>>> results = grounder.ground([store.load("3MSZA"), store.load("AO8RW")], queries)

The video side (the Linear(D->D) projection of each grid) and the query side (BiLSTM + attention) are each
computed once; only the fusion, pyramid and heads run per (query, video) pair, ``pair_batch_size`` pairs at a time.

``predict_pairs`` runs a checkpoint on the pairs of a split, each pair in its own video, exactly as training
validates (``drn.training.predict``): the predictions that ``jobs.evaluate --checkpoint`` and the demo score.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from drn.checkpoint import check_feature_dim, load_checkpoint
from drn.config import DRNConfig
from drn.data import GroundingDataset, collate, load_grids, usable_pairs
from drn.decoding import decode_segments
from drn.durations import timeline_duration
from drn.errors import InputError
from drn.grid import pool_to_grid
from drn.model import DRN
from drn.pairs import GroundingPair
from drn.predictions import Prediction
from drn.store.features import FeatureStore
from drn.text.vocabulary import OpenVocabulary, Vocabulary, is_unknown, pad_word_ids
from drn.training import predict

MISSING_VIDEOS = ("error", "skip", "miss")


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


def _on_device(model: torch.nn.Module, device: torch.device) -> bool:
    """Every parameter and buffer of ``model`` is on ``device`` (any index when ``device`` names none)."""
    return all(t.device.type == device.type and (device.index is None or t.device.index == device.index)
               for t in (*model.parameters(), *model.buffers()))


class Grounder:
    """A model in eval mode with its vocabulary: encode queries once, score them against video grids in batches."""

    def __init__(self, model: DRN, config: DRNConfig, vocab: Vocabulary | OpenVocabulary,
                 device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        # Grounders may share one model (LibraryScorer makes one per search) while other threads run it: move and
        # switch it only where needed. ``Module.to`` rebuilds an LSTM's weight list even on the same device, and
        # a forward pass in another thread meanwhile fails (torch's RNN modules are not thread-safe there).
        if not _on_device(model, self.device):
            model = model.to(self.device)
        self.model = model.eval() if model.training else model
        self.config = config
        self.vocab = vocab

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
        pairs: Sequence[tuple[int, int]] | np.ndarray | None = None,
    ) -> list[GroundingResult]:
        """Every query against every video (``len(queries) * V`` results, query-major), or only ``pairs``.

        ``videos`` is a list of ``VideoFeatures`` or grids ``[V, T, D]``; with grids give ``video_ids`` and
        ``durations`` (seconds; without durations the segments are fractions of the video). ``pairs`` lists
        ``(query_index, video_index)``: only those are decoded, ``pair_batch_size`` at a time, and the results
        follow their order (each video is still projected once).
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
        if pairs is None:
            q_index = torch.arange(num_q).repeat_interleave(num_v)
            v_index = torch.arange(num_v).repeat(num_q)
        else:
            q_index, v_index = _pair_indices(pairs, num_q, num_v)
        results: list[GroundingResult] = []
        for first in range(0, len(q_index), pair_batch_size):
            qi, vi = q_index[first : first + pair_batch_size], v_index[first : first + pair_batch_size]
            output = self.model.decode_pairs(encoded[vi], queries.features[qi]).flat()
            segments = decode_segments(output, durations[vi.numpy()], self.num_segments, self.config.decode)
            for q, v, segs in zip(qi.tolist(), vi.tolist(), segments, strict=True):
                results.append(GroundingResult(q, video_ids[v], segs))
        return results


def _pair_indices(pairs: Sequence[tuple[int, int]] | np.ndarray, num_q: int, num_v: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(query_index, video_index)`` pairs as two index tensors; InputError for a pair out of range."""
    array = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    bad = (array[:, 0] < 0) | (array[:, 0] >= num_q) | (array[:, 1] < 0) | (array[:, 1] >= num_v)
    if bad.any():
        q, v = array[np.argmax(bad)].tolist()
        raise InputError(f"pair ({q}, {v}) is out of range: {num_q} queries, {num_v} videos")
    return torch.from_numpy(array[:, 0].copy()), torch.from_numpy(array[:, 1].copy())


@dataclass
class CheckpointRun:
    """A checkpoint's predictions on a split: the pairs it could score and those whose video lacks features."""

    predictions: list[Prediction]
    scored: list[GroundingPair]
    without_features: list[GroundingPair] = field(default_factory=list)


def predict_pairs(
    checkpoint: str | os.PathLike,
    features: str | os.PathLike,
    pairs: Sequence[GroundingPair],
    *,
    top_n: int | None = None,
    missing_videos: str = "error",
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = False,
) -> CheckpointRun:
    """Run ``checkpoint`` on ``pairs``, each pair grounded in its own video of the feature store ``features``.

    Args:
        top_n: segments kept per pair (default: the checkpoint's ``decode.top_n``).
        missing_videos: a pair whose video has no features (or that starts after its decoded end) is an
            InputError (``"error"``), or is listed in ``without_features`` and not predicted (``"skip"``,
            ``"miss"``: the caller scores those as left out or as misses).
        batch_size: pairs per forward pass.

    A store whose feature dimension differs from the model's is an InputError.
    """
    if missing_videos not in MISSING_VIDEOS:
        raise InputError(f"missing_videos must be one of {', '.join(MISSING_VIDEOS)}, got {missing_videos!r}")
    if top_n is not None and top_n < 1:
        raise InputError(f"top_n must be at least 1, got {top_n}")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    model, config, vocab = load_checkpoint(checkpoint)
    store = FeatureStore(features)
    check_feature_dim(config, store.metadata.feature_dim, os.fspath(features))
    if top_n is not None:
        config = dataclasses.replace(config, decode=dataclasses.replace(config.decode, top_n=top_n))
    selection = usable_pairs(pairs, store)
    if selection.dropped and missing_videos == "error":
        qid, reason = selection.dropped[0]
        raise InputError(
            f"{len(selection.dropped)} of {len(pairs)} pairs have no features in the store (first: qid {qid!r}: "
            f"{reason}); use missing_videos skip or miss to score the rest", path=os.fspath(features))
    kept = selection.kept
    predictions: list[Prediction] = []
    if kept:
        grids = load_grids(store, [p.video_id for p in kept], config.model.num_segments, progress)
        dataset = GroundingDataset(kept, grids, vocab, config)
        batches = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
        model.to(device)
        predictions = predict(model, tqdm(batches, desc="predict", disable=not progress), config)
    dropped = {qid for qid, _ in selection.dropped}
    return CheckpointRun(predictions, list(kept), [p for p in pairs if p.qid in dropped])
