"""Corpus-level evaluation: one query text against every video of a split (video-corpus moment retrieval).

Conventions (DESIGN.md section 7, as in TVR/XML and Escorcia et al. 2019), printed with every result:

* a query is a distinct normalised text of the split (``drn.text.vocabulary.query_key``); its ground truth is every
  annotated moment of that text in any video of the split (Charades-STA's sentences recur across videos);
* the results of a query are (video, segment) pairs from every video of the split (each video's top-n segments
  after NMS), ranked by score across the library (ties: video id, then start);
* a hit at R@k,IoU=m is one of the top-k results overlapping a ground-truth moment *in the same video* with IoU
  >= m (or > m); video R@k: one of the k best-ranked videos (a video ranks by its best segment) holds a
  ground-truth moment; chance video R@k is the expectation for a uniformly random ranking of the videos;
* the within-video R@1 beside them is the per-pair evaluator of ``drn.evaluation`` (each pair grounded in its own
  video), so the two views of the same model can be compared;
* with video labels (``drn.datasets.labels``: every action each video shows) the *relevance* convention is scored
  beside this *exact* one: a query's label is the labelled action its annotated moments overlap best (majority over
  its moments); its relevant moments in a video are every action of that label there plus its own annotated
  moments, so a correct moment in a video whose sentence was never written counts (``evaluate_corpus(labels=...)``).

``ground_corpus`` produces the ranked results of a checkpoint on a feature store in this process, in one of two
modes: *exhaustive* (every text against every video: texts x videos pairs) or *candidate-driven* (the checkpoint's
trained retrieval stage ranks the videos of each text by their best cell's cosine, exactly and in memory, and DRN
grounds only each text's N best: texts x N pairs). ``moments`` builds the same from a LanceDB grounding run.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from drn.datasets.labels import interval_iou
from drn.errors import InputError
from drn.evaluation import EvalConfig, EvalResult, evaluate
from drn.nms import temporal_iou
from drn.pairs import GroundingPair
from drn.predictions import Prediction
from drn.text.vocabulary import query_key

if TYPE_CHECKING:  # torch loads only when a checkpoint is grounded
    from drn.datasets.labels import VideoLabels
    from drn.inference import EncodedQueries, Grounder
    from drn.store import FeatureStore

EXHAUSTIVE = "exhaustive"  # every text against every video
CANDIDATES = "candidates"  # each text against its N best videos by the retrieval stage
DEFAULT_CANDIDATES = 20  # N of jobs.evaluate --corpus when the checkpoint has a trained retrieval stage


@dataclass(frozen=True)
class CorpusQuery:
    """One distinct query text of a split with every annotated moment of it."""

    key: str
    text: str  # its first spelling in the split
    moments: tuple[tuple[str, float, float], ...]  # (video_id, start_s, end_s)

    @property
    def videos(self) -> set[str]:
        return {video for video, _, _ in self.moments}


def corpus_queries(pairs: Sequence[GroundingPair]) -> list[CorpusQuery]:
    """The split's distinct texts in order of first appearance, each with all its moments."""
    texts: dict[str, str] = {}
    moments: dict[str, list[tuple[str, float, float]]] = {}
    for pair in pairs:
        key = query_key(pair.query)
        texts.setdefault(key, pair.query)
        moments.setdefault(key, []).append((pair.video_id, float(pair.start_s), float(pair.end_s)))
    return [CorpusQuery(key, texts[key], tuple(moments[key])) for key in texts]


def check_corpus_split(pairs: Sequence[GroundingPair], source: object = None) -> None:
    """InputError when a split cannot be evaluated as a corpus (no pairs, or a single video)."""
    videos = {p.video_id for p in pairs}
    if len(videos) < 2:
        raise InputError(f"corpus evaluation ranks videos against each other, but the split has {len(videos)} "
                         "video(s); use the per-video evaluation (without --corpus)", path=source)


