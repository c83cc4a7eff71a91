"""Dataset scale: candidate-driven against exhaustive batch grounding, and search latency against index size.

    # grounding: libraries of 10,000 and 100,000 videos at paper and demo size, collections of 1,000 and 10,000
    # queries (the paper-size store of 100,000 videos takes 26 GB: give --workdir a disk that holds it)
    .venv/bin/python benchmarks/scale.py grounding --sizes 10000 100000 --configs paper demo \
        --queries 1000 10000 --candidates 20 --keep-per-query 100 --exhaustive-sample 200 --workdir /data/scale
    # search latency on indices of 1 M and 10 M segments
    .venv/bin/python benchmarks/scale.py search --segments 1000000 10000000
    # smoke runs (a few minutes on 2 cores)
    .venv/bin/python benchmarks/scale.py grounding --sizes 50 --configs demo --queries 20 --exhaustive-sample 20
    .venv/bin/python benchmarks/scale.py search --segments 20000 --rounds 1

**grounding**: for each config (``paper``: configs/charades_sta.yaml, D 4096, T 32; ``demo``: configs/demo.yaml,
D 4096, T 16) and library size, a feature store of N videos of 30 s with T random float16 clips each is written
directly (``common.write_store``), with a checkpoint of random weights and a retrieval head marked trained
(``common.random_checkpoint``: the weights do not change the time). The library's `cells` table is built
(``run_index_library``), then for each collection size (template queries, all distinct) the batch job
(``moments.library.GroundingJob``) runs candidate-driven (``mode="candidates"``, each N of ``--candidates``, each
M of ``--keep-per-query``) and exhaustive (``mode="exhaustive"``, each M) in the same run. Each job runs in a
child process of its own with its own local Ray (as benchmarks/ground.py does); a sampler thread reads the peak
resident memory of the driver and of its Ray workers. Reported: pairs scored, wall time of the job (query
encoding, candidate picking, grounding, writing, library ranks, pruning to M, indices), rows written and kept,
the index on disk (every table of the database but `cells`), and peak memory. With random weights every query's
retrieval vector is nearly the same (mean pairwise cosine 0.999 over 1,000 template queries), so every query picks
the same few hub videos. By default the benchmark centres them (``spread_retrieval``: the mean query vector of the
templates is taken from the last bias of the query projection, mean cosine about 0), so the queries spread over the
library as a trained stage's would and the cost of reading many distinct videos is measured; ``--hub-queries``
keeps the raw random head (the earlier runs). The "videos grounded" column says how many videos a run touched.

Exhaustive grounding above ``--exhaustive-sample`` videos runs on that many videos (the first of the store) and
its pairs and grounding time are scaled by N / sample (marked *; the wall time is the rest of the job as measured
plus the scaled grounding time); its rows and index size are those of the sample (with M moments kept per query
they are already bounded by queries x M once sample x top-k >= M).

**search**: in-process ``Index.search`` (embed the text, find the stored queries in the `queries` table, read
their segments through the scalar indices) on synthetic indices of the given numbers of segments: S / M distinct
template queries (``--rows-per-query`` M, default 100: a run with ``--keep-per-query 100``), each with M rows (M/5
videos x 5 segments, random scores, library ranks as ``Index.update_library_ranks`` computes them). Query
embeddings: the MiniLM embedding of each text without its subject, jittered (``benchmarks/search.py``). The
segments are appended in large chunks (unique keys by construction), then the indices are built (scalar, full
text and IVF-PQ on the queries), and each query's ``top_moments`` are written as ``Index.update_library_ranks``
writes them. Searches: 40 paraphrases that share few words with the templates, p50/p95, with the sentence
embedding cached (warm: each text was searched before) and not (cold: the cache emptied before each search),
beside the floor: a bare LanceDB nearest-neighbour query on the same queries table with the same vector.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' folder (also when imported)

from common import (  # noqa: E402
    CONFIGS,
    REPO,
    folder_size,
    load_average,
    machine,
    percentiles,
    random_checkpoint,
    write_store,
)
from search import ACTIONS, PLACES, SUBJECTS, query_vectors  # noqa: E402
from search import SEARCHES as PARAPHRASES  # noqa: E402

from drn.config import load_config  # noqa: E402
from drn.store import FeatureStore  # noqa: E402

TIMES = ["", "in the morning", "at night", "in the afternoon", "in the evening"]
CELLS_DIR = "cells.lance"
INPUTS_DIR = "cells_inputs.lance"


# --------------------------------------------------------------------------------------------------- queries
def template_texts(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct queries "subject action place [time]", in a fixed random order (at most 100,000)."""
    texts = [" ".join(part for part in (s, a, p, t) if part)
             for t in TIMES for p in PLACES for a in ACTIONS for s in SUBJECTS]
    if count > len(texts):
        raise SystemExit(f"at most {len(texts):,} distinct template queries, not {count:,}")
    order = np.random.default_rng(seed).permutation(len(texts))[:count]
    return [texts[i] for i in order]


