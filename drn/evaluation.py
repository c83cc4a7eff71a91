"""R@n,IoU=m and mIoU (DESIGN.md section 6), with every convention that moves the numbers made explicit.

- ``comparison``: a top-n segment is a hit when its IoU with the ground truth is ``>=`` m (default) or ``>`` m.
- ``nms``: ``"off"`` (default), a fixed threshold such as ``"0.5"``, or ``"m-0.05"`` (the threshold is the IoU
  level m minus 0.05, as the DRN authors' code does). NMS runs before the top n are taken and drops a segment
  whose IoU with a better kept one is greater than the threshold. NMS never changes the top-1.
- ties: segments are ranked by descending score with a stable sort, so equal scores keep their file order.
- mIoU: the mean over queries of the top-1 segment's IoU (0 for a query with no segments or no prediction).
- a missing prediction is an error unless ``allow_missing``; then it counts as a miss at every n and m.
Recalls and mIoU are reported in percent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from drn.errors import InputError
from drn.nms import temporal_iou, temporal_nms
from drn.pairs import GroundingPair
from drn.predictions import Prediction, qid_key

COMPARISONS = (">=", ">")


def parse_nms(value: str | float | None) -> str:
    """Normalise an NMS setting to ``"off"``, ``"m-<delta>"`` or a threshold string; InputError if invalid."""
    if value is None:
        return "off"
    text = str(value).strip().lower().replace(" ", "")
    if text in ("off", "none", ""):
        return "off"
    if text.startswith("m-"):
        delta = _number(text[2:], value)
        if not 0.0 <= delta < 1.0:
            raise InputError(f"NMS offset must be in [0, 1), got {value!r}")
        return f"m-{delta:g}"
    threshold = _number(text, value)
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"NMS threshold must be in [0, 1], got {value!r}")
    return f"{threshold:g}"


def _number(text: str, original: object) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"NMS must be 'off', a threshold like 0.5, or 'm-0.05'; got {original!r}") from None


@dataclass(frozen=True)
class EvalConfig:
    """How to score: the n of R@n, the IoU levels m, ``>=`` or ``>``, NMS, and whether misses are allowed."""

    recall_at: tuple[int, ...] = (1, 5)
    ious: tuple[float, ...] = (0.3, 0.5, 0.7)
    comparison: str = ">="
    nms: str = "off"
    allow_missing: bool = False

    def __post_init__(self) -> None:
        if self.comparison not in COMPARISONS:
            raise InputError(f"comparison must be one of {' '.join(COMPARISONS)}, got {self.comparison!r}")
        if not self.recall_at or any(int(n) < 1 for n in self.recall_at):
            raise InputError(f"recall_at must be positive integers, got {self.recall_at}")
        if not self.ious or any(not 0.0 <= float(m) <= 1.0 for m in self.ious):
            raise InputError(f"IoU levels must lie in [0, 1], got {self.ious}")
        object.__setattr__(self, "recall_at", tuple(int(n) for n in self.recall_at))
        object.__setattr__(self, "ious", tuple(float(m) for m in self.ious))
        object.__setattr__(self, "nms", parse_nms(self.nms))

    def nms_threshold(self, iou: float) -> float | None:
        """The NMS threshold used before scoring at IoU level ``iou``, or None when NMS is off."""
        if self.nms == "off":
            return None
        if self.nms.startswith("m-"):
            return iou - float(self.nms[2:])
        return float(self.nms)

    def describe(self) -> str:
        """The convention, one line, printed with every result."""
        nms = {"off": "off"}.get(self.nms, f"threshold {self.nms}" if not self.nms.startswith("m-") else self.nms)
        missing = "count as misses" if self.allow_missing else "are an error"
        return (
            f"hit: IoU {self.comparison} m; NMS before top-n: {nms}; ties: stable, file order; "
            f"mIoU: top-1; missing predictions {missing}"
        )


@dataclass
class EvalResult:
    """Recall in percent by ``(n, m)``, mIoU in percent, and per-query detail aligned with ``qids``."""

    config: EvalConfig
    recall: dict[tuple[int, float], float]
    miou: float
    num_queries: int
    num_missing: int
    num_ignored: int
    qids: list[int | str] = field(repr=False, default_factory=list)
    top1_iou: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    hits: dict[tuple[int, float], np.ndarray] = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "recall": {f"R@{n},IoU={m:g}": round(value, 4) for (n, m), value in self.recall.items()},
            "miou": round(self.miou, 4),
            "num_queries": self.num_queries,
            "num_missing": self.num_missing,
            "num_ignored": self.num_ignored,
            "convention": {
                "comparison": self.config.comparison,
                "nms": self.config.nms,
                "ties": "stable, file order",
                "allow_missing": self.config.allow_missing,
                "text": self.config.describe(),
            },
        }


def rank_segments(segments: np.ndarray) -> np.ndarray:
    """Rows by descending score; equal scores keep their input order."""
    segments = np.asarray(segments, dtype=np.float64).reshape(-1, 3)
    return segments[np.argsort(-segments[:, 2], kind="stable")]


def _is_hit(ious: np.ndarray, level: float, comparison: str) -> bool:
    return bool(np.any(ious >= level) if comparison == ">=" else np.any(ious > level))


def match_predictions(
    pairs: Sequence[GroundingPair], predictions: Mapping[int | str, Prediction], allow_missing: bool
) -> tuple[list[Prediction | None], int]:
    """Each pair's prediction (None where missing and allowed) and the number of predictions matching no pair."""
    by_key = {qid_key(p.qid): p for p in predictions.values()}
    sources = {p.source for p in predictions.values() if p.source}
    source = sources.pop() if len(sources) == 1 else None
    matched: list[Prediction | None] = []
    for pair in pairs:
        prediction = by_key.pop(qid_key(pair.qid), None)
        if prediction is None and not allow_missing:
            raise InputError(
                f"no prediction for qid {pair.qid!r} (video {pair.video_id!r}); "
                "allow missing predictions to count them as misses",
                path=source,
            )
        if prediction is not None and prediction.video_id != pair.video_id:
            raise InputError(
                f"qid {pair.qid!r}: the prediction names video {prediction.video_id!r} "
                f"but the split has {pair.video_id!r}",
                path=prediction.source,
                line=prediction.line,
            )
        matched.append(prediction)
    return matched, len(by_key)