@dataclass
class RankedMoments:
    """A query's results across the library, best first: ``video_ids[i]`` with ``segments[i] = (start, end,
    score)``."""

    video_ids: list[str]
    segments: np.ndarray

    @classmethod
    def rank(cls, video_ids: Sequence[str], segments: np.ndarray, keep: int | None = None) -> RankedMoments:
        """Sort by score (descending), then video id, then start; keep the first ``keep``."""
        segments = np.asarray(segments, dtype=np.float64).reshape(-1, 3)
        ids = np.asarray(list(video_ids), dtype=object)
        order = sorted(range(len(ids)), key=lambda i: (-segments[i, 2], ids[i], segments[i, 0]))[:keep]
        return cls([str(ids[i]) for i in order], segments[order])

    def video_order(self) -> list[str]:
        """Distinct videos in the order of their best segment."""
        return list(dict.fromkeys(self.video_ids))


@dataclass(frozen=True)
class CorpusConfig:
    recall_at: tuple[int, ...] = (1, 10, 100)
    ious: tuple[float, ...] = (0.5, 0.7)
    video_recall_at: tuple[int, ...] = (1, 10)
    comparison: str = ">="  # or ">"
    precision_at: int = 10  # the n of P@n by relevance (with labels)

    def __post_init__(self) -> None:
        if self.comparison not in (">=", ">"):
            raise InputError(f"comparison must be '>=' or '>', not {self.comparison!r}")
        if not self.recall_at or min(self.recall_at) < 1 or not self.video_recall_at or min(self.video_recall_at) < 1:
            raise InputError("recall levels must be positive")
        if self.precision_at < 1:
            raise InputError(f"precision_at must be at least 1, not {self.precision_at}")

    def keep(self, segments_per_video: int) -> int:
        """Results a query needs: the largest k, and enough for the largest video k however many segments each
        video contributes."""
        return max(max(self.recall_at), self.precision_at, max(self.video_recall_at) * max(segments_per_video, 1))


@dataclass
class CorpusRelevance:
    """The relevance convention's numbers (percent of the queries with a label): results scored against every
    labelled action of the query's label, plus the query's own annotated moments."""

    recall: dict[tuple[int, float], float]  # (k, m) -> percent
    precision: dict[float, float]  # m -> P@n, percent (n = precision_at)
    video_recall: dict[int, float]  # k -> percent
    video_recall_chance: dict[int, float]  # k -> percent for a random ranking of the videos
    exact_recall: dict[tuple[int, float], float]  # the exact convention on the same queries (those with a label)
    labelled_queries: int
    unlabelled_queries: int  # left out of every number above
    videos_per_label: dict[str, float]  # mean, median, max of the ranked videos holding each query's label
    labelled_videos: int  # ranked videos with at least one labelled action
    num_videos: int
    source: str
    precision_at: int = 10
    notes: list[str] = field(default_factory=list)
    convention: str = ""

    def to_dict(self) -> dict[str, Any]:
        n = self.precision_at
        return {
            "recall": {f"R@{k},IoU={m:g}": v for (k, m), v in self.recall.items()},
            "precision": {f"P@{n},IoU={m:g}": v for m, v in self.precision.items()},
            "video_recall": {f"video R@{k}": v for k, v in self.video_recall.items()},
            "video_recall_chance": {f"video R@{k}": v for k, v in self.video_recall_chance.items()},
            "exact_recall_same_queries": {f"R@{k},IoU={m:g}": v for (k, m), v in self.exact_recall.items()},
            "labelled_queries": self.labelled_queries, "unlabelled_queries": self.unlabelled_queries,
            "videos_per_label": self.videos_per_label, "labelled_videos": self.labelled_videos,
            "num_videos": self.num_videos, "source": self.source, "notes": self.notes, "convention": self.convention,
        }