def write_queries(path: Path, count: int) -> None:
    path.write_text("".join(text + "\n" for text in template_texts(count)))


# --------------------------------------------------------------------------------------------------- children
def run_child(task: dict[str, Any]) -> dict[str, Any]:
    """Run one task (``index`` or ``ground``) in a fresh process with its own local Ray; its report."""
    result = subprocess.run([sys.executable, __file__, "_child"], input=json.dumps(task), cwd=REPO,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if result.returncode != 0:
        raise RuntimeError(f"{task['kind']} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def child(task: dict[str, Any]) -> dict[str, Any]:
    """In the child process: the task under a peak-memory sampler (driver, and the Ray workers it started)."""
    import ray
    import torch
    from rss_sampler import RssSampler

    from moments.library import GroundingJob, Resources, run_index_library

    cpus = os.cpu_count() or 1
    torch.set_num_threads(cpus)
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             logging_level="warning")
    ray.data.DataContext.get_current().enable_progress_bars = False
    actors = max(1, min(task["actors"], cpus))
    resources = Resources(num_actors=actors, cpus_per_actor=max(1, cpus // actors),
                          videos_per_batch=task["videos_per_batch"], pair_batch_size=task["pair_batch_size"])
    sampler = RssSampler(every_s=0.2)
    sampler.start()
    started = time.perf_counter()
    if task["kind"] == "index":
        summary = run_index_library(task["checkpoint"], task["features"], task["db"], resources=resources,
                                    vector_index_min_rows=task["vector_index_min_rows"])
        report: dict[str, Any] = {"rows": summary.rows_in_table, "videos": summary.videos_done}
    else:
        job = GroundingJob(task["checkpoint"], task["features"], task["queries"], task["db"], mode=task["mode"],
                           candidates=task["candidates"], keep_per_query=task["keep_per_query"],
                           videos=task["videos"], resources=resources, top_k=task["top_k"])
        summary = job.run()
        report = {"mode": summary.mode, "pairs": summary.pairs_scored, "grounding_s": summary.seconds,
                  "rows_written": summary.rows_written, "rows_kept": summary.rows_in_run,
                  "videos": summary.videos_done, "videos_unpicked": summary.videos_unpicked,
                  "failed": summary.videos_failed}
    report["wall_s"] = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    ray.shutdown()
    report.update(driver_peak_mb=sampler.driver_peak / 2**20, workers_peak_mb=sampler.workers_peak / 2**20)
    return report


# --------------------------------------------------------------------------------------------------- grounding
@dataclass
class GroundingRow:
    config: str
    dim: int
    segments: int
    videos: int
    queries: int
    mode: str
    candidates: int  # N (0: every video)
    keep: int  # M
    sample: int  # videos given to the job (exhaustive on a sample: fewer than ``videos``)
    grounded: int  # videos the job grounded (candidate mode: those some query picked)
    pairs: float  # scaled to the library where sampled
    wall_s: float  # scaled to the library where sampled
    grounding_s: float
    rows_written: int
    rows_kept: int
    index_mb: float
    driver_peak_mb: float
    workers_peak_mb: float

    @property
    def scaled(self) -> bool:
        return self.sample < self.videos


def tables_size(db: Path, leave_out: tuple[str, ...] = (CELLS_DIR, INPUTS_DIR)) -> int:
    """Bytes of every table of a LanceDB folder but ``leave_out`` (the cells and their inputs)."""
    if not db.is_dir():
        return 0
    return sum(folder_size(entry) if entry.is_dir() else entry.stat().st_size
               for entry in db.iterdir() if entry.name not in leave_out)


def clear_tables(db: Path, leave_out: tuple[str, ...] = (CELLS_DIR, INPUTS_DIR)) -> None:
    """Delete every table of a LanceDB folder but ``leave_out`` (between runs; no process has it open): the cells
    and their inputs table stay, so that ``--keep`` leaves an index that live search can use."""
    if db.is_dir():
        for entry in db.iterdir():
            if entry.name in leave_out:
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def grounding_case(name: str, count: int, args: argparse.Namespace, work: Path) -> tuple[list[GroundingRow], dict]:
    config = load_config(CONFIGS[name], [f"model.retrieval_dim={args.retrieval_dim}"])
    m = config.model
    case = work / f"{name}-{count}"
    store, checkpoint, db = case / "features", case / "model.pt", case / "db"
    need = count * m.num_segments * m.feature_dim * 2 * 1.05 + count * 60 * (args.retrieval_dim * 4 + 64)
    free = shutil.disk_usage(work).free
    if not (store / "videos").is_dir() and need > free * 0.9:
        raise SystemExit(f"{name} x {count}: needs about {need / 1e9:.1f} GB, {free / 1e9:.1f} GB free under {work}")
    case.mkdir(parents=True, exist_ok=True)
    if not (store / "videos").is_dir():
        started = time.perf_counter()
        write_store(store, count, m.num_segments, m.feature_dim, seed=count)
        print(f"  store: {count:,} videos in {time.perf_counter() - started:.0f} s", flush=True)
    random_checkpoint(checkpoint, CONFIGS[name], args.retrieval_dim)
    if not args.hub_queries:
        before, after = spread_retrieval(checkpoint, template_texts(min(2000, max(args.queries))))
        print(f"  query vectors centred: mean pairwise cosine {before:.3f} -> {after:.3f}", flush=True)
    shutil.rmtree(db, ignore_errors=True)
    base = {"checkpoint": str(checkpoint), "features": str(store), "actors": args.actors,
            "videos_per_batch": args.videos_per_batch, "pair_batch_size": args.pair_batch_size}
    cells = run_child({**base, "kind": "index", "db": str(db), "vector_index_min_rows": args.vector_index_min_rows})
    cells["mb"] = folder_size(db / CELLS_DIR) / 1e6
    cells["inputs_mb"] = folder_size(db / INPUTS_DIR) / 1e6 if (db / INPUTS_DIR).is_dir() else 0.0
    print(f"  cells: {cells['rows']:,} in {cells['wall_s']:.0f} s, {cells['mb']:.0f} MB (inputs table "
          f"{cells['inputs_mb']:.0f} MB)", flush=True)
    sample = FeatureStore(str(store)).ok_video_ids()[: min(count, args.exhaustive_sample)]
    rows = []
    for queries in args.queries:
        texts = case / f"queries-{queries}.txt"
        write_queries(texts, queries)
        runs = [("candidates", n, keep) for n in args.candidates for keep in args.keep_per_query
                if "candidates" in args.modes]
        runs += [("exhaustive", 0, keep) for keep in args.keep_per_query if "exhaustive" in args.modes]
        for mode, n, keep in runs:
            exhaustive = mode == "exhaustive"
            target = case / "db-exhaustive" if exhaustive else db
            if exhaustive:
                shutil.rmtree(target, ignore_errors=True)
            else:
                clear_tables(target)  # the cells stay
            videos = sample if exhaustive and len(sample) < count else None
            report = run_child({**base, "kind": "ground", "queries": str(texts), "db": str(target), "mode": mode,
                                "candidates": max(n, 1), "keep_per_query": keep, "videos": videos,
                                "top_k": args.top_k})
            given = len(videos) if videos is not None else count
            scale = count / given
            fixed_s = report["wall_s"] - report["grounding_s"]  # start, model, queries, ranks, indices: not scaled
            row = GroundingRow(name, m.feature_dim, m.num_segments, count, queries, mode, n, keep, given,
                               report["videos"],
                               report["pairs"] * scale, fixed_s + report["grounding_s"] * scale,
                               report["grounding_s"] * scale,
                               report["rows_written"], report["rows_kept"], tables_size(target) / 1e6,
                               report["driver_peak_mb"], report["workers_peak_mb"])
            rows.append(row)
            print(json.dumps({**asdict(row), "child": report}), flush=True)
        clear_tables(db)
        shutil.rmtree(case / "db-exhaustive", ignore_errors=True)
    if not args.keep:
        shutil.rmtree(case, ignore_errors=True)
    return rows, cells


def spread_retrieval(checkpoint: Path, texts: list[str]) -> tuple[float, float]:
    """Centre the random retrieval stage's query vectors over ``texts`` (their mean pre-normalisation vector is
    taken off the last bias of the query projection), so that queries pick different videos as a trained stage's
    do; the checkpoint is written again. Returns the texts' mean pairwise cosine before and after."""
    import torch
    import torch.nn.functional as F

    from moments.library.model import check_queries_encodable, encode_query_side, load_model
    from moments.library.queries import Query, QueryCollection

    model = load_model(checkpoint)
    collection = check_queries_encodable(model.grounder, QueryCollection(
        "templates", [Query(str(i), text) for i, text in enumerate(texts)], []))
    side = encode_query_side(model.grounder, collection.queries)
    with torch.no_grad():
        raw = model.grounder.model.retrieval.query_proj(side.encoded.features.flatten(1))
        mean = raw.mean(0)

        def mean_cosine(vectors: torch.Tensor) -> float:
            unit = F.normalize(vectors, dim=-1)
            similarity = unit @ unit.T
            return float((similarity.sum() - similarity.diagonal().sum()) / (len(unit) * (len(unit) - 1)))

        payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
        bias = "retrieval.query_proj.2.bias"
        payload["state_dict"][bias] = payload["state_dict"][bias] - mean
        partial = checkpoint.with_suffix(".tmp")
        torch.save(payload, partial)
        partial.replace(checkpoint)
        return mean_cosine(raw), mean_cosine(raw - mean)


def grounding_table(rows: list[GroundingRow], cells: dict[tuple[str, int], dict]) -> str:
    lines = ["| config | D | T | videos | queries | mode | N | M | videos grounded | pairs scored | wall (s) | pairs/s "
             "| rows written | rows kept (<= Q x M) | index on disk (MB) | peak driver / Ray workers (MB) |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mark = f" * ({r.sample:,} videos)" if r.scaled else ""
        rate = r.pairs / r.grounding_s if r.grounding_s > 0 else float("nan")
        lines.append(f"| {r.config} | {r.dim} | {r.segments} | {r.videos:,} | {r.queries:,} | {r.mode} "
                     f"| {r.candidates or 'all'} | {r.keep} | {r.grounded:,} | {r.pairs:,.0f}{mark} "
                     f"| {r.wall_s:,.0f}{mark} | {rate:,.0f} | {r.rows_written:,}{mark} "
                     f"| {r.rows_kept:,} ({r.queries * r.keep:,}) "
                     f"| {r.index_mb:,.1f}{mark} | {r.driver_peak_mb:,.0f} / {r.workers_peak_mb:,.0f} |")
    lines += ["", "| config | videos | cells | build (s) | cells table (MB) | inputs table (MB) "
                  "| peak driver / Ray workers (MB) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for (config, videos), c in cells.items():
        lines.append(f"| {config} | {videos:,} | {c['rows']:,} | {c['wall_s']:,.0f} | {c['mb']:,.1f} "
                     f"| {c.get('inputs_mb', 0.0):,.1f} | {c['driver_peak_mb']:,.0f} / {c['workers_peak_mb']:,.0f} |")
    return "\n".join(lines)


def run_grounding_benchmark(args: argparse.Namespace) -> None:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="scale-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    before = load_average()
    print(f"machine: {machine()}; load before {before}; work folder {work} "
          f"({shutil.disk_usage(work).free / 1e9:.0f} GB free)", flush=True)
    rows: list[GroundingRow] = []
    cells: dict[tuple[str, int], dict] = {}
    try:
        for name in args.configs:
            for count in args.sizes:
                print(f"{name} x {count:,} videos", flush=True)
                found, cells[(name, count)] = grounding_case(name, count, args, work)
                rows += found
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nmachine: {machine()}; load average before {before}, after {load_average()}\n")
    print(f"Batch grounding (moments.library.GroundingJob, top-k {args.top_k} per video, {args.actors} actor(s)), "
          "each job in its own process with its own local Ray. Wall: the whole job (queries encoded, candidates "
          "picked, grounded, written, ranked, pruned to M, indexed). Pairs/s: pairs over the grounding phase. "
          "Index on disk: every table but `cells`. * measured on a sample of the library: pairs and grounding time "
          "scaled by N / sample (wall: the rest of the job as measured plus the scaled grounding); rows and index "
          "size are the sample's.\n")
    print(grounding_table(rows, cells))


# --------------------------------------------------------------------------------------------------- search
RUN_ID, CHECKPOINT_ID = "bench-run", "bench-ckpt"
SEGMENTS_PER_VIDEO = 5
VIDEO_POOL = 100_000


def segment_chunk(schema: pa.Schema, texts: list[str], first_query: int, rows_per_query: int,
                  rng: np.random.Generator) -> pa.Table:
    """Every row of a block of queries: rows_per_query / 5 videos x 5 ranked segments, library ranks by score."""
    videos_per_query = max(1, rows_per_query // SEGMENTS_PER_VIDEO)
    per_query = videos_per_query * SEGMENTS_PER_VIDEO
    n_queries = len(texts)
    n = n_queries * per_query
    query_index = np.repeat(np.arange(n_queries), per_query)
    videos = np.stack([rng.choice(VIDEO_POOL, videos_per_query, replace=False) for _ in range(n_queries)])
    video_index = np.repeat(videos, SEGMENTS_PER_VIDEO, axis=1).reshape(-1)
    rank = np.tile(np.arange(SEGMENTS_PER_VIDEO), n_queries * videos_per_query).astype(np.int32)
    score = np.sort(rng.uniform(0, 1, (n_queries * videos_per_query, SEGMENTS_PER_VIDEO)), axis=1)[:, ::-1]
    score = score.reshape(-1).astype(np.float32)
    library_rank = np.argsort(np.argsort(-score.reshape(n_queries, per_query), axis=1, kind="stable"), axis=1)
    start = rng.uniform(0, 120, n)
    values = {
        "run_id": pa.array([RUN_ID] * n), "checkpoint_id": pa.array([CHECKPOINT_ID] * n),
        "query_id": pa.array([f"q{first_query + i:07d}" for i in query_index]),
        "query_text": pa.array([texts[i] for i in query_index]),
        "video_id": pa.array([f"video{v:06d}" for v in video_index]), "rank": pa.array(rank),
        "library_rank": pa.array(library_rank.reshape(-1).astype(np.int32)),
        "start_s": pa.array(start), "end_s": pa.array(start + rng.uniform(2, 30, n)),
        "score": pa.array(score), "match_score": pa.array(np.sqrt(score)), "iou_score": pa.array(np.sqrt(score)),
    }
    unknown = [f.name for f in schema if f.name not in values]
    if unknown:
        raise SystemExit(f"segments schema has columns this benchmark does not fill: {unknown}")
    return pa.Table.from_arrays([values[f.name].cast(f.type) for f in schema], schema=schema)


def build_search_index(db: Path, segments: int, rows_per_query: int, chunk_rows: int) -> tuple[Any, int, float]:
    """A synthetic index of about ``segments`` rows: (Index, queries, seconds to build)."""
    from tqdm import tqdm

    from moments.index import Index, segments_schema
    from moments.index.queries import query_rows
    from moments.index.runs import RunRecord, record_run

    started = time.perf_counter()
    count = math.ceil(segments / rows_per_query)
    texts = template_texts(count)
    vectors = query_vectors(texts, np.random.default_rng(2))
    index = Index(str(db), vector_index_min_rows=1)
    ids = [f"q{i:07d}" for i in range(count)]
    for first in range(0, count, 20_000):
        index.write_queries(query_rows(RUN_ID, CHECKPOINT_ID, ids[first:first + 20_000],
                                       texts[first:first + 20_000], vectors[first:first + 20_000]))
    schema, rng = segments_schema(), np.random.default_rng(1)
    per_chunk = max(1, chunk_rows // rows_per_query)
    for first in tqdm(range(0, count, per_chunk), desc="writing segments", unit="chunk"):
        chunk = segment_chunk(schema, texts[first:first + per_chunk], first, rows_per_query, rng)
        if first == 0:
            index.write_segments(chunk)  # creates the table
        else:
            index.table.add(chunk)  # unique keys by construction: append instead of merging
    record_run(str(db), RunRecord(RUN_ID, "batch", CHECKPOINT_ID, "synthetic://", "synthetic://", 1,
                                  mode="candidates", candidates=20, keep_per_query=rows_per_query))
    for first in tqdm(range(0, count, 20_000), desc="top moments", unit="pass"):  # as update_library_ranks does
        index.update_top_moments(RUN_ID, ids[first:first + 20_000], queries_per_pass=20_000)
    index.ensure_indices(vector_index_min_rows=1)
    index.refresh()
    return index, count, time.perf_counter() - started


def timed_searches(index: Any, rounds: int) -> dict[str, tuple[float, float]]:
    """p50 and p95 (ms) of ``Index.search`` (k = 10): text only with a warm and a cold sentence-embedding cache,
    with a video filter and with a minimum score; of embedding alone; and the floor: a bare LanceDB
    nearest-neighbour query (k = 10) on the same queries table with the same vector."""
    from drn.text.sentence import clear_embedding_cache, embed_text
    from moments.index.answer import _vector_hits, _word_hits
    from moments.index.catalogue import CATALOGUE_MAX_ROWS, QueryCatalogue, unit_rows
    from moments.index.queries import EMBEDDING_COLUMN

    for text in PARAPHRASES:  # the first call per sequence length sets kernels up: warm them all
        embed_text(text)
        index.search(text, k=10)
    vectors = {text: embed_text(text) for text in PARAPHRASES}
    queries = index.queries_table

    def bare(text: str) -> None:
        (queries.search(vectors[text], vector_column_name=EMBEDDING_COLUMN).distance_type("cosine").limit(10)
         .to_arrow())

    def cold(text: str) -> None:
        clear_embedding_cache()
        index.search(text, k=10)

    def embed(text: str) -> None:
        clear_embedding_cache()
        embed_text(text)

    keys = ["run_id", "query_id"]
    catalogue = index.stored_queries.search_view().catalogue
    in_memory = None if catalogue is None else QueryCatalogue(
        catalogue.version, catalogue.row_ids, catalogue.rows, unit_rows(catalogue.rows.column(EMBEDDING_COLUMN)))
    cases = {
        "search, text only, warm cache": lambda text: index.search(text, k=10),
        "search, text only, cold cache": cold,
        "search + video filter (warm)": lambda text: index.search(text, k=10, video_id="video000042"),
        "search + min score (warm)": lambda text: index.search(text, k=10, min_score=0.5),
        "embedding the text alone": embed,
        "floor: bare LanceDB NN on queries": bare,
        "vector list of 40 keys: LanceDB": lambda text: _vector_hits(queries, vectors[text], None, 40, keys, True),
        "full-text list of 40 keys: LanceDB": lambda text: _word_hits(queries, text, None, 40, keys, True),
    }
    if in_memory is not None:
        cases["vector list of 40 keys: exact, in memory"] = lambda text: in_memory.nearest(vectors[text], 40, keys)
    out = {case: timed(call, rounds) for case, call in cases.items()}
    used_exact = catalogue is not None and catalogue.unit_vectors is not None
    if used_exact or in_memory is not None:  # the search again with the other vector list, on the index reopened
        other = type(index)(index.uri)
        other.stored_queries.exact_list_max_rows = 0 if used_exact else CATALOGUE_MAX_ROWS
        for text in PARAPHRASES:  # its catalogue and index files read, as for the index above
            other.search(text, k=10)
        label = "LanceDB" if used_exact else "exact, in memory"
        out[f"search, warm cache, vector list {label}"] = timed(lambda text: other.search(text, k=10), rounds)
    return out


def timed(call: Callable[[str], Any], rounds: int) -> tuple[float, float]:
    """p50 and p95 (ms) of ``call`` on each paraphrase, ``rounds`` times."""
    times = []
    for _ in range(rounds):
        for text in PARAPHRASES:
            began = time.perf_counter()
            call(text)
            times.append((time.perf_counter() - began) * 1000)
    return percentiles(times)


def run_search_benchmark(args: argparse.Namespace) -> None:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="scale-search-"))
    work.mkdir(parents=True, exist_ok=True)
    before = load_average()
    print(f"machine: {machine()}; load before {before}; work folder {work}", flush=True)
    rows = []
    try:
        for segments in args.segments:
            db = work / f"db-{segments}"
            shutil.rmtree(db, ignore_errors=True)
            index, queries, build_s = build_search_index(db, segments, args.rows_per_query, args.chunk_rows)
            rows_in = index.count()
            size_mb = folder_size(db) / 1e6
            timings = timed_searches(index, args.rounds)
            rows.append((rows_in, queries, build_s, size_mb, timings))
            print(json.dumps({"segments": rows_in, "queries": queries, "build_s": build_s, "mb": size_mb,
                              "timings": timings}), flush=True)
            del index
            if not args.keep:
                shutil.rmtree(db, ignore_errors=True)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nmachine: {machine()}; load average before {before}, after {load_average()}\n")
    print(f"In-process Index.search, k = 10, {len(PARAPHRASES)} paraphrases x {args.rounds} round(s); "
          f"{args.rows_per_query} rows per stored query.\n")
    print("| segments | stored queries | index on disk (MB) | build (s) | what | p50 (ms) | p95 (ms) |")
    print("|---:|---:|---:|---:|---|---:|---:|")
    for rows_in, queries, build_s, size_mb, timings in rows:
        for case, (p50, p95) in timings.items():
            print(f"| {rows_in:,} | {queries:,} | {size_mb:,.0f} | {build_s:,.0f} | {case} | {p50:.1f} | {p95:.1f} |")
    warm, floor = "search, text only, warm cache", "floor: bare LanceDB NN on queries"
    for rows_in, _, _, _, timings in rows:
        print(f"\n{rows_in:,} segments: warm p50 {timings[warm][0] / timings[floor][0]:.2f}x the floor")
    for case in (warm, "search, text only, cold cache"):
        if len(rows) > 1:
            first, last = rows[0][4][case][0], rows[-1][4][case][0]
            print(f"p50 ratio ({case}), {rows[-1][0]:,} against {rows[0][0]:,} segments: {last / first:.2f}x")


# --------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ground = sub.add_parser("grounding", help="candidate-driven against exhaustive batch grounding")
    ground.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="videos per library")
    ground.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["paper", "demo"])
    ground.add_argument("--queries", type=int, nargs="+", default=[1000, 10_000], help="queries per collection")
    ground.add_argument("--candidates", type=int, nargs="+", default=[20], help="N: candidate videos per query")
    ground.add_argument("--keep-per-query", type=int, nargs="+", default=[100], help="M: moments kept per query")
    ground.add_argument("--exhaustive-sample", type=int, default=200,
                        help="exhaustive grounding on at most this many videos, scaled to the library")
    ground.add_argument("--modes", nargs="+", choices=["candidates", "exhaustive"],
                        default=["candidates", "exhaustive"], help="which grounding modes to run (default both)")
    ground.add_argument("--top-k", type=int, default=5, help="segments per (query, video)")
    ground.add_argument("--hub-queries", action="store_true",
                        help="keep the random retrieval head as it is (every query picks the same few videos)")
    ground.add_argument("--retrieval-dim", type=int, default=128)
    ground.add_argument("--vector-index-min-rows", type=int, default=50_000, help="cells before an ANN index")
    ground.add_argument("--actors", type=int, default=1, help="grounding actors (each gets cpus / actors)")
    ground.add_argument("--videos-per-batch", type=int, default=64)
    ground.add_argument("--pair-batch-size", type=int, default=256)
    search = sub.add_parser("search", help="search latency against index size")
    search.add_argument("--segments", type=int, nargs="+", default=[1_000_000, 10_000_000])
    search.add_argument("--rows-per-query", type=int, default=100, help="M: segment rows per stored query")
    search.add_argument("--rounds", type=int, default=3, help="times each of the 40 searches runs")
    search.add_argument("--chunk-rows", type=int, default=500_000, help="segment rows per append")
    for command in (ground, search):
        command.add_argument("--workdir", default=None, help="work folder (default: a temporary one, removed)")
        command.add_argument("--keep", action="store_true", help="keep what the benchmark wrote (large)")
    sub.add_parser("_child")  # one task, read as JSON from stdin (run_child)
    args = parser.parse_args()
    if args.command == "_child":
        print(json.dumps(child(json.loads(sys.stdin.read()))))
        return
    if args.command == "grounding":
        for flag, values in (("--candidates", args.candidates), ("--keep-per-query", args.keep_per_query),
                             ("--queries", args.queries), ("--sizes", args.sizes)):
            if min(values) < 1:
                parser.error(f"{flag} must be at least 1")
        if args.exhaustive_sample < 1:
            parser.error("--exhaustive-sample must be at least 1")
        run_grounding_benchmark(args)
    else:
        if min(args.segments) < 1 or args.rows_per_query < SEGMENTS_PER_VIDEO:
            parser.error(f"--segments must be at least 1 and --rows-per-query at least {SEGMENTS_PER_VIDEO}")
        run_search_benchmark(args)


if __name__ == "__main__":
    main()
