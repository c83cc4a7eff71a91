"""Random fault injection: kill a library job with SIGKILL at a random instant, rerun it, compare with a clean run.

Used by ``tests/test_faults.py`` (CI) and ``benchmarks/faults.py`` (longer runs). The jobs run as they do for a
user: ``python -m jobs.extract``, ``jobs.index_library``, ``jobs.ground`` and ``jobs.train --num-workers 1`` (the
resumable Ray Train path), as subprocesses with real Ray, real Parquet and real LanceDB.

**Kills.** Each run is a subprocess in a session of its own (``start_new_session``) that starts its own local Ray
(``RAY_TMPDIR`` is a private folder, so no run joins another Ray of the machine). A kill is SIGKILL to the job's
process group (the driver, Ray's GCS and raylet), then to every process still in the job's session (Ray's worker
processes lead process groups of their own) or naming the private Ray folder: the whole job dies at once, as when
the OOM killer or a preempted machine takes it. A process of the job still alive 30 s later is a failure, and so
is one left behind by a run that exited by itself.

With ``ray="cluster"`` the runs join one Ray head started for the harness instead (``RAY_ADDRESS``): a kill then
takes the driver only, as when a job's driver dies on a long-lived cluster, and Ray must release what the job
held for the rerun to start; the head must survive.

**A trial** starts from fresh inputs, runs the job ``chain`` times killed (each kill after a delay drawn from its
kill seed, uniform within the clean run's duration), then once to completion, and compares the result with a
clean run of the same inputs: the same rows (keys and values, floats within a tolerance), no duplicate keys, a
store, index or checkpoint that opens (also right after each kill, before the rerun), and for training a
resumption from the last checkpoint of the stage that was running. A run that exits before its kill is a miss,
not a kill: it ends the trial's kills and is compared as its run to completion.

**A kill during a write** is one after which the output holds files of a write that had begun and was not
committed (``FaultJob.in_flight``): a feature store's ``clips/`` shard without its ``videos/`` partner or a
``.tmp-`` file; a LanceDB table file newer than the table's newest manifest (data, transaction, deletion or index
files of a commit that never happened), or a table folder with files and no manifest; a Ray Train epoch folder
that the stage's checkpoint snapshot does not list, an unreadable snapshot, or a ``.tmp-`` file. A kill inside a
commit's last step (one rename) leaves nothing to see, so the count is a lower bound. **A kill after a commit**
is one that found part of the killed run's own output committed (a sealed shard, a table version, a registered
checkpoint): the rerun resumed from partial output rather than starting over.

Replay: a kill seed fixes the fraction of the clean duration at which the kill lands (the delay); the machine's
timing decides what the job was doing then, so a replay lands near the same point, not on the same instruction.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
GONE_TIMEOUT_S = 30.0
TINY_MODEL = ["model.num_segments=8", "model.lstm_hidden=8", "model.attention_dim=8", "model.location_dim=4",
              "model.level_channels=[8,8,16]", "model.fpn_channels=8", "model.iou_channels=[8,4]",
              "decode.top_per_level=4", "train.batch_size=16"]


# ----------------------------------------------------------------------------------------------- processes
@dataclass
class RunResult:
    """One run of a job: how long it ran, its exit status (None: killed) and its log."""

    seconds: float
    returncode: int | None
    log: Path
    leftovers: list[str] = field(default_factory=list)  # processes of the job alive after it ended
    swept: int = 0  # processes outside the job's process group that the kill had to reach one by one
    started_ns: int = 0  # wall clock (time.time_ns) when it started: files it wrote are not older

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(text[-lines:])


class JobRunner:
    """Starts job subprocesses and kills them with everything they started. Without ``address`` each job starts its
    own local Ray in the private folder ``ray_dir``; with it, jobs join that cluster (``RAY_ADDRESS``)."""

    def __init__(self, ray_dir: Path, address: str | None = None) -> None:
        self._born: dict[int, float] = {}  # session (the job's pid) -> when it was started, in epoch seconds
        self.ray_dir, self.address = str(ray_dir), address
        self.env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_TMPDIR")}
        self.env.update({"RAY_TMPDIR": self.ray_dir, "PYTHONPATH": str(REPO), "RAY_DEDUP_LOGS": "0",
                         "TQDM_DISABLE": "1", "RAY_USAGE_STATS_ENABLED": "0"})
        if address:
            self.env.update({"RAY_ADDRESS": address, "RAY_AUTH_MODE": "disabled"})

    def run(self, argv: Sequence[str], log: Path, *, kill_after_s: float | None = None,
            timeout_s: float = 600.0) -> RunResult:
        """Run ``argv`` to completion (or until ``timeout_s``, then kill it: exit status -9), or kill it after
        ``kill_after_s`` seconds unless it exited first."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            started, started_ns = time.perf_counter(), time.time_ns()
            proc = subprocess.Popen(list(argv), cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            self._born[proc.pid] = time.time() - 1.0  # its processes start after this (pids are reused)
            wait_s = timeout_s if kill_after_s is None else kill_after_s
            try:
                code: int | None = proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                code = None if kill_after_s is not None else -9
            seconds = time.perf_counter() - started
            swept = self.kill(proc) if code is None or code == -9 else 0
        leftovers = self.wait_gone(proc.pid)
        return RunResult(seconds, code, log, leftovers, swept, started_ns)

    def kill(self, proc: subprocess.Popen) -> int:
        """SIGKILL the job's process group, then whatever of its session or its Ray folder still lives."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        survivors = self.processes(proc.pid)
        for process in survivors:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        return len(survivors)

    def processes(self, session: int) -> list[psutil.Process]:
        """Live processes of ``session``, or (local Ray) whose command line names this runner's Ray folder."""
        found = []
        for process in psutil.process_iter(["cmdline", "status"]):
            try:
                if process.pid == os.getpid() or process.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                named = not self.address and any(self.ray_dir in part for part in process.info["cmdline"] or [])
                # a process of this session, started after the job: never another program's whose pid came back
                ours = os.getsid(process.pid) == session and process.create_time() >= self._born.get(session, 0.0)
                if named or ours:
                    found.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError, PermissionError):
                continue
        return found

    def wait_gone(self, session: int) -> list[str]:
        """Wait for the job's processes to end; those still alive after ``GONE_TIMEOUT_S`` are killed and named."""
        deadline = time.monotonic() + GONE_TIMEOUT_S
        while (alive := self.processes(session)) and time.monotonic() < deadline:
            time.sleep(0.5)
        names = []
        for process in alive:
            try:
                names.append(f"{process.pid} {' '.join(process.cmdline())[:120]}")
                process.kill()
            except psutil.NoSuchProcess:
                pass
        return names