@dataclass
class CorpusResult:
    recall: dict[tuple[int, float], float]  # (k, m) -> percent
    video_recall: dict[int, float]  # k -> percent
    video_recall_chance: dict[int, float]  # k -> percent for a random ranking of the videos
    num_queries: int
    num_videos: int
    moments_per_query: dict[str, float]  # mean, median, max
    videos_per_query: dict[str, float]
    within_video: EvalResult | None
    config: CorpusConfig
    convention: str = field(default="")
    relevance: CorpusRelevance | None = None  # with video labels

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "recall": {f"R@{k},IoU={m:g}": v for (k, m), v in self.recall.items()},
            "video_recall": {f"video R@{k}": v for k, v in self.video_recall.items()},
            "video_recall_chance": {f"video R@{k}": v for k, v in self.video_recall_chance.items()},
            "num_queries": self.num_queries, "num_videos": self.num_videos,
            "moments_per_query": self.moments_per_query, "videos_per_query": self.videos_per_query,
            "convention": self.convention,
        }
        if self.within_video is not None:
            out["within_video"] = {f"R@1,IoU={m:g}": self.within_video.recall[(1, m)] for m in self.config.ious
                                   if (1, m) in self.within_video.recall}
        if self.relevance is not None:
            out["relevance"] = self.relevance.to_dict()
        return out


def convention_text(config: CorpusConfig, num_queries: int, num_videos: int) -> str:
    op = ">=" if config.comparison == ">=" else ">"
    return (f"corpus: {num_queries} distinct query texts (lower case, words only) x {num_videos} videos; ground truth "
            "= every annotated moment of the text in any video of the split; results = each video's top segments "
            "(after NMS) ranked by score across the library, ties by video id then start; hit at R@k,IoU=m: one of "
            f"the top k overlaps a ground-truth moment of the same video with IoU {op} m; video R@k: one of the k "
            "best videos (by their best segment) holds the text; within-video R@1: each pair in its own video")


def relevance_convention_text(config: CorpusConfig, source: str, given_labels: bool = False) -> str:
    op = ">=" if config.comparison == ">=" else ">"
    n = config.precision_at
    rule = ("as given by the caller" if given_labels else "the labelled action its annotated moments overlap best "
            "(temporal IoU > 0; majority over its moments, ties by summed IoU, then by name)")
    return (f"labels from {source}; a query's label: {rule}; relevant moments of a query in a video: "
            "every action of its label there plus its own annotated moments there; hit at R@k,IoU=m: one of the top "
            f"k overlaps a relevant moment of its video with IoU {op} m; P@{n},IoU=m: share of the first {n} results "
            f"that do (missing results count as not relevant); video R@k: one of the k best videos holds the label "
            "or the text; queries without a label are left out of these numbers")


def query_labels(labels: VideoLabels, queries: Sequence[CorpusQuery]) -> dict[str, str | None]:
    """Each query's label: ``VideoLabels.label_of`` its annotated moments (query key -> label or None)."""
    return {query.key: labels.label_of(query.moments) for query in queries}


def _chance(holders: int, videos: int, k: int) -> float:
    """Probability that a random ranking of ``videos`` puts one of ``holders`` in its first ``k``."""
    miss = 1.0
    for i in range(min(k, videos)):
        miss *= max(videos - holders - i, 0) / (videos - i)
    return 1.0 - miss


