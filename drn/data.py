"""Pairs to training batches: pooled grid features, word ids and the ground truth in grid units.

``GroundingDataset`` pools each video of the pairs once (``pool_to_grid``) and keeps the grids in memory in the
store's dtype; ``collate`` pads word ids and stacks the rest. ``PairCollator`` adds negative rows (a query with
another video of the batch that does not hold it, ``drn.negatives``). Pairs whose video is missing from the store
(or failed extraction) are left out and listed by ``usable_pairs``, so a training run over many pairs finishes.

A batch of B pairs holds ``video [B, T, D]``, ``words [B, L, S]``, ``word_mask [B, L]``, ``gt [B, 2]`` (grid
units) and bookkeeping lists. With negatives it also holds the R >= B rows the model scores: ``video_index [R]``
and ``query_index [R]`` (row r pairs video ``video_index[r]`` with query ``query_index[r]``; the first B rows are
the positives in order), ``negative [R]`` (True for negative rows) and ``blocked [B, B]`` (True where video j
holds row i's text or a near paraphrase). ``video`` then holds the batch's videos followed by the hard negative
videos drawn from the split, so it may have more than B rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from drn.config import DRNConfig
from drn.durations import on_timeline
from drn.grid import pool_to_grid
from drn.negatives import NegativeFilter, NegativeSampler
from drn.pairs import GroundingPair
from drn.text.vocabulary import OpenVocabulary, Vocabulary, pad_word_ids


@dataclass
class PairSelection:
    kept: list[GroundingPair]
    dropped: list[tuple[object, str]] = field(default_factory=list)  # (qid, reason)


def usable_pairs(pairs: Sequence[GroundingPair], store) -> PairSelection:
    """The pairs whose video is an ``ok`` video of ``store``, put on the store's timeline (``drn.durations``: the
    duration the grid is laid over); the others with the reason."""
    ok = set(store.ok_video_ids())
    selection = PairSelection(kept=[])
    for pair in pairs:
        if pair.video_id in ok:
            selection.kept.append(pair)
        else:
            selection.dropped.append((pair.qid, f"video {pair.video_id!r} has no features in the store"))
    placed = on_timeline(selection.kept, store.durations())
    selection.kept = placed.pairs
    selection.dropped += placed.dropped
    return selection


def load_grids(store, video_ids: Sequence[str], num_segments: int, progress: bool = False) -> dict[str, np.ndarray]:
    """``video_id -> [T, D]`` grids of the given videos, read shard by shard."""
    grids: dict[str, np.ndarray] = {}
    wanted = sorted(set(video_ids))
    for video in tqdm(store.iter_videos(wanted), total=len(wanted), desc="pool videos", disable=not progress):
        grids[video.video_id] = pool_to_grid(video, num_segments).astype(video.features.dtype, copy=False)
    return grids


class GroundingDataset(Dataset):
    """One item per pair: ``video [T, D]``, ``words [L]``, ``gt [2]`` (grid units) and bookkeeping fields."""

    def __init__(
        self, pairs: Sequence[GroundingPair], grids: dict[str, np.ndarray], vocab: Vocabulary | OpenVocabulary,
        config: DRNConfig,
    ) -> None:
        self.pairs = list(pairs)
        self.grids = grids
        self.num_segments = config.model.num_segments
        text = config.text
        self.words = [
            vocab.encode(p.query, text.max_words, text.truncate_long_queries, text.lowercase, where=f"qid {p.qid}")
            for p in self.pairs
        ]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        pair = self.pairs[index]
        scale = self.num_segments / pair.duration_s
        gt = np.clip([pair.start_s * scale, pair.end_s * scale], 0.0, self.num_segments)
        return {
            "video": torch.from_numpy(np.asarray(self.grids[pair.video_id], dtype=np.float32)),
            "words": self.words[index],
            "gt": torch.tensor(gt, dtype=torch.float32),
            "duration": pair.duration_s,
            "qid": pair.qid,
            "video_id": pair.video_id,
            "query": pair.query,
        }


def collate(items: list[dict]) -> dict:
    """Stack videos and ground truths, pad word ids (``[B, L, S]``, 0 = padding) and build the word mask."""
    words, mask = pad_word_ids([item["words"] for item in items])
    return {
        "video": torch.stack([item["video"] for item in items]),
        "words": torch.from_numpy(words),
        "word_mask": torch.from_numpy(mask),
        "gt": torch.stack([item["gt"] for item in items]),
        "duration": torch.tensor([item["duration"] for item in items], dtype=torch.float64),
        "qid": [item["qid"] for item in items],
        "video_id": [item["video_id"] for item in items],
        "query": [item["query"] for item in items],
    }


class PairCollator:
    """``collate`` plus up to ``per_positive`` negative rows per positive row (``drn.negatives``): the row's
    query with another video of the batch, or with a hard negative video of the split (its grid from ``grids``,
    appended to the batch's videos).

    With ``per_positive == 0`` (or no filter) the batch is exactly ``collate``'s.
    """

    def __init__(self, negative_filter: NegativeFilter | None, per_positive: int, seed: int = 0,
                 hard_fraction: float = 0.0, grids: dict[str, np.ndarray] | None = None) -> None:
        self.filter = negative_filter
        self.grids = grids or {}
        self.sampler = None
        if negative_filter is not None and per_positive > 0:
            self.sampler = NegativeSampler(negative_filter, per_positive, hard_fraction if grids else 0.0, seed)

    def __call__(self, items: list[dict]) -> dict:
        batch = collate(items)
        if self.sampler is None:
            return batch
        blocked = self.filter.blocked_matrix(batch["query"], batch["video_id"])
        pairs = self.sampler.sample(batch["query"], batch["video_id"], batch["qid"], blocked)
        count = len(items)
        column = {video: j for j, video in reversed(list(enumerate(batch["video_id"])))}
        extra: list[np.ndarray] = []
        rows, columns = [], []
        for row, video in pairs:
            if video not in column:
                column[video] = count + len(extra)
                extra.append(np.asarray(self.grids[video], dtype=np.float32))
            rows.append(row)
            columns.append(column[video])
        if extra:
            batch["video"] = torch.cat([batch["video"], torch.from_numpy(np.stack(extra))])
        batch["blocked"] = blocked
        batch["video_index"] = torch.tensor(list(range(count)) + columns, dtype=torch.long)
        batch["query_index"] = torch.tensor(list(range(count)) + rows, dtype=torch.long)
        batch["negative"] = torch.cat([torch.zeros(count, dtype=torch.bool), torch.ones(len(rows), dtype=torch.bool)])
        return batch