class RayHead:
    """A local Ray head (2 CPUs, no dashboard) in the folder ``base``, for jobs that join a running cluster (the
    ``cluster`` mode: a kill takes the job's driver, and Ray must release what the job held)."""

    def __init__(self, base: Path, cpus: int = 2) -> None:
        self.base = str(base)
        port = free_port()
        env = {**os.environ, "RAY_TMPDIR": self.base, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        command = [str(Path(PYTHON).parent / "ray"), "start", "--head", "--num-cpus", str(cpus), "--port", str(port),
                   "--node-ip-address", "127.0.0.1", "--include-dashboard", "false", "--disable-usage-stats",
                   "--temp-dir", os.path.join(self.base, "ray")]
        started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
        if started.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed: {started.stderr[-1500:]}")
        self.address = f"127.0.0.1:{port}"

    def processes(self) -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter(["cmdline", "status"]):
            try:
                if process.info["status"] != psutil.STATUS_ZOMBIE and any(
                        self.base in part for part in process.info["cmdline"] or []):
                    found.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    def alive(self) -> bool:
        """Whether the head's GCS and raylet still run."""
        names = " ".join(" ".join(p.info["cmdline"] or []) for p in self.processes())
        return "gcs_server" in names and "raylet" in names

    def stop(self) -> None:
        """End the head's processes only (``ray stop`` would stop every Ray of the machine)."""
        processes = self.processes()
        for process in processes:
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(processes, timeout=10)
        for process in alive:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------------------------- comparisons
def compare_frames(name: str, clean: pd.DataFrame, got: pd.DataFrame, key: Sequence[str],
                   atol: float = 1e-4, rtol: float = 1e-4) -> list[str]:
    """Differences between two tables of rows with the unique ``key``: duplicate keys, missing or extra keys, and
    each column whose values differ (numbers and arrays beyond ``atol``/``rtol``), one line each with an example."""
    key = list(key)
    problems = []
    duplicated = got[got.duplicated(key, keep=False)]
    if len(duplicated):
        problems.append(f"{name}: {len(duplicated)} rows share a key, e.g. {tuple(duplicated.iloc[0][key])}")
        got = got.drop_duplicates(key)
    merged = clean.merge(got, on=key, how="outer", suffixes=("_clean", "_got"), indicator=True)
    missing, extra = merged[merged["_merge"] == "left_only"], merged[merged["_merge"] == "right_only"]
    if len(missing):
        problems.append(f"{name}: {len(missing)} rows of the clean run are missing, e.g. "
                        f"{tuple(missing.iloc[0][key])}")
    if len(extra):
        problems.append(f"{name}: {len(extra)} rows the clean run does not have, e.g. {tuple(extra.iloc[0][key])}")
    both = merged[merged["_merge"] == "both"]
    columns = [c for c in clean.columns if c not in key]
    for column in columns:
        bad = [i for i, (a, b) in enumerate(zip(both[f"{column}_clean"], both[f"{column}_got"], strict=True))
               if not same_value(a, b, atol, rtol)]
        if bad:
            row = both.iloc[bad[0]]
            problems.append(f"{name}: column {column} differs in {len(bad)} rows, e.g. {tuple(row[key])}: "
                            f"{_short(row[f'{column}_clean'])} vs {_short(row[f'{column}_got'])}")
    return problems


def same_value(a: Any, b: Any, atol: float, rtol: float) -> bool:
    """Equal, or for numbers and arrays close within ``atol``/``rtol``; None equals None and NaN equals NaN."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (str, bytes, bool)) or isinstance(b, (str, bytes, bool)):
        return a == b
    try:
        x = np.asarray(a, dtype=np.float64)
        y = np.asarray(b, dtype=np.float64)
    except (TypeError, ValueError):  # strings in a list, mixed values
        return bool(np.array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object)))
    return x.shape == y.shape and bool(np.allclose(x, y, atol=atol, rtol=rtol, equal_nan=True))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------------------------- in-flight writes
def written_since(path: Path, since_ns: int) -> bool:
    """Whether ``path`` (a file, or any file in a folder) was modified at or after ``since_ns``."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return any(p.stat().st_mtime_ns >= since_ns for p in files)


def lance_in_flight(db: Path, since_ns: int) -> list[str]:
    """Files of uncommitted LanceDB writes of a run started at ``since_ns``: in each ``<table>.lance``, files it
    wrote after the newest manifest (any file it wrote when there is no manifest), and manifests being written (a
    name that is not ``<number>.manifest``)."""
    found = []
    for table in sorted(db.glob("*.lance")):
        manifests = [p for p in (table / "_versions").glob("*") if p.is_file()]
        partial = [p for p in manifests if not (p.suffix == ".manifest" and p.stem.isdigit())
                   and p.name != "latest_version_hint.json"]  # the hint is rewritten after each commit
        committed = [p.stat().st_mtime_ns for p in manifests if p not in partial]
        newest = max([*committed, since_ns - 1])
        files = [p for p in table.rglob("*") if p.is_file() and p.parent.name != "_versions"]
        late = [p for p in files if p.stat().st_mtime_ns > newest]
        partial = [p for p in partial if written_since(p, since_ns)]
        found += [f"{table.name}: {p.relative_to(table)}" for p in partial + late]
    return found


def lance_committed(db: Path, since_ns: int) -> bool:
    """Whether a table of the LanceDB at ``db`` got a version (a manifest) since ``since_ns``."""
    return any(written_since(p, since_ns) for p in db.glob("*.lance/_versions/*.manifest"))


def tmp_files(root: Path, since_ns: int) -> list[str]:
    """Temporary files of atomic writes (``.tmp-`` in the name) written under ``root`` since ``since_ns``."""
    return [str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and ".tmp-" in p.name and written_since(p, since_ns)]


# ----------------------------------------------------------------------------------------------- the jobs
class FaultJob:
    """One job under fault injection: its inputs, its command, what it wrote and how to compare it."""

    name = ""

    def prepare(self, inputs: Path, runner: JobRunner) -> None:
        """Write the inputs every run of this job reads, once (``runner`` runs jobs that make them)."""

    def fresh(self, out: Path) -> None:
        """The state before a trial's first run."""
        out.mkdir(parents=True)

    def command(self, out: Path) -> list[str]:
        raise NotImplementedError

    def state(self, out: Path) -> dict[str, Any]:
        """Open what the job wrote and read it all (raises when it does not open)."""
        raise NotImplementedError

    def compare(self, clean: dict[str, Any], got: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def in_flight(self, out: Path, since_ns: int) -> list[str]:
        """Evidence that a write of the run started at ``since_ns`` had begun and was not committed (see the
        module docstring)."""
        return []

    def committed(self, out: Path, since_ns: int) -> bool:
        """Whether the run started at ``since_ns`` committed part of its output (a sealed shard, a table version,
        a registered checkpoint): its kill left partial output for the rerun to resume from."""
        return False

    def readable(self, out: Path) -> list[str]:
        """Problems a reader meets right after a kill (before the rerun); by default none are checked."""
        return []

    def at_kill(self, out: Path) -> Any:
        """What the rerun should resume from (training: each stage's last committed epoch)."""
        return None

    def after_clean(self, out: Path, inputs: Path) -> None:
        """What the clean run's output may give other jobs' inputs (the cells table: ground's starting state)."""

    def resume_problems(self, at_kill: Any, out: Path) -> list[str]:
        return []


@dataclass
class Sizes:
    """How big the inputs are: ``ci`` for the test, ``bench`` for the benchmark."""

    videos: int = 4  # jobs.extract: synthetic video files
    video_s: tuple[float, float] = (4.0, 5.0)  # 1 C3D clip each at 4 fps
    library: int = 24  # index_library, ground, train: synthetic feature-level videos
    train_stages: str = "1"
    train_epochs: tuple[int, int, int, int] = (3, 1, 1, 2)  # stages 1, 2, 3, 4


SIZES = {"ci": Sizes(), "bench": Sizes(videos=12, video_s=(6.0, 12.0), library=96, train_stages="1,2,4",
                                       train_epochs=(3, 2, 1, 2))}


class ExtractJob(FaultJob):
    """``jobs.extract`` on a few synthetic videos, one video per Parquet shard (so a rerun resumes between them)."""

    name = "extract"

    def __init__(self, sizes: Sizes) -> None:
        self.sizes = sizes
        self.videos = Path()

    def prepare(self, inputs: Path, runner: JobRunner) -> None:
        from pipeline.synthetic import make_library

        lo, hi = self.sizes.video_s
        library = make_library(inputs / "library", num_videos=self.sizes.videos, seed=2, min_duration_s=lo,
                               max_duration_s=hi, width=64, height=48)
        self.videos = Path(library["video_dir"])

    def command(self, out: Path) -> list[str]:
        return [PYTHON, "-m", "jobs.extract", "--videos", str(self.videos), "--out", str(out / "features"),
                "--weights", "random", "--fps", "4", "--clip-stride", "8", "--dtype", "float32",
                "--videos-per-shard", "1", "--no-progress"]

    def state(self, out: Path) -> dict[str, Any]:
        from drn.store import FeatureStore

        store = FeatureStore(out / "features")
        videos = store.videos().to_pandas().drop(columns=["shard"])
        clips = [{"video_id": v.video_id, "clip_start_s": v.clip_start_s, "clip_end_s": v.clip_end_s,
                  "features": v.features.astype(np.float32)} for v in store.iter_videos(store.ok_video_ids())]
        return {"metadata": store.metadata, "videos": videos, "clips": pd.DataFrame(clips),
                "duplicates": shard_duplicates(out / "features")}

    def compare(self, clean: dict[str, Any], got: dict[str, Any]) -> list[str]:
        problems = [f"store metadata differs: {got['metadata']} vs {clean['metadata']}"
                    ] if got["metadata"] != clean["metadata"] else []
        problems += got["duplicates"]
        problems += compare_frames("videos", clean["videos"], got["videos"], ["video_id"])
        return problems + compare_frames("clips", clean["clips"], got["clips"], ["video_id"], atol=2e-2, rtol=2e-2)

    def in_flight(self, out: Path, since_ns: int) -> list[str]:
        root = out / "features"
        if not root.exists():
            return []
        sealed = {p.stem for p in (root / "videos").glob("*.parquet") if not p.name.startswith(".")}
        open_shards = [f"clips/{p.name} has no videos/ partner" for p in (root / "clips").glob("*.parquet")
                       if p.stem not in sealed and written_since(p, since_ns)]
        return open_shards + tmp_files(root, since_ns)

    def committed(self, out: Path, since_ns: int) -> bool:
        return any(written_since(p, since_ns) for p in (out / "features" / "videos").glob("*.parquet"))

    def readable(self, out: Path) -> list[str]:
        from drn.store import FeatureStore

        if not (out / "features" / "videos").is_dir():
            return []
        try:
            if len(FeatureStore(out / "features")):  # an empty store (no shard sealed yet) has nothing to read
                self.state(out)
        except Exception as error:
            return [f"the feature store does not open after the kill: {type(error).__name__}: {error}"]
        return []


def shard_duplicates(root: Path) -> list[str]:
    """Videos recorded in more than one sealed shard, and (video, chunk) clip rows written twice."""
    import pyarrow.parquet as pq

    sealed = sorted(p for p in (root / "videos").glob("*.parquet") if not p.name.startswith("."))
    ids = [v for p in sealed for v in pq.read_table(p, columns=["video_id"]).column("video_id").to_pylist()]
    chunks = [c for p in sealed if (root / "clips" / p.name).exists()
              for c in pq.read_table(root / "clips" / p.name, columns=["video_id", "chunk"]).to_pylist()]
    problems = []
    if len(ids) != len(set(ids)):
        problems.append(f"videos/: {len(ids) - len(set(ids))} videos recorded in more than one sealed shard")
    keys = [(c["video_id"], c["chunk"]) for c in chunks]
    if len(keys) != len(set(keys)):
        problems.append(f"clips/: {len(keys) - len(set(keys))} (video, chunk) rows written twice")
    return problems


class LibraryInputs:
    """The feature-level library, a checkpoint with a retrieval head and a query collection (index, ground)."""

    def __init__(self, sizes: Sizes) -> None:
        self.sizes = sizes
        self.features = self.annotations = self.checkpoint = self.queries = Path()

    def prepare(self, inputs: Path) -> None:
        if (inputs / "checkpoint.pt").exists():
            self._paths(inputs)
            return
        from drn.datasets.synthetic import make_synthetic_benchmark

        make_synthetic_benchmark(inputs, num_videos=self.sizes.library, feature_dim=16, seed=3)
        self._paths(inputs)
        texts = [json.loads(line)["query"] for split in ("train", "val", "test")
                 for line in (self.annotations / f"{split}.jsonl").read_text().splitlines() if line.strip()]
        self.queries.write_text("".join(f"{t}\n" for t in dict.fromkeys(texts)))
        write_checkpoint(self.checkpoint)

    def _paths(self, inputs: Path) -> None:
        self.features, self.annotations = inputs / "features", inputs / "annotations"
        self.checkpoint, self.queries = inputs / "checkpoint.pt", inputs / "queries.txt"


def write_checkpoint(path: Path) -> None:
    """A tiny DRN with random weights spread wide (every weight plus seeded noise) and its retrieval head marked
    trained: scores and candidates that differ from video to video and query to query, so that ranks are not decided
    by rounding. The rows need no meaning here; their computation is the jobs' own."""
    import torch

    from drn.checkpoint import save_checkpoint
    from drn.config import load_config
    from drn.model import new_model
    from drn.text import vocabulary_and_vectors

    config = load_config(REPO / "configs" / "synthetic.yaml", [*TINY_MODEL, "model.feature_dim=16",
                                                                "model.retrieval_dim=8"])
    vocab, _ = vocabulary_and_vectors([], config.text)
    torch.manual_seed(0)
    model = new_model(config, vocab).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * NOISE)
    model.retrieval.trained_epochs.fill_(1)
    save_checkpoint(path, model, vocab, stage=4, metrics={"train_duration_s": {"median": 30.0, "p95": 40.0}})


NOISE = 0.3


def index_command(inputs: LibraryInputs, db: Path) -> list[str]:
    """``jobs.index_library`` over the library into ``db``, a few videos per merge."""
    return [PYTHON, "-m", "jobs.index_library", "--checkpoint", str(inputs.checkpoint), "--features",
            str(inputs.features), "--db", str(db), "--videos-per-batch", "4", "--write-batch-rows", "40",
            "--no-progress"]


class LanceDbJob(FaultJob):
    """A job whose output is a LanceDB folder, ``out/db``: its writes are judged by Lance's commits."""

    def in_flight(self, out: Path, since_ns: int) -> list[str]:
        return lance_in_flight(out / "db", since_ns)

    def readable(self, out: Path) -> list[str]:
        return lance_readable(out / "db")

    def committed(self, out: Path, since_ns: int) -> bool:
        return lance_committed(out / "db", since_ns)


class IndexLibraryJob(LanceDbJob):
    """``jobs.index_library``: the cells table, written in several merges (a few videos per write)."""

    name = "index_library"

    def __init__(self, sizes: Sizes) -> None:
        self.inputs = LibraryInputs(sizes)

    def prepare(self, inputs: Path, runner: JobRunner) -> None:
        self.inputs.prepare(inputs)

    def command(self, out: Path) -> list[str]:
        return index_command(self.inputs, out / "db")

    def state(self, out: Path) -> dict[str, Any]:
        from moments.index.cells import CellsTable

        table = CellsTable(out / "db")
        rows = table.table.to_arrow().to_pandas()
        if len(rows):
            table.nearest(np.asarray(rows["vector"].iloc[0]), 3)  # the table answers searches
        return {"info": table.info, "cells": rows, "indices": sorted(c.columns[0] for c in
                                                                     table.table.list_indices()),
                "tables": table_counts(out / "db")}

    def compare(self, clean: dict[str, Any], got: dict[str, Any]) -> list[str]:
        problems = [f"cells info differs: {got['info']} vs {clean['info']}"] if got["info"] != clean["info"] else []
        problems += compare_counts(clean["tables"], got["tables"])
        if got["indices"] != clean["indices"]:
            problems.append(f"cells indices differ: {got['indices']} vs {clean['indices']}")
        return problems + compare_frames("cells", clean["cells"], got["cells"], ["video_id", "cell"], atol=1e-5)

    def after_clean(self, out: Path, inputs: Path) -> None:
        if not (inputs / CELLS_DB / "cells.lance").is_dir():
            shutil.rmtree(inputs / CELLS_DB, ignore_errors=True)
            shutil.copytree(out / "db", inputs / CELLS_DB)  # modification times kept: see lance_in_flight


CELLS_DB = "cells_db"


def table_counts(db: Path) -> dict[str, int]:
    """Every table of the LanceDB at ``db`` with its row count (tables the comparison does not know by name)."""
    import lancedb

    connection = lancedb.connect(str(db))
    return {name: connection.open_table(name).count_rows() for name in connection.list_tables().tables}


def compare_counts(clean: dict[str, int], got: dict[str, int]) -> list[str]:
    return [] if clean == got else [f"tables and row counts differ: {got} vs {clean} in the clean run"]


def lance_readable(db: Path) -> list[str]:
    """Every table of the LanceDB at ``db`` opens and counts its rows (a reader right after a kill)."""
    import lancedb

    if not db.is_dir():
        return []
    problems = []
    connection = lancedb.connect(str(db))
    for name in connection.list_tables().tables:
        try:
            connection.open_table(name).count_rows()
        except ValueError as error:
            if "was not found" not in str(error):  # a table being created: not there yet for readers
                problems.append(f"table {name} does not open after the kill: {error}")
        except Exception as error:
            problems.append(f"table {name} does not open after the kill: {type(error).__name__}: {error}")
    return problems


class GroundJob(LanceDbJob):
    """``jobs.ground`` candidate-driven (a cells table in the database), keeping each query's best moments."""

    name = "ground"

    def __init__(self, sizes: Sizes) -> None:
        self.inputs = LibraryInputs(sizes)
        self.base = Path()

    def prepare(self, inputs: Path, runner: JobRunner) -> None:
        """The library, and the cells table of the checkpoint (written by ``jobs.index_library``) that every trial
        starts from."""
        self.inputs.prepare(inputs)
        self.base = inputs / CELLS_DB
        if not (self.base / "cells.lance").is_dir():
            shutil.rmtree(self.base, ignore_errors=True)
            result = runner.run(index_command(self.inputs, self.base), inputs / f"{CELLS_DB}.log")
            if result.returncode != 0:
                shutil.rmtree(self.base, ignore_errors=True)
                raise RuntimeError(f"jobs.index_library failed (exit {result.returncode}):\n{result.tail()}")

    def fresh(self, out: Path) -> None:
        out.mkdir(parents=True)
        shutil.copytree(self.base, out / "db")

    def command(self, out: Path) -> list[str]:
        i = self.inputs
        return [PYTHON, "-m", "jobs.ground", "--checkpoint", str(i.checkpoint), "--features", str(i.features),
                "--queries", str(i.queries), "--db", str(out / "db"), "--candidates", "12", "--keep-per-query", "20",
                "--top-k", "3", "--videos-per-batch", "4", "--write-batch-rows", "60", "--no-progress"]

    def state(self, out: Path) -> dict[str, Any]:
        import lancedb

        from moments.index import Index
        from moments.index.runs import read_runs

        db = str(out / "db")
        index = Index(db)
        segments = index.to_pandas()
        if len(segments):
            index.search(str(segments["query_text"].iloc[0]), k=3)  # the index answers searches
        connection = lancedb.connect(db)
        runs = pd.DataFrame([{k: v for k, v in asdict(r).items() if k != "recorded_at"}
                             for r in read_runs(db).values()])
        return {"segments": segments, "queries": connection.open_table("queries").to_arrow().to_pandas(),
                "run_videos": connection.open_table("run_videos").to_arrow().to_pandas(), "runs": runs,
                "tables": table_counts(out / "db")}

    def compare(self, clean: dict[str, Any], got: dict[str, Any]) -> list[str]:
        return (compare_counts(clean["tables"], got["tables"])
                + compare_frames("segments", clean["segments"], got["segments"], ["run_id", "query_id", "video_id",
                                                                                  "rank"])
                + compare_frames("queries", clean["queries"], got["queries"], ["run_id", "query_id"])
                + compare_frames("run_videos", clean["run_videos"], got["run_videos"],
                                 ["segments_table", "run_id", "video_id"])
                + compare_frames("runs", clean["runs"], got["runs"], ["run_id"]))


class TrainJob(FaultJob):
    """``jobs.train --num-workers 1`` (Ray Train: epoch checkpoints, stages skipped once done, resumable)."""

    name = "train"
    run_name = "faults"

    def __init__(self, sizes: Sizes) -> None:
        self.sizes = sizes
        self.inputs = LibraryInputs(sizes)

    def prepare(self, inputs: Path, runner: JobRunner) -> None:
        self.inputs.prepare(inputs)

    def command(self, out: Path) -> list[str]:
        e1, e2, e3, e4 = self.sizes.train_epochs
        sets = [*TINY_MODEL, "model.retrieval_dim=8", f"train.stage1.epochs={e1}", f"train.stage2.epochs={e2}",
                f"train.stage3.epochs={e3}", f"retrieval.epochs={e4}"]
        return [PYTHON, "-m", "jobs.train", "--config", str(REPO / "configs" / "synthetic.yaml"),
                "--features", str(self.inputs.features), "--annotations", str(self.inputs.annotations),
                "--out", str(out / "runs"), "--name", self.run_name, "--num-workers", "1", "--quiet",
                "--stages", self.sizes.train_stages, *[a for s in sets for a in ("--set", s)]]

    def stage_dirs(self, out: Path) -> dict[int, Path]:
        return {int(p.name.rsplit("stage", 1)[1]): p for p in (out / "runs").glob(f"{self.run_name}-stage*")}

    def state(self, out: Path) -> dict[str, Any]:
        from drn.checkpoint import load_checkpoint

        runs = out / "runs"
        model, config, _ = load_checkpoint(runs / self.run_name / "best.pt")
        summary = json.loads((runs / self.run_name / "summary.json").read_text())
        stages = {}
        for number, folder in self.stage_dirs(out).items():
            done = json.loads((folder / "DONE.json").read_text())
            load_checkpoint(done["model"])  # the stage's best epoch opens
            stages[number] = {"done": sorted(done), "epochs": snapshot_epochs(folder)}
        return {"config": config.to_dict(), "weights": {k: tuple(v.shape) for k, v in model.state_dict().items()},
                "summary": sorted(summary), "stages": stages}

    def compare(self, clean: dict[str, Any], got: dict[str, Any]) -> list[str]:
        """Structure, not weights: training is not bit-reproducible (a resumed epoch draws other batches)."""
        problems = [f"best.pt: {what} differs" for what in ("config", "weights", "summary")
                    if got[what] != clean[what]]
        if sorted(got["stages"]) != sorted(clean["stages"]):
            problems.append(f"stages done: {sorted(got['stages'])} vs {sorted(clean['stages'])}")
        for number, stage in got["stages"].items():
            epochs = stage["epochs"]
            last = max(clean["stages"].get(number, {}).get("epochs") or [0])
            if len(epochs) != len(set(epochs)) or not epochs or max(epochs) != last:
                problems.append(f"stage {number}: checkpoints of epochs {epochs}; the clean run ended at {last}")
            if stage["done"] != clean["stages"].get(number, {}).get("done"):
                problems.append(f"stage {number}: DONE.json fields differ")
        return problems

    def in_flight(self, out: Path, since_ns: int) -> list[str]:
        found = tmp_files(out / "runs", since_ns) if (out / "runs").exists() else []
        for number, folder in self.stage_dirs(out).items():
            listed = snapshot_dirs(folder)
            if listed is None and (folder / SNAPSHOT).exists():
                found.append(f"stage {number}: checkpoint snapshot unreadable")
            epochs = {p.name for p in folder.glob("epoch*") if p.is_dir() and written_since(p, since_ns)}
            found += [f"stage {number}: {name} not in the snapshot" for name in sorted(epochs - set(listed or []))]
        return found

    def committed(self, out: Path, since_ns: int) -> bool:
        files = [folder / name for folder in self.stage_dirs(out).values() for name in (SNAPSHOT, "DONE.json")]
        return any(f.exists() and written_since(f, since_ns) for f in files)

    def at_kill(self, out: Path) -> dict[int, Any]:
        """Per stage: its DONE.json text when done, else the last epoch its snapshot commits (None: none)."""
        marks: dict[int, Any] = {}
        for number, folder in self.stage_dirs(out).items():
            done = folder / "DONE.json"
            marks[number] = ("done", done.read_text()) if done.exists() else ("running", latest_epoch(folder))
        return marks

    def resume_problems(self, at_kill: dict[int, Any], out: Path) -> list[str]:
        """A stage done before the last kill is skipped (its DONE.json unchanged); the stage that was running
        resumes from its last committed epoch."""
        problems = []
        for number, (status, mark) in sorted(at_kill.items()):
            done_file = self.stage_dirs(out)[number] / "DONE.json"
            if status == "done":
                if done_file.read_text() != mark:
                    problems.append(f"stage {number} was done before the kill, yet the rerun ran it again")
                continue
            done = json.loads(done_file.read_text())
            expected = (mark or 0) + 1
            if done.get("first_epoch") != expected or bool(done.get("resumed")) != (mark is not None):
                problems.append(f"stage {number}: resumed={done.get('resumed')} from epoch {done.get('first_epoch')}"
                                f"; its last checkpoint at the kill was epoch {mark}")
        return problems

    def readable(self, out: Path) -> list[str]:
        best = out / "runs" / self.run_name / "best.pt"
        if not best.exists():
            return []
        from drn.checkpoint import load_checkpoint

        try:
            load_checkpoint(best)
        except Exception as error:
            return [f"best.pt does not open after the kill: {type(error).__name__}: {error}"]
        return []


SNAPSHOT = "checkpoint_manager_snapshot.json"


def read_snapshot(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / SNAPSHOT).read_text())
    except (OSError, ValueError):
        return None