def evaluate(
    pairs: Sequence[GroundingPair],
    predictions: Mapping[int | str, Prediction],
    config: EvalConfig | None = None,
) -> EvalResult:
    """Score ``predictions`` against the ground truth of ``pairs`` (see the module docstring for conventions)."""
    config = config or EvalConfig()
    if not pairs:
        raise InputError("no pairs to evaluate")
    matched, ignored = match_predictions(pairs, predictions, config.allow_missing)
    keys = [(n, m) for n in config.recall_at for m in config.ious]
    hits = {key: np.zeros(len(pairs), dtype=bool) for key in keys}
    top1 = np.zeros(len(pairs), dtype=np.float64)
    for index, (pair, prediction) in enumerate(zip(pairs, matched, strict=True)):
        if prediction is None or len(prediction.segments) == 0:
            continue
        truth = np.array([pair.start_s, pair.end_s])
        ranked = rank_segments(prediction.segments)
        ious = temporal_iou(truth, ranked)
        top1[index] = ious[0]
        for m in config.ious:
            threshold = config.nms_threshold(m)
            if threshold is None:
                kept_ious = ious
            else:
                kept_ious = temporal_iou(truth, temporal_nms(ranked, threshold, max_keep=max(config.recall_at)))
            for n in config.recall_at:
                hits[(n, m)][index] = _is_hit(kept_ious[:n], m, config.comparison)
    return EvalResult(
        config=config,
        recall={key: 100.0 * float(hit.mean()) for key, hit in hits.items()},
        miou=100.0 * float(top1.mean()),
        num_queries=len(pairs),
        num_missing=sum(p is None for p in matched),
        num_ignored=ignored,
        qids=[pair.qid for pair in pairs],
        top1_iou=top1,
        hits=hits,
    )


def format_result(result: EvalResult, title: str | None = None) -> str:
    """A plain-text table of R@n,IoU=m (rows n, columns m) with mIoU, the query count and the convention."""
    config = result.config
    header = [""] + [f"IoU={m:g}" for m in config.ious]
    rows = [[f"R@{n}"] + [f"{result.recall[(n, m)]:.2f}" for m in config.ious] for n in config.recall_at]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [title] if title else []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
    lines.append(
        f"mIoU {result.miou:.2f}   queries {result.num_queries}   missing {result.num_missing}"
        + (f"   ignored (qid not in split) {result.num_ignored}" if result.num_ignored else "")
    )
    lines.append(f"convention: {config.describe()}")
    return "\n".join(lines)