def evaluate_corpus(queries: Sequence[CorpusQuery], ranked: Mapping[str, RankedMoments], num_videos: int,
                    config: CorpusConfig | None = None, within_video: EvalResult | None = None,
                    allow_missing: bool = False, labels: VideoLabels | None = None,
                    text_labels: Mapping[str, str | None] | None = None,
                    video_ids: Collection[str] | None = None) -> CorpusResult:
    """Corpus R@k,IoU=m and video R@k (percent) of ``ranked`` results (query key -> RankedMoments).

    With ``labels`` the result's ``relevance`` holds the relevance convention's numbers too: each query's label is
    ``text_labels[query.key]`` when given, else ``query_labels``; label-holding videos are counted among
    ``video_ids`` (the ranked videos; default: the videos of the queries' moments)."""
    config = config or CorpusConfig()
    if not queries:
        raise InputError("no query to evaluate")
    missing = [q.text for q in queries if q.key not in ranked]
    if missing and not allow_missing:
        raise InputError(f"{len(missing)} of {len(queries)} query texts have no results (e.g. {missing[0]!r})")
    hits = {(k, m): 0 for k in config.recall_at for m in config.ious}
    video_hits = {k: 0 for k in config.video_recall_at}
    chance = {k: 0.0 for k in config.video_recall_at}
    for query in queries:
        holders = query.videos
        for k in config.video_recall_at:
            chance[k] += _chance(len(holders), num_videos, k)
        result = ranked.get(query.key)
        if result is None or not len(result.video_ids):
            continue
        first_hit = _first_hit_rank(query, result, config)
        for (k, m) in hits:
            hits[(k, m)] += first_hit[m] < k
        order = result.video_order()
        for k in config.video_recall_at:
            video_hits[k] += any(video in holders for video in order[:k])
    n = len(queries)
    moments = np.array([len(q.moments) for q in queries])
    videos = np.array([len(q.videos) for q in queries])
    return CorpusResult(
        recall={key: 100.0 * value / n for key, value in hits.items()},
        video_recall={k: 100.0 * value / n for k, value in video_hits.items()},
        video_recall_chance={k: 100.0 * value / n for k, value in chance.items()},
        num_queries=n, num_videos=num_videos,
        moments_per_query=_summary(moments), videos_per_query=_summary(videos),
        within_video=within_video, config=config, convention=convention_text(config, n, num_videos),
        relevance=None if labels is None else evaluate_relevance(queries, ranked, num_videos, labels, config,
                                                                 text_labels, video_ids),
    )


def evaluate_relevance(queries: Sequence[CorpusQuery], ranked: Mapping[str, RankedMoments], num_videos: int,
                       labels: VideoLabels, config: CorpusConfig, text_labels: Mapping[str, str | None] | None = None,
                       video_ids: Collection[str] | None = None) -> CorpusRelevance:
    """The relevance convention (``relevance_convention_text``) over the queries with a label."""
    given = text_labels is not None
    text_labels = text_labels if text_labels is not None else query_labels(labels, queries)
    universe = set(video_ids) if video_ids is not None else {video for q in queries for video in q.videos}
    n_at = config.precision_at
    hits = {(k, m): 0 for k in config.recall_at for m in config.ious}
    exact = dict.fromkeys(hits, 0)
    relevant_share = dict.fromkeys(config.ious, 0.0)
    video_hits = dict.fromkeys(config.video_recall_at, 0)
    chance = dict.fromkeys(config.video_recall_at, 0.0)
    holders_count: list[int] = []
    labelled = 0
    for query in queries:
        label = text_labels.get(query.key)
        if label is None:
            continue
        labelled += 1
        holders = labels.videos_with(label) & universe
        holders_count.append(len(holders))
        for k in config.video_recall_at:
            chance[k] += _chance(len(holders | query.videos), num_videos, k)
        result = ranked.get(query.key)
        if result is None or not len(result.video_ids):
            continue
        own: dict[str, list[tuple[float, float]]] = {}
        for video, start, end in query.moments:
            own.setdefault(video, []).append((start, end))
        best = [max((interval_iou(segment[0], segment[1], s, e) for s, e in (*labels.spans(video, label),
                                                                    *own.get(video, ()))), default=0.0)
                for video, segment in zip(result.video_ids, result.segments, strict=True)]
        first_exact = _first_hit_rank(query, result, config)
        for m in config.ious:
            passed = [_passes(iou, m, config) for iou in best]
            first = passed.index(True) if True in passed else float("inf")
            relevant_share[m] += sum(passed[:n_at]) / n_at
            for k in config.recall_at:
                hits[(k, m)] += first < k
                exact[(k, m)] += first_exact[m] < k
        order = result.video_order()
        for k in config.video_recall_at:
            video_hits[k] += any(video in query.videos or labels.holds(video, label) for video in order[:k])

    def percent(counts: Mapping[Any, float]) -> dict[Any, float]:  # as the exact numbers: 100 * count / queries
        return {key: 100.0 * value / labelled for key, value in counts.items()} if labelled else {}

    ranked_videos = universe & labels.video_ids()
    return CorpusRelevance(
        recall=percent(hits), precision=percent(relevant_share), video_recall=percent(video_hits),
        video_recall_chance=percent(chance), exact_recall=percent(exact),
        labelled_queries=labelled, unlabelled_queries=len(queries) - labelled,
        videos_per_label=_summary(np.array(holders_count)) if holders_count else {"mean": 0.0, "median": 0.0,
                                                                                 "max": 0.0},
        labelled_videos=len(ranked_videos), num_videos=num_videos, source=labels.source, precision_at=n_at,
        notes=list(labels.notes), convention=relevance_convention_text(config, labels.source, given),
    )


