"""Two-stage live search (cells by ANN, DRN on the candidates) against DRN on every video: latency, memory, index
build and recall.

    # latency, memory, index build time and size: synthetic libraries with features written directly
    .venv/bin/python benchmarks/live_search.py latency --sizes 1000 10000 100000 --configs paper demo
    # recall of two-stage against exhaustive (corpus R@k,IoU=0.5) on the recurring-descriptions benchmark
    .venv/bin/python benchmarks/live_search.py recall
    # the retrieval stage trained as its own stage (stage 4) or jointly with DRN's stage 1 (same data)
    .venv/bin/python benchmarks/live_search.py training
    # a check at a tiny size (about 2 minutes)
    .venv/bin/python benchmarks/live_search.py latency --sizes 300 --configs demo --queries 5 --exhaustive-sample 100
    # two-stage search whatever the store: the project's store vs one file of one row group, with and without the
    # inputs table (in process, and the CLI end to end)
    .venv/bin/python benchmarks/live_search.py stores --sizes 1000 --configs paper --clips-per-video 94
    .venv/bin/python benchmarks/live_search.py stores --sizes 1000 --configs paper --s3-latency-ms 20  # and on s3
    .venv/bin/python benchmarks/live_search.py stores --sizes 60 --configs demo --queries 3 --cli-runs 1  # a check
    # two-stage search on an index already built (e.g. left by benchmarks/scale.py grounding --keep)
    .venv/bin/python benchmarks/live_search.py existing --db /data/scale/paper-100000/db --candidates 10 20

**latency**: for each config (``paper``: configs/charades_sta.yaml, D 4096, T 32, 38.8 M parameters; ``demo``:
configs/demo.yaml, D 4096, T 16) and library size, a feature store of N videos of 30 s with T clips each (the grid
needs no more; float16) is written directly, then a checkpoint with random weights and a retrieval head
(``--retrieval-dim``; the weights do not change the time), the `cells` table (``run_index_library`` on local Ray
Data: build time, rows, size on disk), and in one process with the model loaded: per-query latency of two-stage
search (``TwoStageSearcher.search``) and of DRN on every video (the in-process path of
``ground_every_video``: read, pool,
score, rank), with the peak resident memory of each phase (Linux VmHWM, reset before each). Above
``--exhaustive-sample`` videos the exhaustive search runs on that many videos and its time is scaled by N / sample
(said in the table). Disk: the store takes N x T x 4096 x 2 bytes (26 GB at 100k videos, paper size); the script
checks the free space first and deletes each store after its size unless ``--keep``.

**recall**: the recurring-descriptions benchmark (``make_recurring_benchmark`` when it exists, else
``make_synthetic_benchmark``, whose colour descriptions also recur across videos), a small DRN with its retrieval
stage trained in this process, cells of the test videos, then every distinct test text ranked against every test
video: corpus R@1 and R@10 at IoU 0.5 and video R@1/R@10 (``drn.corpus``, the conventions of DESIGN.md section 7)
for DRN alone on every video (today's ``--exhaustive``), the same fused score on every video, and two-stage search
at several fusion weights and candidate counts.

**stores**: a store of N videos of 30 s (``--clips-per-video`` float16 clips each; default T) as the project writes
it (one file of 1,000 videos, a row group per chunk) and the same clips rewritten as one Parquet file of one row
group (what other writers produce); each indexed with ``run_index_library`` (cells and the inputs table). For each
store, with the inputs table and without it (the same db with the inputs table dropped: an index built before it,
whose candidates are read from the store): p50/p95 of ``TwoStageSearcher.search`` in process (the cases with the
inputs table all open at once and searched in turn, each text on every case, so that the machine's drift falls on
each alike; those without it one after another), the first search after loading, and the wall time of ``python
-m jobs.search TEXT --live --db D --json`` end to end (``--cli-runs`` runs, median) beside an indexed
``jobs.search`` on the same database (a small collection written into it), with the inputs table's size on disk.
``--s3-latency-ms`` runs it all again with both stores on the test S3 server (moto, started here) behind a proxy
that adds that round trip to every request; the database stays on local disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from common import (  # the benchmarks' folder: shared helpers (moved there unchanged)
    CONFIGS,
    REPO,
    SEARCHES,
    folder_size,
    load_average,
    machine,
    peak_memory_mb,
    percentiles,
    random_checkpoint,
    reset_peak_memory,
    write_store,
)

from drn.checkpoint import save_checkpoint
from drn.config import load_config
from drn.model import DRN, count_parameters
from drn.store import FeatureStore
from moments.index import connect
from moments.index.cells import CellsTable
from moments.index.live_inputs import inputs_table_name
from moments.library import Resources
from moments.library.batches import split_output
from moments.library.cell_indexing import run_index_library
from moments.library.model import encode_query_side, live_query_id
from moments.library.queries import Query
from moments.library.scoring import LibraryScorer
from moments.search.two_stage import TwoStageOptions, TwoStageSearcher


# --------------------------------------------------------------------------------------------------- latency
def exhaustive_search(searcher: TwoStageSearcher, store: FeatureStore, video_ids: list[str], text: str, k: int = 10):
    """DRN on every video of ``video_ids``, in this process with the model loaded (``ground_every_video``'s local path):
    read the clips shard by shard, pool, score, keep each video's top segments, rank across the library."""
    grounder = searcher.model.grounder
    side = encode_query_side(grounder, [Query(live_query_id(text), text)])
    scorer = LibraryScorer(grounder, side, searcher.rule, searcher.labels, top_k=5)
    tables, batch = [], []
    for video in store.iter_videos(video_ids):
        batch.append(video)
        if len(batch) == 64:
            tables.append(split_output(scorer.score(batch))[0])
            batch = []
    if batch:
        tables.append(split_output(scorer.score(batch))[0])
    import pyarrow as pa

    rows = pa.concat_tables(tables)
    return rows.sort_by([("score", "descending"), ("video_id", "ascending")]).slice(0, k)


@dataclass
class LatencyRow:
    config: str
    videos: int
    dim: int
    segments: int
    parameters: int
    cells_per_video: int
    rows: int
    build_s: float
    db_mb: float
    store_gb: float
    two_stage: dict[int, tuple[float, float, float]]  # candidates -> p50 ms, p95 ms, peak MB
    exhaustive_p50_s: float
    exhaustive_p95_s: float
    exhaustive_peak_mb: float
    exhaustive_sample: int
    load_s: float


def timed_two_stage(searcher: TwoStageSearcher, texts: list[str], cells: int, candidates: int
                    ) -> tuple[float, float, float]:
    """p50 and p95 (ms) of two-stage search over ``texts`` with ``candidates``, and the peak memory (MB) meanwhile."""
    options = TwoStageOptions(cells=cells, candidates=candidates)
    reset_peak_memory()
    times = []
    for text in texts:
        began = time.perf_counter()
        searcher.search(text, k=10, options=options)
        times.append(time.perf_counter() - began)
    p50, p95 = percentiles(times)
    return p50 * 1000, p95 * 1000, peak_memory_mb()


def latency_case(name: str, count: int, args: argparse.Namespace, work: Path) -> LatencyRow:
    config = load_config(CONFIGS[name], [f"model.retrieval_dim={args.retrieval_dim}"])
    m = config.model
    case = work / f"{name}-{count}"
    store_path, db, checkpoint = case / "features", case / "db", case / "model.pt"
    need = count * m.num_segments * m.feature_dim * 2 * 1.05 + count * 60 * (args.retrieval_dim * 4 + 64)
    free = shutil.disk_usage(work).free
    if not store_path.exists() and need > free * 0.9:
        raise SystemExit(f"{name} x {count}: needs about {need / 1e9:.1f} GB, {free / 1e9:.1f} GB free under {work}")
    case.mkdir(parents=True, exist_ok=True)
    if not (store_path / "videos").is_dir():
        started = time.perf_counter()
        write_store(store_path, count, m.num_segments, m.feature_dim, seed=count)
        print(f"  store: {count} videos in {time.perf_counter() - started:.0f} s", flush=True)
    random_checkpoint(checkpoint, CONFIGS[name], args.retrieval_dim)
    if db.exists():
        shutil.rmtree(db)
    started = time.perf_counter()
    cpus = os.cpu_count() or 1
    summary = run_index_library(str(checkpoint), str(store_path), str(db),
                                resources=Resources(num_actors=max(1, cpus // 2), cpus_per_actor=min(2, cpus),
                                                    videos_per_batch=256),
                                vector_index_min_rows=args.vector_index_min_rows)
    build_s = time.perf_counter() - started
    print(f"  index: {summary.rows_in_table} cells in {build_s:.0f} s ({', '.join(summary.indices_created)})",
          flush=True)

    started = time.perf_counter()
    searcher = TwoStageSearcher(str(db), options=TwoStageOptions(cells=args.cells))
    texts = [SEARCHES[i % len(SEARCHES)] for i in range(args.queries)]
    searcher.search(texts[0], k=10)  # warm: the first search reads shard footers and loads MiniLM
    load_s = time.perf_counter() - started
    two_stage = {}
    for candidates in args.candidates:
        two_stage[candidates] = timed_two_stage(searcher, texts, args.cells, candidates)
        print(f"  two-stage, {candidates} candidates: p50 {two_stage[candidates][0]:.0f} ms, "
              f"p95 {two_stage[candidates][1]:.0f} ms", flush=True)

    store = FeatureStore(str(store_path))
    sample = store.ok_video_ids()[: min(count, args.exhaustive_sample)]
    exhaustive_search(searcher, store, sample[:8], texts[0])  # warm
    reset_peak_memory()
    times = []
    for text in texts[: args.exhaustive_queries]:
        began = time.perf_counter()
        exhaustive_search(searcher, store, sample, text)
        times.append((time.perf_counter() - began) * count / len(sample))
    exhaustive_peak = peak_memory_mb()
    ex_p50, ex_p95 = percentiles(times)
    row = LatencyRow(name, count, m.feature_dim, m.num_segments, count_parameters(searcher.model.grounder.model),
                     searcher.head.num_cells, summary.rows_in_table, build_s, folder_size(db) / 1e6,
                     folder_size(store_path) / 1e9, two_stage, ex_p50, ex_p95, exhaustive_peak, len(sample), load_s)
    if not args.keep:
        shutil.rmtree(store_path)
    return row


def run_latency(args: argparse.Namespace) -> None:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="live-search-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}; load before {load_average()}; work folder {work} "
          f"({shutil.disk_usage(work).free / 1e9:.0f} GB free)", flush=True)
    rows = []
    for name in args.configs:
        for count in args.sizes:
            print(f"{name} x {count} videos", flush=True)
            rows.append(latency_case(name, count, args, work))
            print(json.dumps(rows[-1].__dict__), flush=True)
    print(f"\nload after {load_average()}; machine: {machine()}\n")
    print(f"Two-stage: {args.cells} cells by ANN, then DRN on the candidate videos, k = 10; {args.queries} queries "
          f"({args.exhaustive_queries} for exhaustive). Exhaustive: DRN on every video in this process; marked * "
          "where measured on a sample and scaled by N / sample. Peak: resident memory of the process (VmHWM).\n")
    print("| config | D | T | params | videos | cells | index build (s) | index on disk (MB) | store (GB) "
          "| candidates | two-stage p50 / p95 (ms) | peak (MB) | exhaustive p50 / p95 (s) | peak (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        mark = "" if r.exhaustive_sample >= r.videos else f" * ({r.exhaustive_sample} videos)"
        for candidates, (p50, p95, peak) in r.two_stage.items():
            print(f"| {r.config} | {r.dim} | {r.segments} | {r.parameters / 1e6:.1f} M | {r.videos:,} | {r.rows:,} "
                  f"| {r.build_s:.0f} | {r.db_mb:.0f} | {r.store_gb:.1f} | {candidates} | {p50:.0f} / {p95:.0f} "
                  f"| {peak:.0f} | {r.exhaustive_p50_s:.1f} / {r.exhaustive_p95_s:.1f}{mark} "
                  f"| {r.exhaustive_peak_mb:.0f} |")
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


def run_existing(args: argparse.Namespace) -> None:
    """Two-stage search on an index that is already built (``--db``: its cells, inputs table and checkpoint), e.g.
    the 100,000-video one that ``benchmarks/scale.py grounding --keep`` leaves: p50/p95 for each candidate count,
    with and without the inputs table, in one process."""
    print(f"machine: {machine()}; load before {load_average()}; index {args.db}", flush=True)
    texts = [SEARCHES[i % len(SEARCHES)] for i in range(args.queries)]
    rows = []
    for with_inputs in (True, False):
        started = time.perf_counter()
        searcher = TwoStageSearcher(args.db, args.checkpoint, args.features, options=TwoStageOptions(cells=args.cells),
                                    use_inputs=with_inputs)
        searcher.search(texts[0], k=10)
        load_s = time.perf_counter() - started
        for candidates in args.candidates:
            p50, p95, peak = timed_two_stage(searcher, texts, args.cells, candidates)
            rows.append((with_inputs, candidates, p50, p95, load_s, peak))
            print(f"  inputs table {'yes' if with_inputs else 'no'}, {candidates} candidates: p50 {p50:.0f} ms, "
                  f"p95 {p95:.0f} ms", flush=True)
        if not args.store_too:
            break
    videos = len(CellsTable(args.db).video_ids())
    print(f"\nload after {load_average()}; machine: {machine()}\n")
    print(f"Two-stage search on {args.db}: {videos:,} videos, {args.cells} cells, k = 10, {args.queries} queries\n")
    print("| inputs table | candidates | p50 (ms) | p95 (ms) | load + first search (s) | peak (MB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for with_inputs, candidates, p50, p95, load_s, peak in rows:
        print(f"| {'yes' if with_inputs else 'no (store read)'} | {candidates} | {p50:.0f} | {p95:.0f} | {load_s:.1f} "
              f"| {peak:.0f} |")


# --------------------------------------------------------------------------------------------------- stores
def one_row_group_copy(source: Path, target: Path) -> Path:
    """The store at ``source`` rewritten as one ``clips/`` file of one row group and one ``videos/`` file."""
    if target.exists():
        shutil.rmtree(target)
    (target / "clips").mkdir(parents=True)
    (target / "videos").mkdir()
    clips = pq.read_table(sorted((source / "clips").glob("*.parquet")))
    pq.write_table(clips, target / "clips" / "all.parquet", row_group_size=clips.num_rows)
    pq.write_table(pq.read_table(sorted((source / "videos").glob("*.parquet"))), target / "videos" / "all.parquet")
    return target


def row_groups(store: Path) -> str:
    files = sorted((store / "clips").glob("*.parquet"))
    return f"{len(files)} file(s), {sum(pq.ParquetFile(f).metadata.num_row_groups for f in files)} row group(s)"


def cli_seconds(db: Path, text: str, runs: int, live: bool = True) -> float:
    """Median wall time of ``python -m jobs.search TEXT [--live] --db D --json`` (a fresh process each run)."""
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jobs.search", text, *(["--live"] if live else []), "--db", str(db),
                        "--json"], cwd=REPO, check=True, capture_output=True)
        times.append(time.perf_counter() - began)
    return float(np.median(times))


def add_search_table(db: Path, queries: int = 200) -> None:
    """A small indexed collection in ``db`` (benchmarks/search.py's queries x 50 segments), so that the same
    database answers an indexed CLI search beside the live one."""
    import search as search_benchmark

    from moments.index import Index

    texts = search_benchmark.query_texts(queries)
    vectors = search_benchmark.query_vectors(texts, np.random.default_rng(2))
    index = Index(db)
    index.write_queries(search_benchmark.synthetic_queries(texts, vectors, 0))
    index.write_segments(search_benchmark.synthetic_chunk(texts, vectors, 0, np.random.default_rng(1)))
    index.ensure_indices()
    index.fill_top_moments()


class S3Stores:
    """The test S3 server (moto, tests/s3_server.py) behind a proxy that adds ``latency_ms`` to every round trip
    (benchmarks/object_store.py), its settings in this process's environment (Ray workers and CLI runs inherit
    them); ``upload`` copies a store folder there."""

    def __init__(self, latency_ms: float) -> None:
        sys.path.insert(0, str(REPO / "tests"))
        from object_store import LatencyProxy
        from s3_server import start_s3_server

        self.server = start_s3_server()
        self.bucket = self.server.new_bucket("live-stores")
        self.proxy = LatencyProxy(self.server.env["AWS_ENDPOINT_URL"], latency_ms)
        os.environ.update({**self.server.env, "AWS_ENDPOINT_URL": self.proxy.endpoint})

    def upload(self, folder: Path, name: str) -> str:
        import pyarrow.fs as pafs

        from drn.store.object_store import filesystem_for

        uri = f"s3://{self.bucket}/{name}"
        fs, path = filesystem_for(uri)
        pafs.copy_files(str(folder), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        return uri

    def stop(self) -> None:
        self.proxy.close()
        self.server.stop()


def stores_case(name: str, count: int, args: argparse.Namespace, work: Path, s3: S3Stores | None) -> list[dict]:
    """Every store of one size indexed, then searched: the cases with the inputs table in turn, one search each per
    text with the order rotated (the machine's drift falls on every case alike), then those without it, one case
    after another (a search there can take a minute)."""
    config = load_config(CONFIGS[name], [f"model.retrieval_dim={args.retrieval_dim}"])
    clips = args.clips_per_video or config.model.num_segments
    case = work / f"stores-{name}-{count}-{clips}"
    own, checkpoint = case / "features", case / "model.pt"
    case.mkdir(parents=True, exist_ok=True)
    if not (own / "videos").is_dir():
        write_store(own, count, clips, config.model.feature_dim, seed=count)
    flat = one_row_group_copy(own, case / "flat")
    random_checkpoint(checkpoint, CONFIGS[name], args.retrieval_dim)
    texts = [SEARCHES[i % len(SEARCHES)] for i in range(args.queries)]
    options = TwoStageOptions(cells=args.cells, candidates=args.candidates)
    cpus = os.cpu_count() or 1
    places = [("local disk", lambda folder: str(folder))]
    if s3 is not None:
        places.append((f"s3 +{args.s3_latency_ms:g} ms",
                       lambda folder: s3.upload(folder, f"{case.name}/{folder.name}")))
    built = []
    for place, put in places:
        for layout, store in (("project's", own), ("one row group", flat)):
            uri = put(store)
            db = case / f"db-{store.name}-{'local' if place == 'local disk' else 's3'}"
            if db.exists():
                shutil.rmtree(db)
            started = time.perf_counter()
            summary = run_index_library(str(checkpoint), uri, str(db),
                                        resources=Resources(num_actors=max(1, cpus // 2),
                                                            cpus_per_actor=min(2, cpus), videos_per_batch=64))
            build_s = time.perf_counter() - started
            add_search_table(db)
            legacy = case / f"{db.name}-no-inputs"  # an index built before the inputs table
            if legacy.exists():
                shutil.rmtree(legacy)
            if args.old_index:
                shutil.copytree(db, legacy)
                connect(str(legacy)).drop_table(inputs_table_name("cells"))
            built.append({"config": name, "videos": count, "clips": clips, "where": place, "store": layout,
                          "layout": row_groups(store), "db": db, "legacy": legacy,
                          "indexed_cli_s": cli_seconds(db, texts[0], args.cli_runs, live=False), "build_s": build_s,
                          "inputs_mb": folder_size(db / f"{inputs_table_name('cells')}.lance") / 1e6,
                          "store_mb": folder_size(store) / 1e6, "inputs_rows": summary.inputs_in_table})
    in_turn = timed_in_turn([one["db"] for one in built], texts, options)
    rows = [{**one, "inputs": True, **measured} for one, measured in zip(built, in_turn, strict=True)]
    if args.old_index:
        rows += [{**one, "inputs": False, **timed_in_turn([one["legacy"]], texts, options)[0]} for one in built]
    for row in rows:
        row["cli_s"] = cli_seconds(row["db"] if row["inputs"] else row["legacy"], texts[0], args.cli_runs)
        print(json.dumps({key: value for key, value in row.items() if key not in ("db", "legacy")}), flush=True)
    if not args.keep:
        shutil.rmtree(case)
    return rows


def timed_in_turn(dbs: list[Path], texts: list[str], options: TwoStageOptions) -> list[dict]:
    """For each database: the first search after opening it (s), then p50/p95 (ms) of ``texts``, each text searched
    on every database in turn, starting one database later each time."""
    searchers, first = [], []
    for db in dbs:
        began = time.perf_counter()
        searchers.append(TwoStageSearcher(str(db), options=options))
        searchers[-1].search(texts[0], k=10)
        first.append(time.perf_counter() - began)
    times: list[list[float]] = [[] for _ in dbs]
    for turn, text in enumerate(texts):
        for step in range(len(dbs)):
            place = (turn + step) % len(dbs)
            began = time.perf_counter()
            searchers[place].search(text, k=10)
            times[place].append(time.perf_counter() - began)
    measured = []
    for first_s, spent in zip(first, times, strict=True):
        p50, p95 = percentiles(spent)
        measured.append({"first_s": first_s, "p50_ms": p50 * 1000, "p95_ms": p95 * 1000})
    return measured


def run_stores(args: argparse.Namespace) -> None:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="live-stores-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    s3 = S3Stores(args.s3_latency_ms) if args.s3_latency_ms is not None else None
    print(f"machine: {machine()}; load before {load_average()}; work folder {work}", flush=True)
    try:
        rows = [row for name in args.configs for count in args.sizes
                for row in stores_case(name, count, args, work, s3)]
    finally:
        if s3 is not None:
            s3.stop()
    print(f"\nload after {load_average()}; machine: {machine()}\n")
    print(f"Two-stage search, {args.cells} cells, {args.candidates} candidates, k = 10, {args.queries} queries; "
          f"CLI: python -m jobs.search TEXT [--live] --db D --json, median of {args.cli_runs} run(s); the database "
          "on local disk, the store where the table says.\n")
    print("| config | videos | clips/video | store on | store | clips files | inputs table | p50 / p95 (ms) "
          "| first search (s) | CLI --live (s) | CLI indexed (s) | --live / indexed | index build (s) "
          "| inputs table (MB) | store (MB) |")
    print("|---|---:|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['videos']:,} | {r['clips']} | {r['where']} | {r['store']} | {r['layout']} "
              f"| {'yes' if r['inputs'] else 'no (store read)'} | {r['p50_ms']:.0f} / {r['p95_ms']:.0f} "
              f"| {r['first_s']:.2f} | {r['cli_s']:.2f} | {r['indexed_cli_s']:.2f} "
              f"| {r['cli_s'] / r['indexed_cli_s']:.1f}x | {r['build_s']:.0f} | {r['inputs_mb']:.1f} "
              f"| {r['store_mb']:.1f} |")
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------------------------------- recall
def make_benchmark(out: Path, videos: int, dim: int, seed: int):
    import drn.datasets.synthetic as synthetic

    maker = getattr(synthetic, "make_recurring_benchmark", None)
    if maker is not None:
        return maker(out, num_videos=videos, feature_dim=dim, seed=seed), "make_recurring_benchmark"
    return synthetic.make_synthetic_benchmark(out, num_videos=videos, feature_dim=dim, seed=seed), \
        "make_synthetic_benchmark"


def train_small(bench, out: Path, overrides: list[str], mode: str = "fit") -> tuple[str, dict]:
    """DRN's three stages and the retrieval stage, in this process. ``mode``:

    * ``fit``: ``drn.training.fit`` (each stage's best validation epoch), then stage 4 (``train_retrieval``);
    * ``stage``: DRN's stages for their fixed epochs (no selection), then stage 4;
    * ``joint``: as ``stage``, but no stage 4: during stage 1 every DRN step is followed by a retrieval step on the
      same batch, with DRN's query encoder trained by both losses.

    Returns the checkpoint and facts about the run (times, test metrics, retrieval video recall on test)."""
    from drn.retrieval_training import RetrievalBatches, retrieval_step, train_retrieval, video_recall
    from drn.training import configure_stage, fit, make_optimizer, stages_from_config, train_stage, train_step, validate
    from drn.training_setup import prepare_training_data

    config = load_config(REPO / "configs" / "synthetic.yaml", overrides)
    data = prepare_training_data(config, bench.features, bench.annotations, "jsonl")
    torch.manual_seed(config.train.seed)
    model = data.new_model()
    stages = stages_from_config(config)
    started = time.perf_counter()
    if mode == "fit":
        fit(model, data.vocab, config, data.loader("train"), data.loader("val"), data.val.pairs, out / "train", stages)
    elif mode == "stage":
        for stage in stages:
            train_stage(model, stage, data.loader("train"), config)
    else:
        first = stages[0]
        optimizer = make_optimizer(configure_stage(model, first), first)
        objective = JointObjective(model)
        joint_optimizer = torch.optim.Adam(list(model.retrieval.parameters()) +
                                           list(model.query_encoder.parameters()), lr=config.retrieval.lr)
        batches = RetrievalBatches(data.train, config)
        generator = torch.Generator().manual_seed(config.train.seed)
        for _ in range(first.epochs):
            for batch in data.loader("train"):
                train_step(model, batch, optimizer, first, config)
                retrieval_step(objective, batches.prepare(batch, generator), joint_optimizer,
                               config.train.grad_clip_norm)
        model.retrieval.trained_epochs.fill_(first.epochs)
        for stage in stages[1:]:
            train_stage(model, stage, data.loader("train"), config)
    drn_s = time.perf_counter() - started
    if mode != "joint":
        train_retrieval(model, data.loader("train"), data.train, data.val, config)
    seconds = time.perf_counter() - started
    model.eval()
    facts = {"train_s": seconds, "drn_s": drn_s, "test": validate(model, data.loader("test"), data.test.pairs, config),
             "video_recall_test": video_recall(model, data.test)}
    path = out / f"{mode}.pt"
    save_checkpoint(path, model, data.vocab, stage=4, metrics={"train_duration_s": data.train_durations()})
    return str(path), facts


class JointObjective(torch.nn.Module):
    """The contrastive loss with gradients into DRN's query encoder (the ``training`` comparison only)."""

    def __init__(self, model: DRN) -> None:
        super().__init__()
        from drn.retrieval import RetrievalObjective

        self.inner = RetrievalObjective(model)

    def forward(self, video, words, word_mask, gt, negatives, extra_video=None):
        from drn.retrieval import contrastive_loss, positive_cells

        inner = self.inner
        queries = inner.head.encode_query(inner.model.encode_query(words, word_mask))
        grids = video if extra_video is None or extra_video.shape[0] == 0 else torch.cat([video, extra_video])
        cells = inner.head.encode_cells(grids)
        config = inner.model.config.retrieval
        positives = positive_cells(gt, inner.spans, config.positive_iou)
        return contrastive_loss(queries, cells, positives, negatives, config.temperature)


def evaluate_corpus(checkpoint: str, bench, work: Path, weights: Sequence[float], candidates: Sequence[int], cells: int,
                    echo: Callable[[str], None] = print) -> list[tuple[str, dict[str, float], float]]:
    """Corpus R@1/R@10 at IoU 0.5 and video R@1/R@10 (``drn.corpus``) of DRN alone on every test video, of the same
    fused score on every video, and of two-stage search, for each fusion weight and candidate count."""
    from drn.corpus import CorpusConfig, RankedMoments, corpus_queries
    from drn.corpus import evaluate_corpus as corpus_metrics
    from drn.datasets import load_split

    store = FeatureStore(bench.features)
    test = load_split("jsonl", bench.annotations, "test", durations=store.durations()).pairs
    videos = sorted({p.video_id for p in test})
    queries = corpus_queries(test)
    config = CorpusConfig(recall_at=(1, 10), ious=(0.5,), video_recall_at=(1, 10))
    keep = config.keep(5)
    db = work / f"db-{Path(checkpoint).stem}"
    if db.exists():
        shutil.rmtree(db)
    run_index_library(checkpoint, bench.features, str(db), videos=videos)
    searcher = TwoStageSearcher(str(db))
    echo(f"  {len(queries)} distinct test texts, {len(videos)} test videos, "
         f"{np.mean([len(q.videos) for q in queries]):.1f} videos per text")
    results = []

    def run(label: str, search: Callable[[str], RankedMoments]) -> None:
        ranked, times = {}, []
        for query in queries:
            began = time.perf_counter()
            ranked[query.key] = search(query.text)
            times.append(time.perf_counter() - began)
        found = corpus_metrics(queries, ranked, len(videos), config)
        metrics = {"R@1,IoU=0.5": found.recall[(1, 0.5)], "R@10,IoU=0.5": found.recall[(10, 0.5)],
                   "video R@1": found.video_recall[1], "video R@10": found.video_recall[10]}
        results.append((label, metrics, float(np.median(times))))
        echo(f"  {label}: {metrics}")

    def moments(table) -> RankedMoments:  # already ranked by the search
        segments = np.column_stack([table.column(c).to_numpy() for c in ("start_s", "end_s", "score")])
        return RankedMoments(table.column("video_id").to_pylist(), segments.reshape(-1, 3))

    run("exhaustive: DRN alone on every video (--exhaustive)",
        lambda text: moments(exhaustive_search(searcher, store, videos, text, k=keep)))
    for weight in weights:
        options = TwoStageOptions(cells=cells, fusion_weight=weight)
        run(f"exhaustive, fused (w = {weight})",
            lambda text, o=options: moments(searcher.reference_search(text, k=keep, options=o)))
        for count in candidates:
            chosen = TwoStageOptions(cells=cells, candidates=count, fusion_weight=weight)
            run(f"two-stage (w = {weight}, {count} candidates)",
                lambda text, o=chosen: moments(searcher.search(text, k=keep, options=o)))
    return results


def prepare_training_bench(args: argparse.Namespace, prefix: str) -> tuple:
    """(work folder, the benchmark, its maker's name, config overrides) for ``recall`` and ``training``."""
    work = Path(args.workdir or tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}; load before {load_average()}", flush=True)
    bench, maker = make_benchmark(work / "bench", args.videos, args.dim, args.seed)
    overrides = [f"model.feature_dim={args.dim}", f"model.retrieval_dim={args.retrieval_dim}",
                 f"retrieval.epochs={args.retrieval_epochs}", f"retrieval.lr={args.retrieval_lr}", *args.set]
    return work, bench, maker, overrides


def run_recall(args: argparse.Namespace) -> None:
    work, bench, maker, overrides = prepare_training_bench(args, "live-recall-bench-")
    checkpoint, facts = train_small(bench, work, overrides)
    print(f"  trained in {facts['train_s']:.0f} s; test R@1,IoU=0.5 {facts['test']['R@1,IoU=0.5']:.1f}; "
          f"retrieval {facts['video_recall_test']}", flush=True)
    results = evaluate_corpus(checkpoint, bench, work, args.fusion_weights, args.candidates, args.cells)
    print(f"\nload after {load_average()}; machine: {machine()}")
    print(f"\n{maker}: {args.videos} videos, D = {args.dim}, seed {args.seed}; two-stage: {args.cells} cells; "
          f"within-video test R@1,IoU=0.5 of DRN {facts['test']['R@1,IoU=0.5']:.1f}\n")
    base = results[0][1]["R@10,IoU=0.5"]
    print("| ranking | corpus R@1,IoU=0.5 | corpus R@10,IoU=0.5 | video R@1 | video R@10 | R@10 vs exhaustive "
          "| median s/query |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, metrics, seconds in results:
        ratio = metrics["R@10,IoU=0.5"] / base if base else float("nan")
        print(f"| {label} | {metrics['R@1,IoU=0.5']:.1f} | {metrics['R@10,IoU=0.5']:.1f} | {metrics['video R@1']:.1f} "
              f"| {metrics['video R@10']:.1f} | {ratio:.2f} | {seconds:.3f} |")


def run_training(args: argparse.Namespace) -> None:
    work, bench, maker, overrides = prepare_training_bench(args, "live-training-bench-")
    table = []
    for joint in (False, True):
        checkpoint, facts = train_small(bench, work, overrides, "joint" if joint else "stage")
        results = evaluate_corpus(checkpoint, bench, work, [args.fusion_weights[0]], args.candidates[:1], args.cells,
                                  echo=lambda line: None)
        two = results[-1][1]
        table.append(("jointly with stage 1 (no stage 4)" if joint else "own stage (stage 4, DRN frozen)", facts,
                      two))
        print(f"  {table[-1][0]}: {facts}, two-stage {two}", flush=True)
    print(f"\nload after {load_average()}; machine: {machine()}\n")
    print(f"{maker}: {args.videos} videos, D = {args.dim}; two-stage at w = {args.fusion_weights[0]}, "
          f"{args.candidates[0]} candidates\n")
    print("| retrieval trained | within-video test R@1,IoU=0.5 | retrieval video R@1 / R@10 (test) "
          "| two-stage corpus R@10,IoU=0.5 | training (s) |")
    print("|---|---:|---:|---:|---:|")
    for label, facts, two in table:
        recall = facts["video_recall_test"]
        print(f"| {label} | {facts['test']['R@1,IoU=0.5']:.1f} | {recall['video R@1']:.1f} / "
              f"{recall['video R@10']:.1f} | {two['R@10,IoU=0.5']:.1f} | {facts['train_s']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    latency = sub.add_parser("latency", help="latency, memory, index build time and size")
    latency.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    latency.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["paper", "demo"])
    latency.add_argument("--queries", type=int, default=40, help="two-stage searches timed per case")
    latency.add_argument("--exhaustive-queries", type=int, default=3, help="exhaustive searches timed per case")
    latency.add_argument("--exhaustive-sample", type=int, default=2000,
                         help="at most this many videos for the exhaustive search (time scaled to the library)")
    latency.add_argument("--keep", action="store_true", help="keep the stores (they are large)")
    stores = sub.add_parser("stores", help="the project's store vs one row group, with and without inputs table")
    stores.add_argument("--sizes", type=int, nargs="+", default=[1000])
    stores.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["paper"])
    stores.add_argument("--clips-per-video", type=int, default=0, help="clips of each 30 s video (0: the grid's T)")
    stores.add_argument("--queries", type=int, default=20, help="searches timed per case")
    stores.add_argument("--cli-runs", type=int, default=3, help="command-line searches timed per case")
    stores.add_argument("--candidates", type=int, default=20, help="candidate videos grounded by DRN")
    stores.add_argument("--keep", action="store_true", help="keep the stores and databases")
    stores.add_argument("--no-old-index", dest="old_index", action="store_false",
                        help="time only the index with the inputs table (not the one without it, which reads the "
                             "store: slow on one row group)")
    stores.add_argument("--s3-latency-ms", type=float, default=None,
                        help="also put both stores on the test S3 server (moto) with this added round trip")
    existing = sub.add_parser("existing", help="two-stage search on an index already built (--db)")
    existing.add_argument("--db", required=True, help="a LanceDB folder with the cells and inputs tables")
    existing.add_argument("--checkpoint", default=None, help="the checkpoint (default: the one the cells record)")
    existing.add_argument("--features", default=None, help="the feature store (default: the one the cells record)")
    existing.add_argument("--candidates", type=int, nargs="+", default=[5, 10, 20])
    existing.add_argument("--queries", type=int, default=40, help="searches timed per candidate count")
    existing.add_argument("--cells", type=int, default=300, help="cells taken by ANN")
    existing.add_argument("--store-too", action="store_true", help="also without the inputs table (store reads)")
    for name, command in (("latency", latency), ("recall", sub.add_parser("recall", help="two-stage vs exhaustive")),
                          ("training", sub.add_parser("training", help="own stage vs joint training")),
                          ("stores", stores)):
        command.add_argument("--workdir", default=None, help="work folder (default: a temporary one, removed)")
        command.add_argument("--retrieval-dim", type=int, default=128 if name in ("latency", "stores") else 64)
        command.add_argument("--cells", type=int, default=300, help="cells taken by ANN")
        if name == "stores":
            continue
        if name == "latency":
            command.add_argument("--candidates", type=int, nargs="+", default=[5, 10, 20],
                                 help="candidate videos grounded by DRN (each timed)")
            command.add_argument("--vector-index-min-rows", type=int, default=50_000)
            continue
        command.add_argument("--candidates", type=int, nargs="+", default=[10, 20],
                             help="candidate videos grounded by DRN (two-stage rows for each)")
        command.add_argument("--videos", type=int, default=600)
        command.add_argument("--dim", type=int, default=64)
        command.add_argument("--seed", type=int, default=0)
        command.add_argument("--retrieval-epochs", type=int, default=10)
        command.add_argument("--retrieval-lr", type=float, default=3e-3)
        command.add_argument("--fusion-weights", type=float, nargs="+",
                             default=[0.8, 0.0, 0.5, 1.0] if name == "recall" else [0.8])
        command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    {"latency": run_latency, "recall": run_recall, "training": run_training, "stores": run_stores,
     "existing": run_existing}[args.command](args)


if __name__ == "__main__":
    main()
