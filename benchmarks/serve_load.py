"""Load test of the search service (Ray Serve) on loopback: latency at 1, 8 and 32 concurrent clients.

    .venv/bin/python benchmarks/serve_load.py                          # 20,000 queries x 50 = 1M segments
    .venv/bin/python benchmarks/serve_load.py --queries 200 --requests 10   # a quick check (10k segments)
    .venv/bin/python benchmarks/serve_load.py --db /tmp/serve-bench     # keep the table and reuse it next time

The table is the one `benchmarks/search.py` builds (template queries, 10 videos x 5 segments each, all indices:
scalar, full text and IVF-PQ). The service (`moments.serve.app`, one replica unless --replicas) is started on
127.0.0.1 at a free port; each client is a thread with its own keep-alive HTTP connection that sends
`GET /api/search?q=...&k=10` back to back, cycling through the 40 paraphrased searches of benchmarks/search.py.
Latency is measured per request at the client (send to last byte). Errors (non-200 answers, failed connections)
are counted. The replica's resident memory is read from /proc before and after (its peak too), and the same
searches are also timed in-process (`Index.search`, no HTTP) to show what the service adds. Live search
(two-stage, `live=1`) is measured the same way where the index has a retrieval stage (the `cells` table).
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CLIENTS = (1, 8, 32)


def search_benchmark():
    """benchmarks/search.py as a module: its table builder and its 40 searches."""
    spec = importlib.util.spec_from_file_location("search_benchmark", HERE / "search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_table(db: Path, queries: int, chunk_queries: int) -> int:
    """The 1M-segment table of benchmarks/search.py (queries x 50 rows) with every index; returns its rows."""
    from tqdm import tqdm

    from moments.index import Index

    bench = search_benchmark()
    index = Index(db, vector_index_min_rows=1)
    if index.count() > 0:
        print(f"reusing the table at {db}: {index.count():,} rows", flush=True)
        index.ensure_indices(vector_index_min_rows=1)
        index.fill_top_moments()
        return index.count()
    texts = bench.query_texts(queries)
    vectors = bench.query_vectors(texts, np.random.default_rng(2))
    rng = np.random.default_rng(1)
    for first in tqdm(range(0, len(texts), chunk_queries), desc="writing", unit="chunk"):
        block = slice(first, first + chunk_queries)
        index.write_queries(bench.synthetic_queries(texts[block], vectors[block], first))
        index.write_segments(bench.synthetic_chunk(texts[block], vectors[block], first, rng))
    started = time.perf_counter()
    index.ensure_indices(vector_index_min_rows=1)
    index.fill_top_moments()  # what update_library_ranks writes in a grounding job
    print(f"indices and top moments built in {time.perf_counter() - started:.1f} s", flush=True)
    return index.count()


def build_live_library(db: Path, videos: int) -> None:
    """A paper-size feature store of ``videos`` videos beside ``db``, a random checkpoint and the cells and inputs
    tables in ``db`` (``jobs.index_library``'s job), unless the cells are there already."""
    import common
    import ray

    from moments.library.cell_indexing import run_index_library

    db.mkdir(parents=True, exist_ok=True)
    if (db / "cells.lance").is_dir():
        print(f"reusing the cells at {db}", flush=True)
        return
    config = common.load_config(common.CONFIGS["paper"])
    store, checkpoint = db.parent / f"{db.name}-features", db.parent / f"{db.name}-model.pt"
    if not (store / "videos").is_dir():
        common.write_store(store, videos, config.model.num_segments, config.model.feature_dim, seed=videos)
    common.random_checkpoint(checkpoint, common.CONFIGS["paper"], 128)
    run_index_library(str(checkpoint), str(store), str(db))
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(port: int, path: str) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def process_memory_mb(pid: int) -> dict[str, float]:
    """Resident (VmRSS) and peak resident (VmHWM) memory of a process on this machine, in MB."""
    values = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    return values


def run_clients(port: int, clients: int, requests: int, searches: list[str], extra: str = "") -> dict:
    """`clients` threads, each sending `requests` searches back to back on its own connection."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_line = threading.Barrier(clients)

    def client(number: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine: list[float] = []
        failed: list[str] = []
        start_line.wait()
        for i in range(requests):
            text = searches[(number * requests + i) % len(searches)]
            path = f"/api/search?q={urllib.parse.quote(text)}&k=10{extra}"
            began = time.perf_counter()
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    failed.append(f"HTTP {response.status}")
                    continue
            except (OSError, http.client.HTTPException) as error:
                failed.append(type(error).__name__)
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                continue
            mine.append(time.perf_counter() - began)
        connection.close()
        with lock:
            latencies.extend(mine)
            errors.extend(failed)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    p50, p95 = np.percentile(ms, [50, 95])
    return {"clients": clients, "requests": clients * requests, "ok": len(latencies), "errors": len(errors),
            "error_kinds": sorted(set(errors)), "p50": p50, "p95": p95, "per_s": len(latencies) / wall}


def in_process_latency(db: Path, searches: list[str], rounds: int) -> tuple[float, float]:
    """p50/p95 (ms) of `Index.search` in this process: the same work without HTTP and Serve."""
    from moments.index import Index

    index = Index(db)
    for text in searches:
        index.search(text, k=10)
    times = []
    for _ in range(rounds):
        for text in searches:
            began = time.perf_counter()
            index.search(text, k=10)
            times.append(time.perf_counter() - began)
    p50, p95 = np.percentile(np.array(times) * 1000, [50, 95])
    return float(p50), float(p95)


def machine_line() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return f"{model}, {os.cpu_count()} CPU cores"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=20_000, help="distinct queries (50 segments each)")
    parser.add_argument("--requests", type=int, default=40, help="searches per client at each concurrency")
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)), help="concurrencies, comma-separated")
    parser.add_argument("--replicas", type=int, default=1, help="service replicas")
    parser.add_argument("--num-cpus", type=float, default=0.0,
                        help="CPUs reserved per replica (default 0: none; a replica's live search runs DRN on as "
                             "many torch threads, at least 1)")
    parser.add_argument("--db", default=None, help="where to build (or reuse) the table; default: a temporary folder")
    parser.add_argument("--chunk-queries", type=int, default=2000, help="queries per merge write")
    parser.add_argument("--live-videos", type=int, default=0,
                        help="also build a paper-size library of this many videos (random weights) and its cells in "
                             "the db, so that live search (live=1) is measured too")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="set in the environment before Ray starts (its actors inherit it), e.g. "
                             "RAY_SERVE_THROUGHPUT_OPTIMIZED=1")
    args = parser.parse_args()
    for setting in args.env:
        key, _, value = setting.partition("=")
        os.environ[key] = value
    clients = [int(c) for c in args.clients.split(",")]

    folder = Path(args.db) if args.db else Path(tempfile.mkdtemp(prefix="serve-bench-"))
    db = folder / "db" if not args.db else folder
    load_before = load_average()
    try:
        if args.live_videos:
            build_live_library(db, args.live_videos)
        rows = build_table(db, args.queries, args.chunk_queries)
        import ray

        from moments.serve.app import start_service
        from moments.serve.backend import ServiceSettings

        searches = search_benchmark().SEARCHES
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        port = free_port()
        started = time.perf_counter()
        start_service(ServiceSettings(db=str(db)), port=port, num_replicas=args.replicas, num_cpus=args.num_cpus)
        status, health = get_json(port, "/api/health")
        if status != 200:
            raise SystemExit(f"the service is not ready: {health.get('reason')}")
        print(f"service ready in {time.perf_counter() - started:.1f} s on 127.0.0.1:{port} "
              f"({args.replicas} replica(s)); {rows:,} segments", flush=True)
        pid = health["pid"]
        memory_before = process_memory_mb(pid)
        run_clients(port, 1, 5, searches)  # warm up

        results = []
        modes = [("indexed", "")] + ([("live", "&live=1")] if health.get("live") else [])
        for mode, extra in modes:
            for count in clients:
                result = run_clients(port, count, args.requests, searches, extra)
                result["mode"] = mode
                results.append(result)
                print(f"  {mode:<8} {count:>3} clients  p50 {result['p50']:8.1f} ms  p95 {result['p95']:8.1f} ms  "
                      f"{result['per_s']:6.1f} req/s  errors {result['errors']}", flush=True)
        memory_after = process_memory_mb(pid)
        local_p50, local_p95 = in_process_latency(db, searches, rounds=1)
        load_after = load_average()

        print(f"\nSearch service under load: {rows:,} segments, k=10, loopback HTTP, {args.replicas} replica(s) "
              f"of {args.num_cpus:g} CPU(s), "
              f"environment {args.env or 'as it is'}, {args.requests} searches per client\n"
              f"machine: {machine_line()}; load average before {load_before}, "
              f"after {load_after}\n")
        print("| search | clients | requests | errors | p50 (ms) | p95 (ms) | searches/s |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in results:
            print(f"| {r['mode']} | {r['clients']} | {r['requests']} | {r['errors']} | {r['p50']:.1f} | "
                  f"{r['p95']:.1f} | {r['per_s']:.1f} |")
        print(f"| indexed, in-process `Index.search` (no HTTP) | 1 | {len(searches)} | 0 | {local_p50:.1f} | "
              f"{local_p95:.1f} | |")
        if not health.get("live"):
            print("\nlive search: not measured, the index has no retrieval stage (run jobs.index_library first)")
        one = next((r for r in results if r["mode"] == "indexed" and r["clients"] == 1), None)
        eight = next((r for r in results if r["mode"] == "indexed" and r["clients"] == 8), None)
        if one and eight:
            print(f"\nindexed: 1-client p50 {one['p50']:.1f} ms (aim: <= 15 ms); 8 clients give "
                  f"{eight['per_s'] / one['per_s']:.2f}x the searches/s of one (aim: >= 1.7x)")
        nan = float("nan")
        print(f"replica memory (pid {pid}): resident {memory_before.get('VmRSS', nan):.0f} MB before, "
              f"{memory_after.get('VmRSS', nan):.0f} MB after, peak {memory_after.get('VmHWM', nan):.0f} MB")
        errors = sorted({kind for r in results for kind in r["error_kinds"]})
        if errors:
            print(f"errors seen: {errors}")
    finally:
        try:
            from ray import serve

            serve.shutdown()
        except Exception:  # noqa: BLE001 - best effort when the service never started
            pass
        if not args.db:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