def snapshot_dirs(folder: Path) -> list[str] | None:
    snapshot = read_snapshot(folder)
    if snapshot is None:
        return None
    return [r["checkpoint_dir_name"] for r in snapshot.get("checkpoint_results", [])]


def snapshot_epochs(folder: Path) -> list[int]:
    snapshot = read_snapshot(folder) or {}
    return sorted(int(r["metrics"]["epoch"]) for r in snapshot.get("checkpoint_results", []))


def latest_epoch(folder: Path) -> int | None:
    latest = (read_snapshot(folder) or {}).get("latest_checkpoint_result")
    return int(latest["metrics"]["epoch"]) if latest else None


JOBS: dict[str, Callable[[Sizes], FaultJob]] = {"extract": ExtractJob, "index_library": IndexLibraryJob,
                                                "ground": GroundJob, "train": TrainJob}


# ----------------------------------------------------------------------------------------------- trials
@dataclass
class JobReport:
    """What the kills of one job found."""

    job: str
    seed: int
    kills: int = 0  # kills that landed (the job was running)
    missed: int = 0  # runs that exited before their kill
    in_write: int = 0  # kills after which an uncommitted write was found
    after_commit: int = 0  # kills after the killed run had committed part of its output
    swept: int = 0  # kills that had to reach processes outside the job's process group
    differences: list[str] = field(default_factory=list)
    clean_s: float = 0.0
    seconds: float = 0.0

    def line(self) -> str:
        return (f"| {self.job} | {self.kills} | {len(self.differences)} | {self.in_write} | {self.after_commit} | "
                f"{self.missed} | {self.clean_s:.1f} | {self.seconds:.0f} |")