def _passes(iou: float, m: float, config: CorpusConfig) -> bool:
    return iou >= m if config.comparison == ">=" else iou > m


def _summary(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(values.mean()), "median": float(np.median(values)), "max": float(values.max())}


def _first_hit_rank(query: CorpusQuery, result: RankedMoments, config: CorpusConfig) -> dict[float, float]:
    """For each IoU level, the rank (0-based) of the first result that hits, or inf."""
    by_video: dict[str, np.ndarray] = {}
    for video, start, end in query.moments:
        by_video.setdefault(video, np.zeros((0, 2)))
        by_video[video] = np.vstack([by_video[video], [start, end]])
    first = {m: float("inf") for m in config.ious}
    for rank, (video, segment) in enumerate(zip(result.video_ids, result.segments, strict=True)):
        truth = by_video.get(video)
        if truth is None:
            continue
        best = float(temporal_iou(segment[:2], truth).max())
        for m in config.ious:
            if first[m] == float("inf") and (best >= m if config.comparison == ">=" else best > m):
                first[m] = rank
        if all(v != float("inf") for v in first.values()):
            break
    return first


def within_video_result(pairs: Sequence[GroundingPair], predictions: Sequence[Prediction],
                        config: CorpusConfig) -> EvalResult:
    """R@1 at the corpus IoU levels of each pair grounded in its own video (``drn.evaluation``)."""
    eval_config = EvalConfig(recall_at=(1,), ious=tuple(config.ious), comparison=config.comparison)
    return evaluate(pairs, {p.qid: p for p in predictions}, eval_config)


def format_corpus_result(result: CorpusResult, title: str = "") -> str:
    """A table of the corpus metrics with the within-video R@1 and chance beside them, and the convention; with
    labels, the exact and relevance conventions side by side."""
    if result.relevance is not None:
        return _format_with_relevance(result, result.relevance, title)
    lines = [title] if title else []
    header = "  ".join(f"R@{k},IoU={m:g}" for k in result.config.recall_at for m in result.config.ious)
    values = "  ".join(f"{result.recall[(k, m)]:>{len(f'R@{k},IoU={m:g}')}.2f}"
                       for k in result.config.recall_at for m in result.config.ious)
    lines += [header, values]
    lines.append(_video_line(result.video_recall, result.video_recall_chance, result.config))
    lines += _tail(result)
    lines.append(f"convention: {result.convention}")
    return "\n".join(lines)


def _video_line(recall: Mapping[int, float], chance: Mapping[int, float], config: CorpusConfig) -> str:
    return "  ".join(f"video R@{k} {recall[k]:.2f} (chance {chance[k]:.2f})" for k in config.video_recall_at)


