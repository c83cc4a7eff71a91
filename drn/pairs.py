"""A (video, query, moment) pair: the unit every loader yields and every evaluator scores."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GroundingPair:
    """One query about one video with its ground-truth moment, in seconds.

    ``qid`` is the pair's 0-based position in the source file, counted before any cleaning, so ids never shift
    when a pair is dropped (own JSONL data may give its own ``qid``).
    """

    qid: int | str
    video_id: str
    query: str
    start_s: float
    end_s: float
    duration_s: float

    @property
    def start_frac(self) -> float:
        return self.start_s / self.duration_s

    @property
    def end_frac(self) -> float:
        return self.end_s / self.duration_s