def kill_seeds(seed: int, job: str, count: int) -> list[int]:
    """The kill seeds of a harness run: a fixed sequence for (``seed``, ``job``)."""
    rng = random.Random(f"{seed}:{job}")
    return [rng.randrange(2**31) for _ in range(count)]


def kill_delay(kill_seed: int, clean_s: float) -> float:
    """The delay of a kill: uniform within the clean run's duration, fixed by its seed."""
    return random.Random(kill_seed).random() * clean_s


class FaultHarness:
    """Runs the trials of one job in ``work`` and reports what they found; ``say`` prints progress."""

    def __init__(self, job: FaultJob, work: Path, inputs: Path, say: Callable[[str], None] = print,
                 head: RayHead | None = None) -> None:
        self.job, self.work, self.inputs, self.say, self.head = job, work, inputs, say, head
        self.ray_dir = Path(tempfile.mkdtemp(prefix="flt-", dir="/tmp"))  # short: Ray's socket paths
        self.runner = JobRunner(self.ray_dir, head.address if head else None)
        self.clean_state: dict[str, Any] = {}

    def close(self) -> None:
        shutil.rmtree(self.ray_dir, ignore_errors=True)

    def run(self, seeds: Sequence[int], seed: int, chain: int = 1, keep: bool = False) -> JobReport:
        """The clean run, then trials of ``chain`` kills each until every seed's kill landed (a run that exits
        before its kill is a miss; a spare seed of ``seed`` takes its place)."""
        report = JobReport(self.job.name, seed)
        self.job.prepare(self.inputs, self.runner)
        report.clean_s = self.clean_run(report)
        queue, spares = list(seeds), iter(kill_seeds(seed, f"{self.job.name}-spare", 1000))

        def next_seed() -> int:
            return queue.pop(0) if queue else next(spares)

        trial = 0
        while report.clean_s and report.kills < len(seeds) and trial < 3 * len(seeds):
            trial += 1
            out = self.work / f"trial{trial}"
            count = len(report.differences)
            self.trial(out, min(chain, len(seeds) - report.kills), next_seed, report)
            if not keep and len(report.differences) == count:
                shutil.rmtree(out, ignore_errors=True)
        return report

    def clean_run(self, report: JobReport) -> float:
        """The clean run: its duration (0 when it failed) and its state, which every trial is compared with."""
        out = self.work / "clean"
        self.job.fresh(out)
        result = self.runner.run(self.job.command(out), out / "job.log")
        self.say(f"{self.job.name}: clean run {result.seconds:.1f}s, exit {result.returncode}")
        problems = self.finish_problems(result)
        if not problems:
            try:
                self.clean_state = self.job.state(out)
                self.job.after_clean(out, self.inputs)
            except Exception as error:
                problems.append(f"its output does not open: {type(error).__name__}: {error}")
        problems += [f"a write looks in flight after a clean exit (the definition is wrong): {w}"
                     for w in self.job.in_flight(out, result.started_ns)]
        report.differences += [f"clean run: {p}" for p in problems]
        return 0.0 if problems else result.seconds

    def trial(self, out: Path, kills: int, next_seed: Callable[[], int], report: JobReport) -> None:
        """Runs killed until ``kills`` kills landed, then a rerun to completion compared with the clean run. A run
        that exits before its kill ends the kills: it is the trial's run to completion (a trial without a kill
        that landed compares nothing)."""
        self.job.fresh(out)
        landed, mark, final = 0, None, None
        while landed < kills:
            killed, mark, result = self.kill_once(out, next_seed(), report, mark)
            landed += killed
            if not killed:
                final = result
                break
        if not landed:  # the trial's first run finished before its kill: it must have finished well
            report.differences += [f"{out.name}: {p}" for p in self.finish_problems(final)]
            return
        final = final or self.runner.run(self.job.command(out), out / "job.log",
                                         timeout_s=max(300.0, 6 * report.clean_s))
        problems = self.finish_problems(final)
        if not problems:
            try:
                problems = self.job.compare(self.clean_state, self.job.state(out))
            except Exception as error:
                problems = [f"the output does not open after the rerun: {type(error).__name__}: {error}"]
        if not problems and mark is not None:
            try:
                problems = self.job.resume_problems(mark, out)
            except Exception as error:
                problems = [f"the resumption cannot be checked: {type(error).__name__}: {error}"]
        for problem in problems:
            self.say(f"  DIFFERENCE ({out.name}): {problem}")
        report.differences += [f"{out.name}: {p}" for p in problems]
        self.say(f"{self.job.name} {out.name}: rerun {final.seconds:.1f}s, "
                 f"{'same as the clean run' if not problems else f'{len(problems)} difference(s)'}")

    def kill_once(self, out: Path, kill_seed: int, report: JobReport, mark: Any) -> tuple[int, Any, RunResult]:
        """One run killed after its seed's delay: (1 if the kill landed else 0, what a rerun resumes from, the
        run)."""
        delay = kill_delay(kill_seed, report.clean_s)
        result = self.runner.run(self.job.command(out), out / "job.log", kill_after_s=delay)
        head = f"{self.job.name} {out.name}: kill seed={kill_seed} delay={delay:.2f}s"
        if result.returncode is not None:
            report.missed += 1
            self.say(f"{head}: missed, the job had exited ({result.returncode}) after {result.seconds:.1f}s")
            return 0, mark, result
        writes = self.job.in_flight(out, result.started_ns)
        partial = self.job.committed(out, result.started_ns)
        report.kills += 1
        report.in_write += int(bool(writes))
        report.after_commit += int(partial)
        report.swept += int(result.swept > 0)
        problems = self.job.readable(out)
        problems += [f"processes alive 30 s after the kill: {result.leftovers}"] if result.leftovers else []
        problems += ["the Ray head died with the job"] if self.head is not None and not self.head.alive() else []
        report.differences += [f"{out.name}: {p}" for p in problems]
        shown = f"during a write ({'; '.join(writes[:2])}{' ...' if len(writes) > 2 else ''})" if writes else \
            "no write in flight"
        shown += ", after it committed part of its output" if partial else ", before it committed anything"
        swept = f", {result.swept} of its processes outside its process group" if result.swept else ""
        self.say(f"{head}: killed{swept}, {shown}; its last line: {result.tail(1)[:100]!r}"
                 + "".join(f"\n  DIFFERENCE: {p}" for p in problems))
        return 1, self.job.at_kill(out), result

    def finish_problems(self, result: RunResult) -> list[str]:
        """A run that should have finished: its exit status and what it left running."""
        problems = []
        if result.returncode != 0:
            problems.append(f"the job did not finish (exit {result.returncode}):\n{result.tail()}")
        if result.leftovers:
            problems.append(f"processes left after the job exited: {result.leftovers}")
        return problems


