"""Negative pairs: a query with a video that does not hold it, so that matching scores compare across videos.

DRN's matching head learns *where* in a video a query happens from positive pairs alone; it is never told that a
video lacks the moment, so its scores rank segments within a video but not videos across a library. Training with
negative rows fixes that (``train.negatives``): every positive row of a batch gets up to K rows pairing its query
with other videos of the same batch (in-batch negatives: their video side is already computed), and on those
rows every matching label and every IoU-head target is 0, with no location loss (``drn.targets``,
``drn.losses``).

Half of the K rows (``train.negatives.hard_fraction``) are *hard* negatives drawn from the whole training split:
videos annotated with the texts nearest to the query that are still not paraphrases of it ("the red square moves
right" for "the red square moves left"). Random in-batch videos mostly differ from the query in obvious ways; the
hard ones teach the detail that tells two moments apart, which within a single video is seldom needed.

A video must never serve as a negative for a query it holds. Query texts recur across videos (Charades-STA:
"person opens the door" in dozens of videos, often reworded), so :class:`NegativeFilter` blocks, for each query
text, every video annotated with the same text (``drn.text.vocabulary.query_key``) or with a near paraphrase: MiniLM
sentence cosine >= ``train.negatives.paraphrase_cosine`` (default 0.9). Measured on Charades-STA train: rewordings
such as "person opened the refrigerator" / "person opens up the refrigerator" (0.92) and "person opening a window"
/ "the person opens a window" (0.97) sit above 0.9, while "person opens the door" / "person closes the door" sit
at 0.87. Templated texts whose single words decide the meaning need a higher bound: "the red square moves left" /
"the red square moves right" are 0.95 apart (the demo uses 0.97).

Annotations are incomplete: Charades-STA annotates about a third of what its videos show, so a video that is not
annotated with "person opens the door" may still show a door being opened. Where the dataset labels every action of
its videos (Charades' ``actions`` column, a synthetic benchmark's ``labels.jsonl``: ``drn.datasets.labels``), the
filter also blocks, for each text, every video that shows the text's labelled action at any time (the label of its
annotated moments' best-overlapping action, ``VideoLabels.text_labels``). Where no labels exist, the score guard of
``drn.training`` (``train.negatives.score_guard``) drops, in each step, a negative row that the model already
scores as highly as its positive.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from drn.errors import InputError
from drn.pairs import GroundingPair
from drn.text.vocabulary import query_key

if TYPE_CHECKING:
    from drn.datasets.labels import VideoLabels

EmbedTexts = Callable[[Sequence[str]], np.ndarray]
_BLOCK = 2048  # texts per row block of the cosine matrix
HARD_CANDIDATES = 16  # hard-negative videos kept per text (one is drawn at random each time)


@dataclass
class NegativeReport:
    """How many (positive pair, other video) candidates the filter excluded, and why."""

    pairs: int
    videos: int
    texts: int
    candidates: int  # pairs x (videos - 1)
    same_text: int  # excluded: the other video is annotated with the same text
    paraphrase: int  # excluded: ... with a near paraphrase only
    paraphrase_cosine: float
    labelled: int = 0  # excluded: the other video shows the text's labelled action (and neither rule above applies)
    labels_source: str = ""  # where the labels came from ("" when the dataset has none or they were not used)
    unlabelled_texts: int = 0  # texts whose moments overlap no labelled action (the label rule cannot help them)

    @property
    def excluded(self) -> int:
        return self.same_text + self.paraphrase + self.labelled

    def line(self) -> str:
        share = self.excluded / max(self.candidates, 1)
        labels = (f", {self.labelled:,} by the text's labelled action ({self.labels_source}; "
                  f"{self.unlabelled_texts:,} texts without a label)" if self.labels_source else "")
        return (f"negative-pair filter: {self.excluded:,} of {self.candidates:,} (pair, other "
                f"video) candidates excluded ({100 * share:.2f} %): {self.same_text:,} by the same text, "
                f"{self.paraphrase:,} by a near paraphrase (MiniLM cosine >= {self.paraphrase_cosine:g}){labels}; "
                f"{self.texts:,} distinct texts over {self.videos:,} videos")

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class NegativeFilter:
    """For each distinct query text of a split, the videos that hold it or a near paraphrase."""

    video_ids: list[str]
    key_index: dict[str, int]
    blocked: list[frozenset[int]]  # per key: indices into video_ids
    report: NegativeReport
    hard: list[list[int]] = field(default_factory=list)  # per key: the nearest non-blocked videos, nearest first
    video_index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.video_index = {v: i for i, v in enumerate(self.video_ids)}

    def blocks(self, text: str, video_id: str) -> bool:
        """Whether ``video_id`` holds ``text`` (or a near paraphrase), so it must not be its negative."""
        key = self.key_index.get(query_key(text))
        video = self.video_index.get(video_id)
        return key is None or video is None or video in self.blocked[key]

    def hard_videos(self, text: str) -> list[str]:
        """The videos annotated with the texts nearest to ``text`` that are not paraphrases of it, nearest first."""
        key = self.key_index.get(query_key(text))
        if key is None or not self.hard:
            return []
        return [self.video_ids[v] for v in self.hard[key]]

    def blocked_matrix(self, texts: Sequence[str], video_ids: Sequence[str]) -> torch.Tensor:
        """``[len(texts), len(video_ids)]`` bool: True where the video may not be a negative for the text
        (texts or videos the filter does not know are blocked, to be safe)."""
        out = torch.ones(len(texts), len(video_ids), dtype=torch.bool)
        columns = [self.video_index.get(v) for v in video_ids]
        for i, text in enumerate(texts):
            key = self.key_index.get(query_key(text))
            if key is None:
                continue
            held = self.blocked[key]
            for j, video in enumerate(columns):
                out[i, j] = video is None or video in held
        return out


def build_negative_filter(pairs: Sequence[GroundingPair], paraphrase_cosine: float,
                          embed: EmbedTexts | None = None, labels: VideoLabels | None = None) -> NegativeFilter:
    """The filter of ``pairs`` (a training split): same texts by ``query_key``, paraphrases by MiniLM cosine, and,
    with ``labels``, every video showing the text's labelled action.

    Raises InputError when some text is held (or paraphrased, or shown) by every video of the split: no negative
    exists.
    """
    if embed is None:
        from drn.text.sentence import embed_texts as embed
    video_ids = sorted({p.video_id for p in pairs})
    video_index = {v: i for i, v in enumerate(video_ids)}
    keys: dict[str, int] = {}
    holders: list[set[int]] = []
    for pair in pairs:
        key = keys.setdefault(query_key(pair.query), len(keys))
        if key == len(holders):
            holders.append(set())
        holders[key].add(video_index[pair.video_id])
    texts = list(keys)
    vectors = np.asarray(embed(texts), dtype=np.float32)
    near = _near_texts(vectors, paraphrase_cosine) if paraphrase_cosine < 1.0 else [[i] for i in range(len(texts))]
    by_text = [frozenset().union(*(holders[j] for j in near[i]), holders[i]) for i in range(len(texts))]
    shown, unlabelled = [frozenset()] * len(texts), 0
    if labels is not None:
        shown, unlabelled = _labelled_videos(pairs, keys, video_index, labels)
    blocked = [by_text[i] | shown[i] for i in range(len(texts))]
    for i, videos in enumerate(blocked):
        if len(videos) >= len(video_ids):
            label = " or shows its labelled action" if shown[i] else ""
            raise InputError(f"negative pairs were asked for (train.negatives.per_positive > 0), but every one of the "
                             f"{len(video_ids)} training videos holds the query {texts[i]!r} or a near paraphrase"
                             f"{label}: no video can be its negative; set train.negatives.per_positive=0")
    same = paraphrase = labelled = 0
    for pair in pairs:
        key = keys[query_key(pair.query)]
        same += len(holders[key]) - 1
        paraphrase += len(by_text[key]) - len(holders[key])
        labelled += len(blocked[key]) - len(by_text[key])
    report = NegativeReport(len(pairs), len(video_ids), len(texts), len(pairs) * (len(video_ids) - 1), same,
                            paraphrase, paraphrase_cosine, labelled,
                            (labels.source or "labels") if labels is not None else "", unlabelled)
    hard = _hard_videos(vectors, holders, blocked, HARD_CANDIDATES)
    return NegativeFilter(video_ids, keys, blocked, report, hard)


def _labelled_videos(pairs: Sequence[GroundingPair], keys: dict[str, int], video_index: dict[str, int],
                     labels: VideoLabels) -> tuple[list[frozenset[int]], int]:
    """For each text (by ``keys``), the videos of the split that show its labelled action at any time; and how
    many texts have no label (none of their moments overlaps a labelled action)."""
    label_of = labels.text_labels(pairs)
    shown: list[frozenset[int]] = []
    for key in keys:
        label = label_of.get(key)
        videos = labels.videos_with(label) if label is not None else set()
        shown.append(frozenset(video_index[v] for v in videos if v in video_index))
    return shown, sum(1 for key in keys if label_of.get(key) is None)


def _hard_videos(vectors: np.ndarray, holders: list[set[int]], blocked: list[frozenset[int]],
                 count: int) -> list[list[int]]:
    """For each text, up to ``count`` videos of the most similar texts, leaving out its blocked videos."""
    hard: list[list[int]] = []
    for first in range(0, len(vectors), _BLOCK):
        similarity = vectors[first:first + _BLOCK] @ vectors.T
        for row, i in zip(similarity, range(first, first + len(similarity)), strict=True):
            chosen: list[int] = []
            for j in np.argsort(-row, kind="stable"):
                chosen += [v for v in sorted(holders[j]) if v not in blocked[i] and v not in chosen]
                if len(chosen) >= count:
                    break
            hard.append(chosen[:count])
    return hard


def _near_texts(vectors: np.ndarray, threshold: float) -> list[list[int]]:
    """For each row of unit ``vectors``, the rows at cosine >= ``threshold`` (itself included), in blocks."""
    vectors = np.asarray(vectors, dtype=np.float32)
    near: list[list[int]] = []
    for first in range(0, len(vectors), _BLOCK):
        similar = vectors[first:first + _BLOCK] @ vectors.T >= threshold
        near += [np.flatnonzero(row).tolist() for row in similar]
    return near


@dataclass
class NegativeSampler:
    """Up to ``per_positive`` negative videos per positive row of a batch: ``hard_fraction`` of them hard (drawn
    from the split, ``NegativeFilter.hard_videos``), the rest from the batch's other videos.

    The choice is a function of the batch's content and ``seed``, so a resumed epoch draws the same negatives.
    """

    filter: NegativeFilter
    per_positive: int
    hard_fraction: float = 0.5
    seed: int = 0

    @property
    def hard_per_positive(self) -> int:
        return min(self.per_positive, int(self.per_positive * self.hard_fraction + 0.5))

    def sample(self, texts: Sequence[str], video_ids: Sequence[str], qids: Sequence[object],
               blocked: torch.Tensor) -> list[tuple[int, str]]:
        """``(row, video_id)`` of each negative pair of a batch whose rows are ``texts`` x ``video_ids`` and whose
        ``blocked`` matrix (``NegativeFilter.blocked_matrix``) says which batch videos each row may not use."""
        rng = np.random.default_rng([self.seed, zlib.crc32(repr(list(qids)).encode())])
        batch_videos = list(dict.fromkeys(video_ids))
        column = {video: j for j, video in reversed(list(enumerate(video_ids)))}
        hard_count = self.hard_per_positive
        out: list[tuple[int, str]] = []
        for i, text in enumerate(texts):
            used: set[str] = set()
            hard = [v for v in self.filter.hard_videos(text) if v != video_ids[i]]
            for c in sorted(rng.choice(len(hard), size=min(hard_count, len(hard)), replace=False).tolist()):
                used.add(hard[c])
            easy = [v for v in batch_videos if v not in used and not bool(blocked[i, column[v]])]
            for c in sorted(rng.choice(len(easy), size=min(self.per_positive - len(used), len(easy)),
                                       replace=False).tolist()):
                used.add(easy[c])
            out += [(i, video) for video in sorted(used)]
        return out
