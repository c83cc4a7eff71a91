"""The retrieval stage over a whole library, on Ray Data: every video's cells into the LanceDB `cells` table.

``run_index_library`` (behind ``python -m jobs.index_library``):

1. The driver checks everything before any work: the checkpoint has a trained retrieval stage
   (``drn.retrieval.require_trained_retrieval``), its feature dimension matches the store's, the database is
   writable, and an existing `cells` table was built from the same checkpoint and store (``--overwrite``
   replaces it otherwise).
2. Videos that already have cells are skipped: a killed job resumes there, and a store that gained videos adds
   only theirs.
3. The rest flow through a Ray Data actor pool; each actor holds only the retrieval head (not DRN) and turns
   batches of videos into cell rows: long videos are cut into the grounding windows of the checkpoint
   (``moments.library.windows``), each window is pooled to the grid and encoded (``RetrievalHead.encode_cells``).
4. The driver merges rows in batches (``CellsTable.write``: merge on (video_id, cell), so rewriting is
   harmless), then builds or updates the indices (IVF-PQ once the table is large enough).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from drn.config import DRNConfig
from drn.errors import InputError
from drn.grid import pool_to_grid
from drn.retrieval import RetrievalHead, cells_in_seconds, require_trained_retrieval
from drn.store import FeatureStore, VideoFeatures, absolute_uri
from moments.index.cells import CELLS_TABLE, VECTOR_INDEX_MIN_ROWS, CellsInfo, CellsTable, cell_rows, cells_schema
from moments.index.db import check_db_writable
from moments.library.batches import ERROR_COLUMN, LibraryProgress, write_in_batches
from moments.library.model import LoadedModel, load_model
from moments.library.ray_data import Resources, WindowOptions, load_videos, select_videos, videos_through_actors
from moments.library.windows import WindowRule, cut_windows, window_rule
from pipeline.ray_runtime import start_ray


@dataclass
class IndexSummary(LibraryProgress):
    checkpoint_id: str
    window: str
    rows_in_table: int = 0
    indices_created: list[str] = field(default_factory=list)

    def throughput_line(self) -> str:
        rate = self.videos_done / self.seconds if self.seconds > 0 else 0.0
        return (f"indexed {self.videos_done} videos ({self.rows_written} cells) in {self.seconds:.1f} s: "
                f"{rate:.1f} videos/s")


def head_payload(model: LoadedModel) -> dict[str, Any]:
    """What an actor needs: the config and the retrieval head's weights (not DRN's)."""
    head = model.grounder.model.retrieval
    return {"config": model.config.to_dict(), "state": {k: v.detach().cpu() for k, v in head.state_dict().items()},
            "query_dim": int(model.grounder.model.query_encoder.out_dim)}


def head_from_payload(payload: dict[str, Any]) -> RetrievalHead:
    config = DRNConfig.from_dict(payload["config"], source="index job")
    head = RetrievalHead(config, payload["query_dim"])
    head.load_state_dict(payload["state"])
    return head.eval()


class CellEncoder:
    """Videos -> cell rows (plus failure rows), with the head, the window rule and the table's labels."""

    def __init__(self, head: RetrievalHead, rule: WindowRule, info: CellsInfo, device: str = "cpu",
                 videos_per_pass: int = 64) -> None:
        self.head = head.to(device).eval()
        self.rule = rule
        self.info = info
        self.device = torch.device(device)
        self.videos_per_pass = videos_per_pass

    @torch.no_grad()
    def rows(self, videos: list[VideoFeatures], failures: list[tuple[str, str]] | None = None) -> pa.Table:
        failures = list(failures or [])
        grids, spans, owners = [], [], []
        for video in videos:
            try:
                windows = cut_windows(video, self.rule)
                if not windows:
                    raise ValueError("no clip inside any window")
                video_grids = [pool_to_grid(w.features, self.head.num_segments) for w in windows]
            except Exception as error:  # one bad video never stops the batch
                failures.append((video.video_id, f"{type(error).__name__}: {error}"))
                continue
            grids += video_grids
            spans.append(np.concatenate([cells_in_seconds(self.head.spans, self.head.num_segments,
                                                          w.features.duration_s, w.offset_s) for w in windows]))
            owners.append((video.video_id, len(windows)))
        tables = []
        if grids:
            vectors = []
            for first in range(0, len(grids), self.videos_per_pass):
                batch = torch.from_numpy(np.stack(grids[first:first + self.videos_per_pass])).to(self.device)
                vectors.append(self.head.encode_cells(batch).cpu().numpy())
            cells = np.concatenate(vectors)  # [windows, C, R]
            position = 0
            for (video_id, count), video_spans in zip(owners, spans, strict=True):
                block = cells[position:position + count].reshape(-1, cells.shape[-1])
                position += count
                tables.append(cell_rows(self.info, video_id, video_spans, block))
        table = pa.concat_tables(tables) if tables else cells_schema(self.info).empty_table()
        table = table.append_column(ERROR_COLUMN, pa.nulls(table.num_rows, pa.string()))
        if failures:
            schema = table.schema
            bad = {name: pa.nulls(len(failures), schema.field(name).type) for name in schema.names}
            bad["video_id"] = pa.array([vid for vid, _ in failures], pa.string())
            bad[ERROR_COLUMN] = pa.array([message for _, message in failures], pa.string())
            table = pa.concat_tables([table, pa.table(bad, schema=schema)])
        return table