def _tail(result: CorpusResult) -> list[str]:
    """The within-video R@1 and the counts."""
    lines = []
    if result.within_video is not None:
        within = "  ".join(f"R@1,IoU={m:g} {result.within_video.recall[(1, m)]:.2f}" for m in result.config.ious)
        lines.append(f"within-video (each pair in its own video): {within}")
    mpq, vpq = result.moments_per_query, result.videos_per_query
    lines.append(f"{result.num_queries} queries over {result.num_videos} videos; moments per query: mean "
                 f"{mpq['mean']:.2f}, median {mpq['median']:g}, max {mpq['max']:g}; videos per query: mean "
                 f"{vpq['mean']:.2f}, max {vpq['max']:g}")
    return lines


def _format_with_relevance(result: CorpusResult, rel: CorpusRelevance, title: str) -> str:
    """Rows ``exact`` and ``relevance`` under one R@k header, then the video R@k and P@n of each."""
    config = result.config
    lines = [title] if title else []
    names = [f"R@{k},IoU={m:g}" for k in config.recall_at for m in config.ious]
    keys = [(k, m) for k in config.recall_at for m in config.ious]
    rows = [("exact", result.recall)]
    if rel.labelled_queries:
        if rel.unlabelled_queries:
            rows.append(("exact, queries with a label", rel.exact_recall))
        rows.append(("relevance", rel.recall))
    width = max(len(name) for name, _ in rows)
    lines.append(" " * width + "  " + "  ".join(names))
    lines += [f"{name:<{width}}  " + "  ".join(f"{values[key]:>{len(n)}.2f}" for key, n in zip(keys, names,
                                                                                                strict=True))
              for name, values in rows]
    lines.append("exact: " + _video_line(result.video_recall, result.video_recall_chance, config))
    heading = f"relevance (query's labelled action, labels from {rel.source})"
    if rel.labelled_queries:
        precision = "  ".join(f"P@{rel.precision_at},IoU={m:g} {rel.precision[m]:.2f}" for m in config.ious)
        lines.append(f"{heading}: {_video_line(rel.video_recall, rel.video_recall_chance, config)}  {precision}")
    else:
        lines.append(f"{heading}: no query of the split has a label")
    lines += _tail(result)
    vpl = rel.videos_per_label
    lines.append(f"relevance: {rel.labelled_queries} of {rel.labelled_queries + rel.unlabelled_queries} queries have "
                 f"a label ({rel.unlabelled_queries} without, left out of the relevance numbers); videos holding "
                 f"each query's label: mean {vpl['mean']:.2f}, median {vpl['median']:g}, max {vpl['max']:g}; "
                 f"videos with labels: {rel.labelled_videos} of {rel.num_videos}")
    lines += [f"labels: {note}" for note in rel.notes]
    lines.append(f"convention (exact): {result.convention}")
    lines.append(f"convention (relevance): {rel.convention}")
    return "\n".join(lines)