def run_job(name: str, work: Path, *, kills: int, seed: int, chain: int = 1, size: str = "ci",
            inputs: Path | None = None, seeds: Sequence[int] | None = None, keep: bool = False,
            ray: str | RayHead = "local", say: Callable[[str], None] = print) -> JobReport:
    """``kills`` random kills of job ``name`` (or the kills of ``seeds``), ``chain`` of them per trial, in
    ``work``; the jobs' inputs are written once into ``inputs`` (default ``work/inputs``), which jobs may share.
    ``ray``: "local" (each run starts its own Ray, killed with it), "cluster" (the runs join a Ray head started
    for them) or a running :class:`RayHead` to join."""
    started = time.perf_counter()
    head = RayHead(Path(tempfile.mkdtemp(prefix="flh-", dir="/tmp"))) if ray == "cluster" else ray
    harness = FaultHarness(JOBS[name](SIZES[size]), work, inputs or work / "inputs", say,
                           head if isinstance(head, RayHead) else None)
    try:
        report = harness.run(list(seeds) if seeds else kill_seeds(seed, name, kills), seed, chain, keep)
    finally:
        harness.close()
        if ray == "cluster" and isinstance(head, RayHead):
            head.stop()
            shutil.rmtree(head.base, ignore_errors=True)
    report.seconds = time.perf_counter() - started
    return report