class CellActor:
    """One Ray Data actor: the retrieval head and the store, loaded once; batches of video ids in, rows out."""

    def __init__(self, payload: Any, features: str, rule: WindowRule, info: CellsInfo, device: str,
                 threads: int) -> None:
        import ray

        payload = ray.get(payload) if isinstance(payload, ray.ObjectRef) else payload
        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.encoder = CellEncoder(head_from_payload(payload), rule, info, device)
        self.store = FeatureStore(features)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        videos, failures = load_videos(self.store, [str(v) for v in batch["video_id"]])
        return self.encoder.rows(videos, failures)


def encoded_batches_ray(model: LoadedModel, features: str, video_ids: list[str], rule: WindowRule, info: CellsInfo,
                        resources: Resources) -> Iterator[pa.Table]:
    import ray

    start_ray()
    dataset = videos_through_actors(CellActor, video_ids, resources, (
        ray.put(head_payload(model)), features, rule, info, resources.device, max(1, int(resources.cpus_per_actor))))
    yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")


def cells_info(model: LoadedModel, checkpoint: str, features: str, rule: WindowRule) -> CellsInfo:
    return CellsInfo(checkpoint_id=model.checkpoint_id, checkpoint=absolute_uri(checkpoint), sha256=model.sha256,
                     features=absolute_uri(features), dim=int(model.grounder.model.retrieval.dim),
                     window=json.dumps([rule.window_s, rule.stride_s, rule.max_whole_s]))


def check_same_build(found: CellsInfo, wanted: CellsInfo, db: str) -> None:
    """InputError when an existing cells table was built from another checkpoint, store or window rule."""
    differences = [f"{name}: {getattr(found, name)!r} in the table vs {getattr(wanted, name)!r} now"
                   for name in ("sha256", "features", "dim", "window") if getattr(found, name) != getattr(wanted, name)]
    if differences:
        raise InputError(f"the cells table was built from checkpoint {found.checkpoint_id} and store "
                         f"{found.features}; it differs ({'; '.join(differences)}). Nothing was changed: pass "
                         "--overwrite to rebuild it, or use another --db or --table", path=db)


@dataclass
class IndexLibraryJob:
    """Everything ``run_index_library`` needs; ``run`` does the work (see the module docstring)."""

    checkpoint: str
    features: str
    db: str
    table: str = CELLS_TABLE
    videos: Any = None  # None (all ok videos), a list, a comma list or a file of ids
    overwrite: bool = False
    windows: WindowOptions = field(default_factory=WindowOptions)
    resources: Resources = field(default_factory=lambda: Resources(videos_per_batch=64))
    write_batch_rows: int = 200_000
    max_videos: int | None = None
    vector_index_min_rows: int = VECTOR_INDEX_MIN_ROWS
    on_write: Callable[[int, int], None] | None = None  # (videos finished, rows written) after each write
    fail_after_writes: int | None = None  # test hook: raise after this many writes (a killed job)

    def run(self) -> IndexSummary:
        self.features = absolute_uri(self.features)
        model = load_model(self.checkpoint)
        require_trained_retrieval(model.grounder.model, self.checkpoint)
        store = FeatureStore(self.features)
        model.grounder.check_features(store.metadata.feature_dim, self.features)
        rule = window_rule(model.config, model.metrics, window_s=self.windows.window_s,
                           stride_s=self.windows.stride_s, max_whole_s=self.windows.max_whole_s)
        info = cells_info(model, self.checkpoint, self.features, rule)
        video_ids = select_videos(store, self.videos)
        check_db_writable(self.db)
        start_ray()  # before LanceDB opens anything: Ray's processes are forked
        table = CellsTable(self.db, self.table, vector_index_min_rows=self.vector_index_min_rows)
        if table.exists and not self.overwrite:
            check_same_build(table.info, info, self.db)
        if not table.exists or self.overwrite:
            table.create(info, overwrite=self.overwrite)
        summary = IndexSummary(model.checkpoint_id, rule.describe(), videos_total=len(video_ids))
        todo = summary.to_do(video_ids, table.video_ids(), self.max_videos)
        started = time.perf_counter()
        if todo:
            self._write_all(table, encoded_batches_ray(model, self.features, todo, rule, info, self.resources),
                            summary)
        summary.indices_created = table.ensure_indices()
        summary.seconds = time.perf_counter() - started
        summary.rows_in_table = table.count()
        return summary

    def _write_all(self, table: CellsTable, batches: Iterable[pa.Table], summary: IndexSummary) -> None:
        write_in_batches(batches, table.write, summary, self.write_batch_rows, self.on_write, self.fail_after_writes)


def run_index_library(checkpoint: str, features: str, db: str, **options: Any) -> IndexSummary:
    """Write every video's cells to the `cells` table at ``db``; ``options`` are the fields of IndexLibraryJob."""
    return IndexLibraryJob(checkpoint, features, db, **options).run()
