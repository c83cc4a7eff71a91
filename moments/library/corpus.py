"""Corpus-level evaluation of a LanceDB grounding run (``python -m jobs.evaluate --corpus --db D``).

A run of ``jobs.ground`` holds each (query, video)'s top segments; ranked across the library by score they are
exactly the results ``drn.corpus`` evaluates. The run must have grounded every distinct query text of the split,
and an exhaustive, unbounded run every video of the split (it may hold more: other queries, other videos, which
are left out). A candidate-driven or bounded run (``keep_per_query``) holds each query's best moments only: the
videos it never scored, or whose moments it dropped, rank below them, as they would in its searches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from drn.corpus import CorpusConfig, CorpusQuery, RankedMoments, corpus_queries
from drn.errors import InputError
from drn.pairs import GroundingPair
from drn.predictions import Prediction
from drn.text import query_key
from moments.index.table import Index


def pick_run(index: Index, run_id: str | None) -> str:
    """The given run (which must exist), or the index's only run."""
    runs = index.runs()
    if not runs:
        raise InputError("the index holds no grounding run; run jobs.ground first", path=index.uri)
    if run_id is None:
        if len(runs) > 1:
            raise InputError(f"the index holds {len(runs)} runs ({', '.join(runs[:5])}); choose one with --run-id",
                             path=index.uri)
        return runs[0]
    if run_id not in runs:
        raise InputError(f"no run {run_id!r} in the index (runs: {', '.join(runs[:5])})", path=index.uri)
    return run_id


def corpus_from_run(db: str, run_id: str | None, pairs: Sequence[GroundingPair], config: CorpusConfig
                    ) -> tuple[list[CorpusQuery], dict[str, RankedMoments], list[Prediction], int]:
    """The split's corpus queries, their ranked results from the run, the per-pair predictions in their own
    video (rank order), and the number of videos; InputError when the run misses texts or videos of the split."""
    index = Index(db)
    run = pick_run(index, run_id)
    rows = index.to_pandas(run_id=run)
    rows = rows[rows["video_id"].notna()]
    videos = sorted({p.video_id for p in pairs})
    record = index.run_records().get(run)
    partial = record is not None and (record.mode == "candidates" or record.keep_per_query > 0)
    missing_videos = [] if partial else sorted(set(videos) - set(rows["video_id"]))
    if missing_videos:
        raise InputError(f"run {run!r} did not ground {len(missing_videos)} of the split's {len(videos)} videos "
                         f"(e.g. {missing_videos[0]!r}); ground the split's videos first", path=db)
    rows = rows[rows["video_id"].isin(videos)].copy()
    rows["key"] = [query_key(text) for text in rows["query_text"]]
    queries = corpus_queries(pairs)
    grounded = set(rows["key"])
    missing = [q.text for q in queries if q.key not in grounded]
    if missing:
        raise InputError(f"run {run!r} holds no rows for {len(missing)} of the split's {len(queries)} query texts "
                         f"(e.g. {missing[0]!r}); ground a collection with every text of the split", path=db)
    wanted = {q.key for q in queries}
    rows = rows[rows["key"].isin(wanted)]
    keep = config.keep(int(rows["rank"].max()) + 1 if len(rows) else 1)
    ranked = {}
    for key, group in rows.groupby("key", sort=False):
        segments = group[["start_s", "end_s", "score"]].to_numpy(dtype=np.float64)
        ranked[key] = RankedMoments.rank(group["video_id"].tolist(), segments, keep=keep)
    own = rows.set_index(["key", "video_id"]).sort_values("rank")
    predictions = []
    for pair in pairs:
        at = (query_key(pair.query), pair.video_id)
        segments = own.loc[[at], ["start_s", "end_s", "score"]].to_numpy() if at in own.index else np.zeros((0, 3))
        predictions.append(Prediction(pair.qid, pair.video_id, segments))
    return queries, ranked, predictions, len(videos)
