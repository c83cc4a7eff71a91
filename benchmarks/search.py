"""Search latency of the segments index on a synthetic table of 1M segments, with and without indices.

    .venv/bin/python benchmarks/search.py                      # 20,000 queries x 50 segments = 1M rows
    .venv/bin/python benchmarks/search.py --queries 2000       # a quick run (100k rows)

The table: 20,000 distinct query texts made from templates (subject x action x place), each grounded in 10
videos (of 5,000) with 5 segments per video, so 50 rows per query. Embedding 20,000 texts with MiniLM takes
minutes on 2 shared cores, so only the 1,000 distinct "action place" phrases are embedded with the real
offline model; each full text gets its phrase's vector plus a small random offset (noise 0.02 per dimension),
re-normalised: neighbours in meaning stay neighbours, and every query has its own vector.
Scores are random; `library_rank` is computed the way `Index.update_library_ranks` does it.
Searches are 40 paraphrases that share few words with the templates. Each search is timed end to end
(`Index.search`: embedding the text, finding the queries, fetching their segments) in three states:
no indices; scalar + full-text indices; scalar + full-text + IVF-PQ vector index.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from drn.text.sentence import embed_text, embed_texts
from moments.index import Index, query_rows, segments_schema

SUBJECTS = ["a man", "a woman", "a person", "a child", "an old man", "a girl", "a boy", "the chef", "a teenager",
            "someone", "a nurse", "a student", "the father", "the mother", "a worker", "a dancer", "the player",
            "a tourist", "a farmer", "the teacher"]
ACTIONS = ["opens the refrigerator", "closes the door", "cuts an onion", "pours a glass of water", "reads a book",
           "sits on the sofa", "turns on the light", "washes the dishes", "puts on a jacket", "takes off shoes",
           "eats a sandwich", "drinks coffee", "throws a ball", "picks up a phone", "laughs loudly",
           "runs down the stairs", "sweeps the floor", "folds the laundry", "plays the guitar", "fixes a bike",
           "waters the plants", "opens a laptop", "writes a letter", "ties a shoelace", "holds a baby",
           "feeds the dog", "climbs a ladder", "paints a wall", "lifts a box", "looks out of the window",
           "stirs the soup", "cleans the table", "brushes teeth", "jumps over a fence", "rides a horse",
           "opens an umbrella", "hangs a picture", "makes the bed", "peels a potato", "dances in a circle",
           "kicks the ball", "waves at the camera", "slices bread", "sews a button", "carries groceries",
           "unlocks a car", "sneezes", "watches television", "takes a photo", "hugs a friend"]
PLACES = ["in the kitchen", "in the living room", "at the park", "on the street", "in the garage", "in a bedroom",
          "at the beach", "in the office", "in the garden", "at a restaurant", "in a classroom", "at the gym",
          "on a boat", "in the bathroom", "in a shop", "on the stage", "at the station", "in the snow",
          "by the river", "in a hallway"]
SEARCHES = ["somebody unlocks the fridge", "slicing vegetables for dinner", "a lady drinks a cup of tea",
            "kid plays with a dog outdoors", "man on a couch reading", "someone switching the lamp on",
            "doing the washing up", "a guy puts his coat on", "pouring water into a glass", "playing an instrument",
            "repairing a bicycle", "someone answers a call", "cleaning the floor with a broom", "making the bed",
            "climbing up a ladder", "a worker carries a heavy box", "a woman paints", "taking a picture",
            "hugging somebody", "watching TV at night", "a toddler being held", "writing with a pen",
            "a man jogs down steps", "a chef stirs a pot", "peeling potatoes", "a person dances",
            "riding on horseback", "girl laughs", "shoes being removed", "someone sneezing",
            "opening a notebook computer", "drying an umbrella", "tying shoes", "feeding a pet",
            "folding clothes", "hanging a frame on the wall", "eating lunch", "kicking a football",
            "waving hello", "a student sews"]
VIDEOS_PER_QUERY = 5 * 2
SEGMENTS_PER_VIDEO = 5
VIDEO_POOL = 5000


def query_texts(count: int) -> list[str]:
    texts = [f"{s} {a} {p}" for p in PLACES for a in ACTIONS for s in SUBJECTS]
    if count > len(texts):
        raise SystemExit(f"at most {len(texts)} distinct template queries")
    order = np.random.default_rng(0).permutation(len(texts))[:count]
    return [texts[i] for i in order]


def query_vectors(texts: list[str], rng: np.random.Generator) -> np.ndarray:
    """Unit vectors for the template texts: the MiniLM embedding of the text without its subject, jittered."""
    phrases = [_without_subject(text) for text in texts]
    unique = sorted(set(phrases))
    base = dict(zip(unique, embed_texts(unique, batch_size=256), strict=True))
    vectors = np.stack([base[phrase] for phrase in phrases])
    vectors += rng.normal(0, 0.02, vectors.shape).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _without_subject(text: str) -> str:
    for subject in sorted(SUBJECTS, key=len, reverse=True):
        if text.startswith(subject + " "):
            return text[len(subject) + 1:]
    return text


def synthetic_queries(texts: list[str], vectors: np.ndarray, first_query: int) -> pa.Table:
    """The `queries` rows of a block of queries (written before their segments)."""
    ids = [f"q{first_query + i:06d}" for i in range(len(texts))]
    return query_rows("bench-run", "bench-ckpt", ids, texts, vectors)


def synthetic_chunk(texts: list[str], vectors: np.ndarray, first_query: int, rng: np.random.Generator) -> pa.Table:
    """All segment rows of a block of queries: 10 videos x 5 ranked segments each, library ranks by score
    (``vectors`` go to the queries table: ``synthetic_queries``)."""
    n_queries = len(texts)
    per_query = VIDEOS_PER_QUERY * SEGMENTS_PER_VIDEO
    n = n_queries * per_query
    query_index = np.repeat(np.arange(n_queries), per_query)
    videos = np.stack([rng.choice(VIDEO_POOL, VIDEOS_PER_QUERY, replace=False) for _ in range(n_queries)])
    video_index = np.repeat(videos, SEGMENTS_PER_VIDEO, axis=1).reshape(-1)
    rank = np.tile(np.arange(SEGMENTS_PER_VIDEO), n_queries * VIDEOS_PER_QUERY).astype(np.int32)
    score = np.sort(rng.uniform(0, 1, (n_queries * VIDEOS_PER_QUERY, SEGMENTS_PER_VIDEO)), axis=1)[:, ::-1]
    score = score.reshape(-1).astype(np.float32)
    by_query = score.reshape(n_queries, per_query)
    library_rank = np.argsort(np.argsort(-by_query, axis=1, kind="stable"), axis=1).reshape(-1).astype(np.int32)
    start = rng.uniform(0, 120, n)
    columns = {
        "run_id": pa.array(["bench-run"] * n),
        "checkpoint_id": pa.array(["bench-ckpt"] * n),
        "query_id": pa.array([f"q{first_query + i:06d}" for i in query_index]),
        "query_text": pa.array([texts[i] for i in query_index]),
        "video_id": pa.array([f"video{v:05d}" for v in video_index]),
        "rank": pa.array(rank),
        "library_rank": pa.array(library_rank),
        "start_s": pa.array(start),
        "end_s": pa.array(start + rng.uniform(2, 30, n)),
        "score": pa.array(score),
        "match_score": pa.array(np.sqrt(score)),
        "iou_score": pa.array(np.sqrt(score)),
    }
    return pa.Table.from_pydict(columns, schema=segments_schema())


def timed_searches(index: Index, label: str, searches: list[str]) -> list[tuple[str, str, float, float]]:
    cases = {
        "text only": {},
        "+ video filter": {"video_id": "video00042"},
        "+ min-score & run": {"min_score": 0.8, "run_id": "bench-run"},
    }
    rows = []
    for case, filters in cases.items():
        index.search(SEARCHES[0], k=10, **filters)  # warm caches
        times = []
        for text in searches:
            started = time.perf_counter()
            index.search(text, k=10, **filters)
            times.append(time.perf_counter() - started)
        p50, p95 = np.percentile(np.array(times) * 1000, [50, 95])
        rows.append((label, case, p50, p95))
        print(f"  {label:<34} {case:<20} p50 {p50:8.1f} ms   p95 {p95:8.1f} ms", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=20_000, help="distinct queries (50 rows each)")
    parser.add_argument("--rounds", type=int, default=2, help="times each of the 40 searches runs with indices")
    parser.add_argument("--flat-searches", type=int, default=10,
                        help="searches per case without indices (each scans the table)")
    parser.add_argument("--db", default=None, help="where to build the table (default: a temporary folder)")
    parser.add_argument("--chunk-queries", type=int, default=2000, help="queries per merge write")
    args = parser.parse_args()

    folder = Path(args.db) if args.db else Path(tempfile.mkdtemp(prefix="search-bench-"))
    timings: dict[str, float] = {}
    try:
        started = time.perf_counter()
        texts = query_texts(args.queries)
        vectors = query_vectors(texts, np.random.default_rng(2))
        timings["embed 1,000 phrases (MiniLM) + jitter"] = time.perf_counter() - started

        index = Index(folder / "db", vector_index_min_rows=1)
        rng = np.random.default_rng(1)
        started = time.perf_counter()
        for first in tqdm(range(0, len(texts), args.chunk_queries), desc="writing", unit="chunk"):
            block = slice(first, first + args.chunk_queries)
            index.write_queries(synthetic_queries(texts[block], vectors[block], first))
            index.write_segments(synthetic_chunk(texts[block], vectors[block], first, rng))
        timings["write (merge_insert)"] = time.perf_counter() - started
        rows = index.count()
        print(f"table: {rows:,} rows, {len(texts):,} queries", flush=True)

        for text in SEARCHES:  # the first call per sequence length is slow (kernel set-up): warm them all
            embed_text(text)
        started = time.perf_counter()
        for text in SEARCHES:
            embed_text(text)
        timings["embed one search text (mean)"] = (time.perf_counter() - started) / len(SEARCHES)

        flat = SEARCHES[: args.flat_searches]
        indexed = SEARCHES * args.rounds
        results = timed_searches(index, "no indices", flat)
        started = time.perf_counter()
        index.ensure_indices(vector_index_min_rows=rows + 1)
        timings["build scalar + FTS indices"] = time.perf_counter() - started
        results += timed_searches(index, "scalar + FTS", indexed)
        started = time.perf_counter()
        index.ensure_indices(vector_index_min_rows=1)
        timings["build IVF-PQ vector index"] = time.perf_counter() - started
        results += timed_searches(index, "scalar + FTS + IVF-PQ", indexed)

        machine = f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPU cores"
        print(f"\nSearch latency, {rows:,} segments ({len(texts):,} queries x 50), k=10; machine: {machine}\n")
        print("| indices | search | searches | p50 (ms) | p95 (ms) |\n|---|---|---:|---:|---:|")
        for label, case, p50, p95 in results:
            count = len(flat) if label == "no indices" else len(indexed)
            print(f"| {label} | {case} | {count} | {p50:.1f} | {p95:.1f} |")
        print("\n| step | seconds |\n|---|---:|")
        for step, seconds in timings.items():
            print(f"| {step} | {seconds:.3f} |")
    finally:
        if not args.db:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
