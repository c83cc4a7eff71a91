"""The cleaning rules every loader applies, and the report of what they dropped or clipped.

Rules, in order (docs/datasets.md lists the counts they give on the real files):

1. the query's whitespace is stripped and collapsed to single spaces; an empty query is dropped;
2. a video whose duration is not positive is dropped;
3. a pair whose start >= end (as written in the source) is dropped;
4. a pair whose start is at or after the video's duration is dropped;
5. a start before 0 is clipped to 0, an end after the duration is clipped to the duration.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from drn.pairs import GroundingPair

EMPTY_QUERY = "empty query"
BAD_DURATION = "duration <= 0"
START_NOT_BEFORE_END = "start >= end"
START_AFTER_DURATION = "start >= duration"
START_BEFORE_ZERO = "start < 0"
END_AFTER_DURATION = "end > duration"


@dataclass(frozen=True)
class RawPair(GroundingPair):
    """A pair as read from the source, before cleaning: ``GroundingPair``'s fields, not yet checked, and the
    ``line`` it was read from (for messages). ``clean_pairs`` turns the usable ones into plain ``GroundingPair``s."""

    line: int | None = None


@dataclass
class LoadReport:
    """What a loader read and what cleaning did: raw count, dropped and clipped qids by reason."""

    dataset: str
    split: str
    sources: tuple[str, ...]
    raw_count: int = 0
    dropped: dict[str, list[int | str]] = field(default_factory=dict)
    clipped: dict[str, list[int | str]] = field(default_factory=dict)
    normalized_queries: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def num_dropped(self) -> int:
        return sum(len(qids) for qids in self.dropped.values())

    @property
    def num_clipped(self) -> int:
        """Pairs with at least one clipped end (a pair clipped at both ends counts once)."""
        return len({qid for qids in self.clipped.values() for qid in qids})

    def to_dict(self) -> dict[str, object]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "sources": list(self.sources),
            "raw_count": self.raw_count,
            "num_dropped": self.num_dropped,
            "num_clipped": self.num_clipped,
            "dropped": {reason: list(qids) for reason, qids in self.dropped.items()},
            "clipped": {reason: list(qids) for reason, qids in self.clipped.items()},
            "normalized_queries": self.normalized_queries,
            "notes": list(self.notes),
        }


@dataclass
class LoadedSplit:
    """The clean pairs of one split and the report of how they were obtained."""

    pairs: list[GroundingPair]
    report: LoadReport

    @property
    def durations(self) -> dict[str, float]:
        """Duration in seconds of every video that has at least one pair."""
        return {pair.video_id: pair.duration_s for pair in self.pairs}

    def __len__(self) -> int:
        return len(self.pairs)


def normalize_query(text: str) -> str:
    """Strip the query and collapse runs of whitespace to one space."""
    return " ".join(text.split())


def clean_pairs(raw_pairs: Iterable[RawPair], report: LoadReport) -> list[GroundingPair]:
    """Apply the cleaning rules to ``raw_pairs`` and record every drop and clip in ``report``."""
    pairs: list[GroundingPair] = []

    def note(kind: dict[str, list[int | str]], reason: str, qid: int | str) -> None:
        kind.setdefault(reason, []).append(qid)

    for raw in raw_pairs:
        report.raw_count += 1
        query = normalize_query(raw.query)
        if query != raw.query:
            report.normalized_queries += 1
        if not query:
            note(report.dropped, EMPTY_QUERY, raw.qid)
            continue
        if raw.duration_s <= 0:
            note(report.dropped, BAD_DURATION, raw.qid)
            continue
        if raw.start_s >= raw.end_s:
            note(report.dropped, START_NOT_BEFORE_END, raw.qid)
            continue
        if raw.start_s >= raw.duration_s:
            note(report.dropped, START_AFTER_DURATION, raw.qid)
            continue
        start, end = raw.start_s, raw.end_s
        if start < 0:
            note(report.clipped, START_BEFORE_ZERO, raw.qid)
            start = 0.0
        if end > raw.duration_s:
            note(report.clipped, END_AFTER_DURATION, raw.qid)
            end = raw.duration_s
        pairs.append(GroundingPair(raw.qid, raw.video_id, query, start, end, raw.duration_s))
    return pairs
