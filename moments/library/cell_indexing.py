"""The retrieval stage over a whole library, on Ray Data: every video's cells into the LanceDB `cells` table, and
the grids DRN grounds them from into the inputs table beside it (``moments.index.live_inputs``).

``run_index_library`` (behind ``python -m jobs.index_library``):

1. The driver checks everything before any work: the checkpoint has a trained retrieval stage
   (``drn.retrieval.require_trained_retrieval``), its feature dimension matches the store's, the database is
   writable, and existing `cells` and inputs tables were built from the same checkpoint, store and window rule
   (``--overwrite`` replaces them otherwise).
2. Videos that already have their cells and their inputs are skipped: a killed job resumes there, a store that
   gained videos adds only theirs, and an index built before the inputs table existed gets only that table
   (the store is read and pooled again, the cells are neither encoded nor written again).
3. The rest flow through a Ray Data actor pool; each actor holds only the retrieval head (not DRN) and turns
   batches of videos into rows: long videos are cut into the grounding windows of the checkpoint
   (``moments.library.windows``), each window is pooled to the grid (``moments.library.scoring.window_grids``,
   what live search's DRN stage grounds) and encoded (``RetrievalHead.encode_cells``). One output table holds
   both kinds of row, told apart by ``part`` (``cells`` or ``inputs``).
4. The driver writes rows in batches, a video's rows of each table in one commit: the inputs first
   (``LiveInputsTable.write``), then the cells (``CellsTable.write``: merge on (video_id, cell), so rewriting is
   harmless); then it builds or updates the indices (B-trees on video_id; IVF-PQ once the cells are many).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from drn.config import DRNConfig
from drn.errors import InputError
from drn.retrieval import RetrievalHead, cells_in_seconds, require_trained_retrieval
from drn.store import FeatureStore, VideoFeatures, absolute_uri
from moments.index.cells import CELLS_TABLE, VECTOR_INDEX_MIN_ROWS, CellsInfo, CellsTable, cell_rows, cells_schema
from moments.index.db import check_db_writable
from moments.index.live_inputs import (
    INPUT_DTYPES,
    InputsInfo,
    LiveInputsTable,
    VideoGrids,
    input_rows,
    inputs_schema,
    inputs_table_name,
)
from moments.library.batches import ERROR_COLUMN, LibraryProgress, write_in_batches
from moments.library.model import LoadedModel, load_model
from moments.library.ray_data import Resources, WindowOptions, load_videos, select_videos, videos_through_actors
from moments.library.scoring import window_grids
from moments.library.windows import WindowRule, window_rule
from pipeline.ray_runtime import start_ray

PART_COLUMN = "part"  # which table an output row goes to: "cells" or "inputs"
INPUTS_WRITE_BYTES = 256 << 20  # grids the driver holds before it writes (bounds its memory)


@dataclass
class IndexSummary(LibraryProgress):
    checkpoint_id: str
    window: str
    rows_in_table: int = 0
    indices_created: list[str] = field(default_factory=list)
    inputs_table: str | None = None  # None: no inputs table (--no-inputs)
    inputs_written: int = 0  # rows (windows) written to the inputs table
    inputs_in_table: int = 0

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
    """Videos -> cell rows and input rows (plus failure rows), with the head, the window rule and the labels.

    ``info`` labels the cell rows and ``inputs`` the input rows; with ``cells`` False no cell is encoded (only the
    inputs are wanted), with ``inputs`` None no input row is made."""

    def __init__(self, head: RetrievalHead, rule: WindowRule, info: CellsInfo, device: str = "cpu",
                 videos_per_pass: int = 64, *, inputs: InputsInfo | None = None, cells: bool = True) -> None:
        self.head = head.to(device).eval()
        self.rule = rule
        self.info = info
        self.inputs = inputs
        self.cells = cells
        self.device = torch.device(device)
        self.videos_per_pass = videos_per_pass

    @torch.no_grad()
    def rows(self, videos: list[VideoFeatures], failures: list[tuple[str, str]] | None = None) -> pa.Table:
        failures = list(failures or [])
        prepared: list[VideoGrids] = []
        for video in videos:
            try:
                prepared.append(window_grids(video, self.rule, self.head.num_segments))
            except Exception as error:  # one bad video never stops the batch
                failures.append((video.video_id, f"{type(error).__name__}: {error}"))
        tables = [_tagged(self._cell_rows(prepared) if self.cells else cells_schema(self.info).empty_table(), "cells")]
        if self.inputs is not None:
            tables.append(_tagged(_as_output(input_rows(self.inputs, prepared)), "inputs"))
        table = pa.concat_tables(tables, promote_options="default")
        table = table.append_column(ERROR_COLUMN, pa.nulls(table.num_rows, pa.string()))
        if failures:
            schema = table.schema
            bad = {name: pa.nulls(len(failures), schema.field(name).type) for name in schema.names}
            bad["video_id"] = pa.array([vid for vid, _ in failures], pa.string())
            bad[ERROR_COLUMN] = pa.array([message for _, message in failures], pa.string())
            table = pa.concat_tables([table, pa.table(bad, schema=schema)])
        return table

    def _cell_rows(self, videos: list[VideoGrids]) -> pa.Table:
        if not videos:
            return cells_schema(self.info).empty_table()
        grids = np.concatenate([v.grids for v in videos])
        vectors = []
        for first in range(0, len(grids), self.videos_per_pass):
            batch = torch.from_numpy(np.ascontiguousarray(grids[first:first + self.videos_per_pass])).to(self.device)
            vectors.append(self.head.encode_cells(batch).cpu().numpy())
        cells = np.concatenate(vectors)  # [windows, C, R]
        tables, position = [], 0
        for video in videos:
            spans = np.concatenate([cells_in_seconds(self.head.spans, self.head.num_segments, duration, offset)
                                    for offset, duration in zip(video.offsets_s, video.durations_s, strict=True)])
            block = cells[position:position + video.num_windows].reshape(-1, cells.shape[-1])
            position += video.num_windows
            tables.append(cell_rows(self.info, video.video_id, spans, block))
        return pa.concat_tables(tables)


def _tagged(rows: pa.Table, part: str) -> pa.Table:
    return rows.append_column(PART_COLUMN, pa.array([part] * rows.num_rows, pa.string()))


def _as_output(rows: pa.Table) -> pa.Table:
    """Input rows with a variable-length grid column: a null grid (a cell row's) then costs nothing."""
    grid = rows.column("grid")
    value = grid.type.value_type
    return rows.set_column(rows.schema.get_field_index("grid"), "grid", grid.cast(pa.list_(value)))


def split_parts(rows: pa.Table, cells: CellsInfo, inputs: InputsInfo | None) -> tuple[pa.Table, pa.Table | None]:
    """An actor's rows (failures removed) as (cell rows, input rows) in their tables' schemas."""
    part = rows.column(PART_COLUMN)
    cell_schema = cells_schema(cells)
    cell_part = rows.filter(pc.equal(part, "cells")).select(cell_schema.names).cast(cell_schema)
    if inputs is None:
        return cell_part, None
    schema = inputs_schema(inputs)
    input_part = rows.filter(pc.equal(part, "inputs")).select(schema.names)
    grid = input_part.column("grid").combine_chunks()
    fixed = pa.FixedSizeListArray.from_arrays(grid.flatten(), schema.field("grid").type.list_size)
    input_part = input_part.set_column(schema.get_field_index("grid"), "grid", fixed)
    return cell_part, input_part.cast(schema)


class CellActor:
    """One Ray Data actor: the retrieval head and the store, loaded once; batches of video ids in, rows out."""

    def __init__(self, payload: Any, features: str, rule: WindowRule, info: CellsInfo, device: str,
                 threads: int, inputs: InputsInfo | None = None, cells: bool = True) -> None:
        import ray

        payload = ray.get(payload) if isinstance(payload, ray.ObjectRef) else payload
        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.encoder = CellEncoder(head_from_payload(payload), rule, info, device, inputs=inputs, cells=cells)
        self.store = FeatureStore(features)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        videos, failures = load_videos(self.store, [str(v) for v in batch["video_id"]])
        return self.encoder.rows(videos, failures)


def encoded_batches_ray(model: LoadedModel, features: str, video_ids: list[str], rule: WindowRule, info: CellsInfo,
                        resources: Resources, inputs: InputsInfo | None = None,
                        cells: bool = True) -> Iterator[pa.Table]:
    import ray

    start_ray()
    dataset = videos_through_actors(CellActor, video_ids, resources, (
        ray.put(head_payload(model)), features, rule, info, resources.device, max(1, int(resources.cpus_per_actor)),
        inputs, cells))
    yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")


def cells_info(model: LoadedModel, checkpoint: str, features: str, rule: WindowRule) -> CellsInfo:
    return CellsInfo(checkpoint_id=model.checkpoint_id, checkpoint=absolute_uri(checkpoint), sha256=model.sha256,
                     features=absolute_uri(features), dim=int(model.grounder.model.retrieval.dim),
                     window=json.dumps([rule.window_s, rule.stride_s, rule.max_whole_s]))


def inputs_info(model: LoadedModel, cells: CellsInfo, store: FeatureStore, dtype: str | None) -> InputsInfo:
    """The inputs table's labels: the cells' build, the model's grid and the grids' dtype (the store's by
    default: a grid is a max-pool of stored values, so storing it in their dtype loses nothing)."""
    if dtype is not None and dtype not in INPUT_DTYPES:
        raise InputError(f"--inputs-dtype must be one of {', '.join(INPUT_DTYPES)}, not {dtype!r}")
    return InputsInfo(cells, model.grounder.num_segments, store.metadata.feature_dim, dtype or store.metadata.dtype)


def check_same_build(found: CellsInfo, wanted: CellsInfo, db: str, table: str = "cells") -> None:
    """InputError when an existing cells (or inputs) table was built from another checkpoint, store or window rule."""
    differences = [f"{name}: {getattr(found, name)!r} in the table vs {getattr(wanted, name)!r} now"
                   for name in ("sha256", "features", "dim", "window") if getattr(found, name) != getattr(wanted, name)]
    if differences:
        raise InputError(f"the {table} table was built from checkpoint {found.checkpoint_id} and store "
                         f"{found.features}; it differs ({'; '.join(differences)}). Nothing was changed: pass "
                         "--overwrite to rebuild it, or use another --db or --table", path=db)


def check_same_inputs(found: InputsInfo, wanted: InputsInfo, db: str, explicit_dtype: bool) -> InputsInfo:
    """The inputs table's info to write with: InputError when it was built otherwise (another build, grid or an
    explicitly different dtype); without an explicit dtype the table's own is kept."""
    check_same_build(found.cells, wanted.cells, db, "inputs")
    wanted = wanted if explicit_dtype else InputsInfo(wanted.cells, wanted.num_segments, wanted.feature_dim,
                                                      found.dtype)
    differences = [f"{name}: {getattr(found, name)!r} in the table vs {getattr(wanted, name)!r} now"
                   for name in ("num_segments", "feature_dim", "dtype")
                   if getattr(found, name) != getattr(wanted, name)]
    if differences:
        raise InputError(f"the inputs table holds other grids ({'; '.join(differences)}). Nothing was changed: "
                         "pass --overwrite to rebuild it", path=db)
    return found


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
    inputs: bool = True  # also write the inputs table (DRN's grids, for live search without the store)
    inputs_dtype: str | None = None  # float16 or float32; None: the store's dtype (lossless)
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
        wanted_inputs = inputs_info(model, info, store, self.inputs_dtype) if self.inputs else None
        video_ids = select_videos(store, self.videos)
        check_db_writable(self.db)
        start_ray()  # before LanceDB opens anything: Ray's processes are forked
        table = CellsTable(self.db, self.table, vector_index_min_rows=self.vector_index_min_rows)
        inputs = LiveInputsTable(self.db, inputs_table_name(self.table)) if self.inputs else None
        if not self.overwrite:  # check both before changing either
            if table.exists:
                check_same_build(table.info, info, self.db)
            if inputs is not None and inputs.exists:
                wanted_inputs = check_same_inputs(inputs.info, wanted_inputs, self.db, self.inputs_dtype is not None)
        if not table.exists or self.overwrite:
            table.create(info, overwrite=self.overwrite)
        if inputs is not None and (not inputs.exists or self.overwrite):
            inputs.create(wanted_inputs, overwrite=self.overwrite)
        summary = IndexSummary(model.checkpoint_id, rule.describe(), videos_total=len(video_ids),
                               inputs_table=None if inputs is None else inputs.name)
        have_cells = table.video_ids()
        have_inputs = inputs.video_ids() if inputs is not None else None
        done = have_cells if have_inputs is None else have_cells & have_inputs
        todo = summary.to_do(video_ids, done, self.max_videos)
        started = time.perf_counter()
        if todo:
            batches = encoded_batches_ray(model, self.features, todo, rule, info, self.resources, wanted_inputs,
                                          cells=any(vid not in have_cells for vid in todo))
            self._write_all(table, inputs, batches, summary, have_cells, have_inputs,
                            int(model.grounder.model.retrieval.num_cells))
        if inputs is not None:
            summary.indices_created += inputs.ensure_index()
            summary.inputs_in_table = inputs.count()
        summary.indices_created = table.ensure_indices() + summary.indices_created
        summary.seconds = time.perf_counter() - started
        summary.rows_in_table = table.count()
        return summary

    def _write_all(self, table: CellsTable, inputs: LiveInputsTable | None, batches: Iterable[pa.Table],
                   summary: IndexSummary, have_cells: set[str], have_inputs: set[str] | None,
                   cells_per_window: int) -> None:
        """Each write: the new videos' inputs (one commit), then their cells (one commit). Rows of a video that a
        table already holds are dropped, so a rerun writes only what is missing."""
        grids = inputs.info if inputs is not None else None
        held = {"cells": pa.array(sorted(have_cells), pa.string()),
                "inputs": pa.array(sorted(have_inputs or ()), pa.string())}

        def keep(rows: pa.Table) -> pa.Table:
            part, ids = rows.column(PART_COLUMN), rows.column("video_id")
            drop = [pc.and_(pc.equal(part, name), pc.is_in(ids, value_set=values))
                    for name, values in held.items() if len(values)]
            return rows if not drop else rows.filter(pc.invert(drop[0] if len(drop) == 1 else pc.or_(*drop)))

        def write(rows: pa.Table) -> int:
            cell_part, input_part = split_parts(rows, table.info, grids)
            if inputs is not None and input_part is not None:
                summary.inputs_written += inputs.write(input_part)
            return table.write(cell_part)

        batch_rows = self.write_batch_rows
        if grids is not None:  # bound the grids the driver holds (about INPUTS_WRITE_BYTES): windows x (cells + 1)
            videos = max(1, INPUTS_WRITE_BYTES // grids.grid_bytes)
            batch_rows = min(batch_rows, videos * (cells_per_window + 1))
        write_in_batches(batches, write, summary, batch_rows, self.on_write, self.fail_after_writes, keep=keep)


def run_index_library(checkpoint: str, features: str, db: str, **options: Any) -> IndexSummary:
    """Write every video's cells to the `cells` table at ``db`` and their grids to the inputs table beside it;
    ``options`` are the fields of IndexLibraryJob."""
    return IndexLibraryJob(checkpoint, features, db, **options).run()