@dataclass
class CorpusRun:
    """What ``ground_corpus`` produced; unpacks as ``(queries, ranked, predictions, num_videos)``."""

    queries: list[CorpusQuery]
    ranked: dict[str, RankedMoments]
    predictions: list[Prediction]
    num_videos: int
    mode: str = EXHAUSTIVE  # or CANDIDATES
    candidates: int | None = None  # videos per text taken from the retrieval stage (candidate mode)
    pairs_scored: int = 0  # (text, video) pairs DRN scored, each pair's own video included
    own_video_pairs: int = 0  # of those, pairs scored only for the within-video R@1 (not candidates)
    seconds: dict[str, float] = field(default_factory=dict)  # retrieval, grounding

    def __iter__(self) -> Iterator[Any]:
        return iter((self.queries, self.ranked, self.predictions, self.num_videos))

    @property
    def all_pairs(self) -> int:
        """Every text x every video: what the exhaustive mode scores."""
        return len(self.queries) * self.num_videos

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "candidates": self.candidates, "pairs_scored": self.pairs_scored,
                "own_video_pairs": self.own_video_pairs, "all_pairs": self.all_pairs,
                "seconds": {key: round(value, 3) for key, value in self.seconds.items()}}

    def describe(self) -> str:
        """One line: which mode ran, with what N, and how many pairs DRN scored."""
        took = ", ".join(f"{key} {value:.1f} s" for key, value in self.seconds.items())
        if self.mode == EXHAUSTIVE:
            return (f"mode: exhaustive, every text against every video: {self.pairs_scored:,} (text, video) pairs "
                    f"scored ({took})")
        every = f" (here all {self.num_videos})" if (self.candidates or 0) >= self.num_videos else ""
        return (f"mode: candidates, each text's {self.candidates} best videos{every} by the retrieval stage (best "
                f"cell cosine): {self.pairs_scored:,} (text, video) pairs scored, {self.own_video_pairs:,} of them "
                f"only for the within-video R@1, instead of {self.all_pairs:,} ({took})")


