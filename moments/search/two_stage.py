"""Two-stage search: a sentence nobody grounded before, answered across the library in a fraction of a second.

1. Encode the sentence once: DRN's query side, then the retrieval stage's query projection (one unit vector).
2. Stage one, retrieval: the ``cells`` nearest cells by ANN in the LanceDB `cells` table (``moments.index.cells``),
   grouped by video; a video's retrieval score is its best cell's cosine; the ``candidates`` best videos go on.
3. Stage two, DRN on the candidates only: their windows' grids are read from the inputs table beside the cells
   (``moments.index.live_inputs``, one read by key for all candidates) and grounded
   (``moments.library.scoring.LibraryScorer.score_grids``, the batch job's code path). An index built before that
   table existed (or a candidate the table lacks) reads the clip features from the feature store instead, by row
   group (``drn.store.lookup``), and cuts and pools them the same way; ``notices`` then says how to add the table.
4. Fuse: ``score = (1 - w) * drn_score + w * (1 + retrieval_score) / 2`` with ``w = fusion_weight``. The retrieval
   score is the video's, so within a video DRN's order is kept and only the order across videos changes.
   Moments are ranked across the library by that score (ties: video id, then rank).

The rows have the fields of indexed search and of ``ground_every_video`` (``result_rank``,
``moments.index.RESULT_COLUMNS`` and the match columns: ``matched_query`` is the text itself, ``calibrated``
whether the checkpoint was trained with negative pairs) plus ``drn_score`` and ``retrieval_score``.
``TwoStageSearcher`` loads the model and the tables once (what a service or a benchmark keeps); the feature store
is opened only when a candidate must be read from it.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from drn.errors import InputError
from drn.retrieval import require_trained_retrieval
from drn.store import FeatureStore
from drn.store.lookup import VideoLookup
from drn.store.object_store import is_uri
from drn.text.sentence import check_spellable
from moments.index.cells import CELLS_TABLE, CellsTable, best_videos
from moments.index.live_inputs import LiveInputsTable, VideoGrids, inputs_table_name
from moments.index.results import empty_result, rank_across_library, top_results
from moments.library.batches import split_output
from moments.library.model import check_queries_encodable, encode_query_side, file_sha256, live_query_id, load_model
from moments.library.queries import Query, QueryCollection
from moments.library.scoring import LibraryScorer, QuerySide, RunLabels
from moments.library.windows import WindowRule
from moments.search.grid_cache import GridCache


class MissingCellsTableError(InputError):
    """The database has no cells table for two-stage search (a command line names the job that builds it)."""


@dataclass(frozen=True)
class TwoStageOptions:
    """The knobs of two-stage search (defaults measured in benchmarks/live_search.py)."""

    cells: int = 300  # cells taken by ANN
    candidates: int = 20  # videos grounded by DRN
    fusion_weight: float = 0.6  # share of the retrieval score in the final score (benchmarks/incomplete.py)
    top_k: int = 5  # segments per candidate video
    nprobes: int = 20  # IVF partitions searched (with a vector index)
    refine_factor: int = 5  # candidates re-scored exactly, per cell asked for (with a vector index)

    def __post_init__(self) -> None:
        if self.cells < 1 or self.candidates < 1 or self.top_k < 1:
            raise InputError("cells, candidates and top_k (segments per video) must be at least 1")
        if not 0.0 <= self.fusion_weight <= 1.0:
            raise InputError(f"fusion_weight must be between 0 and 1, not {self.fusion_weight}")


SCORE_FIELDS = (pa.field("drn_score", pa.float32()), pa.field("retrieval_score", pa.float32()))


def fuse(drn_score: np.ndarray, retrieval_score: np.ndarray, weight: float) -> np.ndarray:
    """The final score: DRN's score and the retrieval cosine mapped to [0, 1], mixed by ``weight``."""
    return (1.0 - weight) * drn_score + weight * (1.0 + retrieval_score) / 2.0


