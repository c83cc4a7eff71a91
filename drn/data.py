"""Pairs to training batches: pooled grid features, word ids and the ground truth in grid units.

``GroundingDataset`` pools each video of the pairs once (``pool_to_grid``) and keeps the grids in memory in the
store's dtype; ``collate`` pads word ids and stacks the rest. Pairs whose video is missing from the store (or
failed extraction) are left out and listed by ``usable_pairs``, so a training run over many pairs finishes.
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
from drn.pairs import GroundingPair
from drn.text import PAD_ID, Vocabulary


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
        self, pairs: Sequence[GroundingPair], grids: dict[str, np.ndarray], vocab: Vocabulary, config: DRNConfig
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
            "words": torch.tensor(self.words[index], dtype=torch.long),
            "gt": torch.tensor(gt, dtype=torch.float32),
            "duration": pair.duration_s,
            "qid": pair.qid,
            "video_id": pair.video_id,
        }


def collate(items: list[dict]) -> dict:
    """Stack videos and ground truths, pad word ids with PAD, and build the word mask."""
    lengths = [len(item["words"]) for item in items]
    words = torch.full((len(items), max(lengths)), PAD_ID, dtype=torch.long)
    for i, item in enumerate(items):
        words[i, : lengths[i]] = item["words"]
    return {
        "video": torch.stack([item["video"] for item in items]),
        "words": words,
        "word_mask": words != PAD_ID,
        "gt": torch.stack([item["gt"] for item in items]),
        "duration": torch.tensor([item["duration"] for item in items], dtype=torch.float64),
        "qid": [item["qid"] for item in items],
        "video_id": [item["video_id"] for item in items],
    }