def _merge_top(scores: np.ndarray, positions: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``keep`` best (score descending, then position ascending) of ``scores [Q, n]``."""
    order = np.lexsort((positions, -scores), axis=-1)[:, :keep]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(positions, order, axis=1)


def candidate_videos(grounder: Grounder, store: FeatureStore, video_ids: Sequence[str], encoded: EncodedQueries,
                     count: int, *, videos_per_batch: int = 32, query_chunk: int = 2048,
                     progress: bool = False) -> list[list[str]]:
    """Each query's ``count`` best videos of ``video_ids``, best first: the checkpoint's trained retrieval stage
    scores a (query, video) by its best cell's cosine with the query, exactly (every cell, in memory); ties go to
    the smaller video id. Streams over the videos, keeping ``count`` per query."""
    import torch
    from tqdm import tqdm

    from drn.retrieval import require_trained_retrieval

    if count < 1:
        raise InputError(f"candidates must be at least 1, not {count}")
    head = require_trained_retrieval(grounder.model)
    video_ids = sorted(video_ids)
    position = {video: i for i, video in enumerate(video_ids)}
    best = np.zeros((len(encoded), 0), dtype=np.float32)
    where = np.zeros((len(encoded), 0), dtype=np.int64)
    bar = tqdm(total=len(video_ids), desc="corpus retrieval", unit="video", disable=not progress)
    with torch.no_grad():
        queries = head.encode_query(encoded.features)  # [Q, R]
        for first in range(0, len(video_ids), videos_per_batch):
            videos = list(store.iter_videos(video_ids[first:first + videos_per_batch]))
            grids, ids, _ = grounder.grids(videos)
            cells = head.encode_cells(torch.as_tensor(grids, dtype=torch.float32, device=queries.device))
            scores = torch.cat([torch.einsum("qr,vcr->qvc", queries[q:q + query_chunk], cells).amax(dim=-1)
                                for q in range(0, len(queries), query_chunk)]).cpu().numpy()  # [Q, v]
            positions = np.broadcast_to(np.array([position[v] for v in ids], dtype=np.int64), scores.shape)
            best, where = _merge_top(np.concatenate([best, scores], axis=1),
                                     np.concatenate([where, positions], axis=1), count)
            bar.update(len(videos))
    bar.close()
    return [[video_ids[p] for p in row] for row in where.tolist()]


def ground_corpus(grounder: Grounder, store: FeatureStore, pairs: Sequence[GroundingPair],
                  config: CorpusConfig | None = None, *, candidates: int | None = None, videos_per_batch: int = 32,
                  pair_batch_size: int = 256, progress: bool = False) -> CorpusRun:
    """The distinct texts of ``pairs`` against the videos of ``pairs`` with a ``drn.inference.Grounder``.

    Exhaustive (``candidates`` None): every text against every video. Candidate-driven (``candidates`` N): the
    checkpoint's trained retrieval stage picks each text's N best videos (``candidate_videos``) and DRN scores only
    those pairs, plus each annotated pair in its own video (for the within-video R@1; those results enter the
    corpus ranking only where the video is also a candidate). With N at least the number of videos both modes
    rank the same results.

    Returns a ``CorpusRun`` (it unpacks as the corpus queries, their ranked results: each video's top
    ``decode.top_n`` segments, the best ``config.keep(top_n)`` kept per query; the per-pair predictions in their own
    video; the number of videos). Streams over the videos, so memory does not grow with the library.
    """
    from tqdm import tqdm

    config = config or CorpusConfig()
    if candidates is not None and candidates < 1:
        raise InputError(f"candidates must be at least 1, not {candidates}")
    keep = config.keep(grounder.config.decode.top_n)
    check_corpus_split(pairs, store.uri)
    queries = corpus_queries(pairs)
    encoded = grounder.encode_queries([q.text for q in queries])
    index = {q.key: i for i, q in enumerate(queries)}
    pairs_of_video: dict[str, list[GroundingPair]] = {}
    for pair in pairs:
        pairs_of_video.setdefault(pair.video_id, []).append(pair)
    video_ids = sorted(pairs_of_video)
    run = CorpusRun(queries, {}, [], len(video_ids), CANDIDATES if candidates is not None else EXHAUSTIVE,
                    candidates)
    picked: dict[str, set[int]] | None = None  # video -> the queries that took it as a candidate
    if candidates is not None:
        started = time.perf_counter()
        picked = {}
        chosen = candidate_videos(grounder, store, video_ids, encoded, candidates,
                                  videos_per_batch=videos_per_batch, progress=progress)
        for q, videos in enumerate(chosen):
            for video in videos:
                picked.setdefault(video, set()).add(q)
        run.seconds["retrieval"] = time.perf_counter() - started
    own = {video: {index[query_key(p.query)] for p in video_pairs} for video, video_pairs in pairs_of_video.items()}

    started = time.perf_counter()
    pool: list[tuple[list[str], list[np.ndarray]]] = [([], []) for _ in queries]
    bar = tqdm(total=len(video_ids), desc="corpus", unit="video", disable=not progress)
    for first in range(0, len(video_ids), videos_per_batch):
        videos = list(store.iter_videos(video_ids[first:first + videos_per_batch]))
        wanted = None  # exhaustive: every pair; else each video with the texts that picked it or are annotated in it
        if picked is not None:
            wanted = [(q, v) for v, video in enumerate(videos)
                      for q in sorted(picked.get(video.video_id, set()) | own[video.video_id])]
        for result in grounder.ground(videos, encoded, pair_batch_size=pair_batch_size, pairs=wanted):
            q = result.query_index
            run.pairs_scored += 1
            if picked is None or q in picked.get(result.video_id, ()):
                ids, segs = pool[q]
                ids += [result.video_id] * len(result.segments)
                segs.append(result.segments[:, :3])
            else:
                run.own_video_pairs += 1
            if q in own[result.video_id]:
                run.predictions += [Prediction(pair.qid, pair.video_id, result.segments[:, :3])
                                    for pair in pairs_of_video[result.video_id] if index[query_key(pair.query)] == q]
        for q, (ids, segs) in enumerate(pool):  # keep the best few per query: memory stays flat
            if len(ids) > 4 * keep:
                ranked = RankedMoments.rank(ids, np.concatenate(segs), keep=keep)
                pool[q] = (ranked.video_ids, [ranked.segments])
        bar.update(len(videos))
    bar.close()
    run.seconds["grounding"] = time.perf_counter() - started
    run.ranked = {q.key: RankedMoments.rank(ids, np.concatenate(segs) if segs else np.zeros((0, 3)), keep=keep)
                  for q, (ids, segs) in zip(queries, pool, strict=True)}
    return run