class TwoStageSearcher:
    """The checkpoint named by (or matching) a `cells` table, that table and its inputs table, loaded once.

    ``use_inputs=False`` ignores the inputs table and reads every candidate from the feature store (the path of
    an index built before it; for comparisons). ``notices`` holds one line when search falls back to the store.
    ``grid_cache_mb`` keeps the most recently grounded candidates' grids in memory (``moments.search.grid_cache``;
    the service's searcher does, a one-search CLI does not)."""

    def __init__(self, db: str | os.PathLike, checkpoint: str | None = None, features: str | None = None, *,
                 table: str = CELLS_TABLE, options: TwoStageOptions | None = None, device: str = "cpu",
                 use_inputs: bool = True, grid_cache_mb: float = 0) -> None:
        self.db = os.fspath(db)
        self.options = options or TwoStageOptions()
        sha = _sha_of(checkpoint) if checkpoint is not None else None  # a named checkpoint must exist
        self.cells = CellsTable(self.db, table)
        if not self.cells.exists:
            raise MissingCellsTableError(
                f"there is no '{table}' table for two-stage search: index the library's cells first (the cell "
                "indexing job, jobs.index_library, with the checkpoint and the feature store), or ground the text "
                "against every video", path=self.db)
        info = self.cells.info
        if sha is not None:
            if sha != info.sha256:
                raise InputError(f"the '{table}' table was built with checkpoint {info.checkpoint_id} "
                                 f"({info.checkpoint}), not with this one (sha256 {sha[:12]}); pass that checkpoint, "
                                 "or index the cells again with this one (overwriting the table)",
                                 path=checkpoint)
        else:
            checkpoint = info.checkpoint
            if not is_uri(checkpoint) and not os.path.isfile(checkpoint):
                raise InputError(f"the checkpoint the '{table}' table was built with ({info.checkpoint_id}) is not "
                                 "at its recorded place any more; pass the checkpoint", path=checkpoint)
        self.model = load_model(checkpoint, device=device)
        self.head = require_trained_retrieval(self.model.grounder.model, checkpoint)
        if self.head.dim != info.dim:
            raise InputError(f"the checkpoint's retrieval vectors are {self.head.dim}-d, the table's {info.dim}-d",
                             path=checkpoint)
        self.features = features or info.features
        self.notices: list[str] = []
        self.inputs = self._open_inputs(table) if use_inputs else None
        self._lookup: VideoLookup | None = None  # the feature store, opened when a candidate must be read there
        if self.inputs is None:
            self._store_lookup()  # check the store now: every search will read it
        window_s, stride_s, max_whole_s = info.window_settings
        self.rule = WindowRule(window_s, stride_s, max_whole_s, "the cells table")
        self.labels = RunLabels(f"live-{self.model.checkpoint_id}", self.model.checkpoint_id)
        self._all_cells: tuple[np.ndarray, np.ndarray] | None = None  # every cell vector, read on first use
        self.grid_cache = GridCache(int(grid_cache_mb * 2**20))

    def _open_inputs(self, cells_table: str) -> LiveInputsTable | None:
        """The inputs table when it fits this build; else None, with a notice that says how to (re)build it."""
        name = inputs_table_name(cells_table)
        inputs = LiveInputsTable(self.db, name)
        info = self.cells.info
        rebuild = shlex.join(["python", "-m", "jobs.index_library", "--checkpoint", info.checkpoint, "--features",
                              info.features, "--db", self.db, *([] if cells_table == CELLS_TABLE else
                                                                 ["--table", cells_table])])
        if not inputs.exists:
            self.notices.append(f"this index has no '{name}' table, so live search reads each candidate video from "
                                f"the feature store (slow for large row groups or object storage); run {rebuild} "
                                "to add it (the cells are kept)")
            return None
        found, grounder = inputs.info, self.model.grounder
        if (found.cells.sha256, found.cells.window) != (info.sha256, info.window) or \
                found.num_segments != grounder.num_segments:
            self.notices.append(f"the '{name}' table was built with another checkpoint or window rule than the "
                                f"'{cells_table}' table, so live search reads the feature store; run {rebuild} "
                                "--overwrite to rebuild both")
            return None
        grounder.check_features(found.feature_dim, f"{self.db} (table {name})")
        return inputs

    def _store_lookup(self) -> VideoLookup:
        if self._lookup is None:
            store = FeatureStore(self.features)
            self.model.grounder.check_features(store.metadata.feature_dim, self.features)
            self._lookup = VideoLookup(store)
        return self._lookup

    def search(self, text: str, k: int = 10, *, min_score: float | None = None,
               options: TwoStageOptions | None = None, video_id: str | None = None) -> pa.Table:
        """The ``k`` best moments for ``text`` across the library, in two stages (see the module docstring); with
        ``video_id``, that video's alone: it is grounded whether or not retrieval would pick it (one DRN pass),
        its retrieval score the exact best cosine of its cells. A video without cells is an InputError."""
        options = options or self.options
        query, side, vector = self._encode(text, k)
        if video_id is not None:
            similarity = self.cells.video_similarity(vector, video_id)
            if similarity is None:
                raise InputError(f"video {video_id!r} has no cells in the '{self.cells.name}' table: it is not in "
                                 "the library that jobs.index_library indexed", path=self.db)
            return self._ground_candidates(query, side, {video_id: similarity}, k, min_score, options)
        hits = self.cells.nearest(vector, options.cells, nprobes=options.nprobes, refine_factor=options.refine_factor)
        return self._ground_candidates(query, side, best_videos(hits, options.candidates), k, min_score, options)

    def reference_search(self, text: str, k: int = 10, *, min_score: float | None = None,
                         options: TwoStageOptions | None = None) -> pa.Table:
        """What two-stage search approximates: every video of the table with its exact best-cell cosine, DRN on
        every video, the same fusion (the reference of benchmarks/live_search.py; slow on large libraries)."""
        options = options or self.options
        query, side, vector = self._encode(text, k)
        return self._ground_candidates(query, side, self.exact_video_scores(vector), k, min_score, options)

    def exact_video_scores(self, vector: np.ndarray) -> dict[str, float]:
        """``video_id -> best cell cosine`` of every video of the table, exactly (all vectors, read once)."""
        if self._all_cells is None:
            table = self.cells.table.to_arrow().select(["video_id", "vector"])
            vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1)
            self._all_cells = (table.column("video_id").to_numpy(zero_copy_only=False), vectors)
        video_ids, vectors = self._all_cells
        scores = pa.table({"video_id": video_ids, "similarity": vectors @ np.asarray(vector, dtype=np.float32)})
        return best_videos(scores, len(scores))

    def _encode(self, text: str, k: int) -> tuple[Query, QuerySide, np.ndarray]:
        """The query, its encoded side and its retrieval vector; InputError for a text the model cannot read."""
        if k < 1:
            raise InputError(f"k must be at least 1, not {k}")
        check_spellable(text)
        query = Query(live_query_id(text), " ".join(text.split()))
        check_queries_encodable(self.model.grounder, QueryCollection("the query text", [query]))
        side = encode_query_side(self.model.grounder, [query])
        with torch.no_grad():
            vector = self.head.encode_query(side.encoded.features)[0].cpu().numpy()
        return query, side, vector

    def _ground_candidates(self, query: Query, side: QuerySide, candidates: dict[str, float], k: int,
                           min_score: float | None, options: TwoStageOptions) -> pa.Table:
        """DRN on the candidate videos, fused with their retrieval scores, ranked across them."""
        if not candidates:
            return empty_result(SCORE_FIELDS)
        scorer = LibraryScorer(self.model.grounder, side, self.rule, self.labels, top_k=options.top_k)
        videos, failures = self.candidate_grids(list(candidates), scorer)
        if not videos:
            raise InputError(f"no candidate video could be read ({failures[0][1]})", path=self.features)
        rows, _ = split_output(scorer.score_grids(videos))
        retrieval = np.array([candidates[v] for v in rows.column("video_id").to_pylist()], dtype=np.float64)
        drn = rows.column("score").to_numpy().astype(np.float64)
        rows = rows.set_column(rows.schema.get_field_index("score"), "score",
                               pa.array(fuse(drn, retrieval, options.fusion_weight).astype(np.float32)))
        rows = rows.append_column("drn_score", pa.array(drn.astype(np.float32)))
        rows = rows.append_column("retrieval_score", pa.array(retrieval.astype(np.float32)))
        return top_results(rank_across_library(rows), k, text=query.text,
                           calibrated=self.model.negatives_per_positive > 0, min_score=min_score,
                           extra=[field.name for field in SCORE_FIELDS])

    def candidate_grids(self, video_ids: list[str], scorer: LibraryScorer
                        ) -> tuple[list[VideoGrids], list[tuple[str, str]]]:
        """The candidates' windows and grids: from the inputs table (one read), the rest from the feature store
        (cut and pooled as ``scorer`` does); ``(video_id, error)`` for those that cannot be had."""
        found = self.grid_cache.take(video_ids)
        unread = [vid for vid in video_ids if vid not in found]
        found.update(self.inputs.read(unread) if self.inputs is not None and unread else {})
        missing = [vid for vid in video_ids if vid not in found]
        failures: list[tuple[str, str]] = []
        if missing:
            try:
                videos, failures = self._store_lookup().load(missing)
            except InputError as error:  # the store is gone or unreadable: those candidates fail, not the search
                videos, failures = [], [(vid, str(error)) for vid in missing]
            for video in videos:
                try:
                    found[video.video_id] = scorer.prepare(video)
                except Exception as error:  # one bad video never stops the search
                    failures.append((video.video_id, f"{type(error).__name__}: {error}"))
        videos = [found[vid] for vid in video_ids if vid in found]
        self.grid_cache.keep(videos)
        return videos, failures


def _sha_of(checkpoint: str) -> str:
    if not os.path.isfile(checkpoint):
        raise InputError("checkpoint not found (two-stage search reads a local checkpoint file)", path=checkpoint)
    return file_sha256(checkpoint)
