"""The demo's steps as library code: the whole project on an embedded default (DESIGN.md section 1, item 7).

``run_demo(DemoSettings(out="demo_output"))`` generates a synthetic video library, extracts C3D features with
random weights on local Ray Data, trains DRN's three stages on Ray Train, evaluates on the held-out test queries
beside the no-video baselines, grounds the test queries against the whole library into a local LanceDB and runs a
few searches. Each step is a function of its own, so a notebook or a test can run any of them alone.

Output folder layout (``DemoPaths``): ``library/`` (videos and JSONL annotations), ``features/`` (the feature
store), ``runs/`` (Ray Train storage; ``runs/demo/best.pt`` is the chosen checkpoint), ``eval/`` (prediction files
of the model and the baselines), ``lancedb/`` (the ``segments`` table), ``queries.txt`` and ``demo.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from drn.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
DEFAULT_OUT = Path("demo_output")
MARKER = "demo.json"
OWNED = ("library", "features", "runs", "eval", "lancedb", "queries.txt", MARKER)
RUN_NAME = "demo"
STEPS = 7

# Words that appear in no synthetic query, for a search that only the meaning of the words can answer.
PARAPHRASE_WORDS = {  # each maps to the right colour, shape or motion in MiniLM's space (checked on all 45 queries)
    "red": "crimson", "green": "lime", "blue": "navy",
    "square": "box", "circle": "disc", "triangle": "pyramid",
    "moves left": "slides leftward", "moves right": "slides rightward", "moves up": "rises",
    "moves down": "sinks", "grows": "expands",
}


@dataclass(frozen=True)
class DemoSettings:
    """Everything the demo can vary. The defaults take a few minutes on 2 CPU cores (docs/demo.md)."""

    out: Path = DEFAULT_OUT
    size: int = 60  # videos in the synthetic library (cross-video ranks need this many to generalise)
    seed: int = 0
    min_duration_s: float = 12.0
    max_duration_s: float = 20.0
    video_fps: float = 25.0  # the frame rate the videos are written at
    fps: float = 8.0  # extraction resamples to this rate before cutting clips
    clip_stride: int = 16  # frames between clip starts (C3D clips are 16 frames)
    weights: str = "random"  # or the path of the Sports-1M c3d.pickle
    config: Path = DEMO_CONFIG
    overrides: tuple[str, ...] = ()  # "key=value" config overrides
    num_workers: int = 1  # Ray Train workers
    use_gpu: bool = False
    force: bool = False
    progress: bool = True

    def check(self) -> None:
        """InputError for settings that cannot work, naming the flag."""
        if self.size < 1:
            raise InputError(f"--size must be at least 1 (the number of videos), not {self.size}")
        if self.size < 5:
            raise InputError(f"--size must be at least 5 so that train, val and test each get a video, not {self.size}")
        if not 0 < self.min_duration_s <= self.max_duration_s:
            raise InputError("durations must satisfy 0 < --min-duration <= --max-duration")
        if not self.fps > 0:
            raise InputError(f"--fps must be positive, not {self.fps}")
        if self.clip_stride < 1:
            raise InputError(f"--clip-stride must be positive, not {self.clip_stride}")
        if self.num_workers < 1:
            raise InputError(f"--num-workers must be at least 1, not {self.num_workers}")
        if not Path(self.config).is_file():
            raise InputError("no such config file", path=self.config)
        if self.weights != "random" and "://" not in self.weights and not Path(self.weights).is_file():
            raise InputError("no such C3D weights file (give the Sports-1M c3d.pickle, or 'random')",
                             path=self.weights)


@dataclass(frozen=True)
class DemoPaths:
    """Where each step writes, under one output folder."""

    out: Path

    @property
    def library(self) -> Path:
        return self.out / "library"

    @property
    def videos(self) -> Path:
        return self.library / "videos"

    @property
    def annotations(self) -> Path:
        return self.library / "annotations"

    @property
    def features(self) -> Path:
        return self.out / "features"

    @property
    def runs(self) -> Path:
        return self.out / "runs"

    @property
    def eval(self) -> Path:
        return self.out / "eval"

    @property
    def db(self) -> Path:
        return self.out / "lancedb"

    @property
    def queries(self) -> Path:
        return self.out / "queries.txt"

    @property
    def marker(self) -> Path:
        return self.out / MARKER


@dataclass
class DemoReport:
    """What the demo did: per-step seconds, the evaluation table, the grounding run and the searches."""

    paths: DemoPaths
    seconds: dict[str, float] = field(default_factory=dict)
    library: dict[str, Any] = field(default_factory=dict)
    extraction: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, dict[str, Any]] = field(default_factory=dict)
    grounding: dict[str, Any] = field(default_factory=dict)
    searches: list[dict[str, Any]] = field(default_factory=list)
    search: dict[str, Any] = field(default_factory=dict)  # video_first: {"hits", "queries"} across the library

    def to_json(self) -> str:
        data = asdict(self)
        data["paths"] = {name: str(getattr(self.paths, name)) for name in
                         ("out", "videos", "annotations", "features", "runs", "eval", "db", "queries")}
        return json.dumps(data, indent=2, default=str)


# --- the output folder --------------------------------------------------------------------------------------------

def prepare_output(out: str | os.PathLike, force: bool) -> DemoPaths:
    """Check (and with ``force`` clear the demo's own parts of) the output folder; InputError when unusable.

    An existing non-empty folder is refused without ``force``; with it, only the demo's own entries (``OWNED``)
    are removed, so other files there survive. Nothing is removed before every check has passed.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError("the output path exists and is not a folder", path=out)
    existing = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if existing and not force:
        raise InputError(f"the output folder is not empty ({len(existing)} entries, e.g. {existing[0]!r}); "
                         "pass --force to replace the demo's files in it, or choose another --out", path=out)
    _check_writable(out)
    if force:
        for name in OWNED:
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    return DemoPaths(out)


def _check_writable(out: Path) -> None:
    probe_dir = out
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise InputError(f"cannot create the output folder: {probe_dir} is not a folder", path=out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise InputError(f"the output folder is not writable ({error.strerror or error})", path=out) from None


# --- progress -----------------------------------------------------------------------------------------------------

class StepPrinter:
    """Step headers with their timings: ``[2/7] Extracting C3D features`` ... ``done in 81.2 s``."""

    def __init__(self, report: DemoReport, echo: Callable[[str], None] = print, total: int = STEPS) -> None:
        self.report, self.echo, self.total, self.number = report, echo, total, 0
        self.started = time.perf_counter()

    @contextmanager
    def step(self, key: str, title: str) -> Iterator[None]:
        self.number += 1
        self.echo(f"\n[{self.number}/{self.total}] {title}")
        began = time.perf_counter()
        yield
        seconds = time.perf_counter() - began
        self.report.seconds[key] = round(seconds, 1)
        self.echo(f"    done in {seconds:.1f} s (total {time.perf_counter() - self.started:.1f} s)")

    def finish(self) -> float:
        total = time.perf_counter() - self.started
        self.report.seconds["total"] = round(total, 1)
        return total


# --- the steps ----------------------------------------------------------------------------------------------------

def generate_library(settings: DemoSettings, paths: DemoPaths) -> dict[str, Any]:
    """Step 1: the synthetic video library and its train/val/test annotations."""
    from pipeline.synthetic import make_library

    return make_library(paths.library, num_videos=settings.size, seed=settings.seed,
                        min_duration_s=settings.min_duration_s, max_duration_s=settings.max_duration_s,
                        fps=settings.video_fps, progress=settings.progress)


def extract_features(settings: DemoSettings, paths: DemoPaths, echo: Callable[[str], None] = print
                     ) -> dict[str, Any]:
    """Step 2: C3D fc6 features of every video on Ray Data (random weights unless ``settings.weights``)."""
    from tqdm import tqdm

    from pipeline.c3d import C3DConfig, load_c3d_weights, random_weights_id
    from pipeline.extract import default_resources, run_extraction
    from pipeline.sources import list_videos

    config = C3DConfig(weights=settings.weights, seed=settings.seed, fps=f"{settings.fps:g}",
                       clip_stride=settings.clip_stride)
    if settings.weights == "random":
        weights, sha = None, random_weights_id(settings.seed)
        echo(f"    C3D runs with RANDOM weights (seed {settings.seed}): its features only carry colour and motion "
             "statistics, enough for this synthetic library. For real videos pass the Sports-1M weights: "
             "--weights c3d.pickle")
    else:
        weights, sha = load_c3d_weights(settings.weights)
        echo(f"    C3D weights: {settings.weights} (sha256 {sha[:12]}...)")
    sources = list_videos(str(paths.videos))
    resources = default_resources(1 if settings.use_gpu else 0, None, torch_threads=None if settings.use_gpu
                                  else max(1, os.cpu_count() or 1))
    clip_s, step_s = 16 / settings.fps, settings.clip_stride / settings.fps
    echo(f"    {len(sources)} videos resampled to {settings.fps:g} fps, 16-frame clips every "
         f"{settings.clip_stride} frames ({clip_s:.1f} s clips every {step_s:.1f} s)")
    bar = tqdm(total=len(sources), unit="video", desc="    extract", disable=not settings.progress)
    summary = run_extraction(sources, str(paths.features), config, weights=weights, weights_sha256=sha,
                             resources=resources, on_video=lambda record: bar.update(1))
    bar.close()
    if summary.done == 0:
        raise InputError(f"no video could be extracted (first failure: {summary.failures[:1]})", path=paths.videos)
    echo(f"    {summary.done} videos, {summary.clips} clips, {summary.failed} failed; C3D computed in "
         f"{summary.compute_dtype}; {summary.throughput_line()}")
    return {"done": summary.done, "failed": summary.failed, "clips": summary.clips,
            "seconds": round(summary.seconds, 1), "weights": sha, "compute_dtype": summary.compute_dtype}


def demo_config(settings: DemoSettings):
    """The DRN config of the demo (``configs/demo.yaml`` plus overrides)."""
    from drn.config import load_config

    return load_config(settings.config, list(settings.overrides))


def train_model(settings: DemoSettings, paths: DemoPaths, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Step 3: DRN's three stages on Ray Train (``fit_distributed``); the best checkpoint's summary."""
    from moments.train.driver import fit_distributed

    config = demo_config(settings)
    stages = config.train
    echo(f"    config {settings.config.name}: D={config.model.feature_dim}, T={config.model.num_segments}; "
         f"epochs {stages.stage1.epochs}/{stages.stage2.epochs}/{stages.stage3.epochs}; "
         f"{settings.num_workers} Ray Train worker(s)")
    epochs = {1: stages.stage1.epochs, 2: stages.stage2.epochs, 3: stages.stage3.epochs}
    with EpochWatcher(paths.runs, epochs, echo):
        summary = fit_distributed(config, paths.features, paths.annotations, "jsonl",
                                  num_workers=settings.num_workers, use_gpu=settings.use_gpu, storage=paths.runs,
                                  name=RUN_NAME, keep_checkpoints=1,
                                  threads=max(1, (os.cpu_count() or 1) // settings.num_workers), progress=False)
    echo(f"    best: stage {summary['stage']} epoch {summary['epoch']} -> {summary['best_checkpoint']}")
    return {k: summary[k] for k in ("best_checkpoint", "stage", "epoch", "val", "pairs")}


class EpochWatcher:
    """Prints one line per finished epoch while Ray Train runs, from the checkpoint snapshots it writes under
    ``runs/<name>-stage<k>/`` (the workers' own output stays in Ray's logs)."""

    SNAPSHOT = "checkpoint_manager_snapshot.json"

    def __init__(self, runs: Path, epochs: dict[int, int], echo: Callable[[str], None], every_s: float = 2.0) -> None:
        self.runs, self.epochs, self.echo, self.every_s = runs, epochs, echo, every_s
        self.seen: set[tuple[int, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="epoch-watcher", daemon=True)

    def __enter__(self) -> EpochWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.poll()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.poll()

    def poll(self) -> None:
        for snapshot in sorted(self.runs.glob(f"{RUN_NAME}-stage*/{self.SNAPSHOT}")):
            try:
                metrics = json.loads(snapshot.read_text())["latest_checkpoint_result"]["metrics"]
                key = (int(metrics["stage"]), int(metrics["epoch"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being written, or another layout: progress lines are best effort
            if key in self.seen:
                continue
            self.seen.add(key)
            stage, epoch = key
            self.echo(f"    stage {stage} epoch {epoch}/{self.epochs.get(stage, '?')}: "
                      f"loss {metrics.get('loss_total', float('nan')):.3f}, "
                      f"val R@1,IoU=0.5 {metrics.get('val_R@1,IoU=0.5', float('nan')):.1f} "
                      f"({metrics.get('pairs_per_s', 0):.1f} pairs/s)")


def local_path(uri: str) -> str:
    """A local file path from a ``file://`` URI or a plain path."""
    return uri[len("file://"):] if uri.startswith("file://") else uri


def model_predictions(checkpoint: str, features: str | os.PathLike, pairs: Sequence) -> list:
    """The model's ranked segments for each pair, grounded in the pair's own video."""
    from drn.inference import Grounder
    from drn.predictions import Prediction
    from drn.store.features import FeatureStore

    grounder = Grounder.from_checkpoint(local_path(checkpoint))
    store = FeatureStore(features)
    by_video: dict[str, list] = {}
    for pair in pairs:
        by_video.setdefault(pair.video_id, []).append(pair)
    predictions = []
    for video_id, video_pairs in by_video.items():
        queries = grounder.encode_queries([p.query for p in video_pairs])
        results = grounder.ground([store.load(video_id)], queries)
        for pair, result in zip(video_pairs, results, strict=True):
            predictions.append(Prediction(pair.qid, video_id, result.segments[:, :3]))
    return predictions


def evaluate_on_test(paths: DemoPaths, checkpoint: str) -> dict[str, dict[str, Any]]:
    """Step 4: R@n,IoU=m and mIoU on the test split of DRN and the no-video baselines (one convention for all)."""
    from drn.baselines import fit_fixed_window, fixed_window_predictions, whole_video_predictions
    from drn.datasets import load_split
    from drn.evaluation import EvalConfig, evaluate
    from drn.predictions import write_predictions
    from drn.store.features import FeatureStore

    durations = FeatureStore(paths.features).durations()
    train = load_split("jsonl", paths.annotations, "train", durations=durations).pairs
    test = load_split("jsonl", paths.annotations, "test", durations=durations).pairs
    window = fit_fixed_window(train)
    methods = {
        "DRN": model_predictions(checkpoint, paths.features, test),
        f"fixed window [{window.start_frac:.2f}, {window.end_frac:.2f}] (fitted on train)":
            fixed_window_predictions(test, window),
        "whole video": whole_video_predictions(test),
    }
    files = {"DRN": "drn_test.jsonl", "whole video": "whole_video_test.jsonl"}
    config = EvalConfig()
    results = {}
    for name, predictions in methods.items():
        write_predictions(paths.eval / files.get(name, "fixed_window_test.jsonl"), predictions)
        result = evaluate(test, {p.qid: p for p in predictions}, config)
        results[name] = {**result.to_dict(), "videos": len({p.video_id for p in test})}
    return results


def format_comparison(results: dict[str, dict[str, Any]]) -> str:
    """The evaluation table: one row per method, R@1 and R@5 at IoU 0.3/0.5/0.7 and mIoU, in percent."""
    columns = ["R@1,IoU=0.3", "R@1,IoU=0.5", "R@1,IoU=0.7", "R@5,IoU=0.5", "R@5,IoU=0.7"]
    width = max(len(name) for name in results)
    header = "method".ljust(width) + "".join(f"  {c:>11}" for c in columns) + "   mIoU"
    lines = [header, "-" * len(header)]
    for name, result in results.items():
        cells = "".join(f"  {result['recall'][c]:>11.2f}" for c in columns)
        lines.append(f"{name.ljust(width)}{cells}  {result['miou']:5.2f}")
    first = next(iter(results.values()))
    lines.append(f"{first['num_queries']} test queries on {first['videos']} held-out videos; "
                 f"convention: {first['convention']['text']}")
    return "\n".join(lines)


def query_collection(paths: DemoPaths) -> list[str]:
    """The test queries' texts, deduplicated in file order, written to ``queries.txt``."""
    from drn.datasets import load_split

    texts = list(dict.fromkeys(p.query for p in load_split("jsonl", paths.annotations, "test").pairs))
    paths.queries.write_text("".join(t + "\n" for t in texts))
    return texts


def ground_collection(paths: DemoPaths, checkpoint: str, run_id: str, use_gpu: bool = False,
                      echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Step 5: every query of ``queries.txt`` against every video, the top segments merged into LanceDB
    (``moments.library.grounding.run_grounding``, the Ray Data program behind ``jobs.ground``)."""
    from moments.library.grounding import Resources, run_grounding

    resources = Resources(num_gpus_per_actor=1.0 if use_gpu else 0.0)
    summary = run_grounding(local_path(checkpoint), str(paths.features), str(paths.queries), str(paths.db),
                            run_id=run_id, resources=resources)
    echo(f"    {summary.throughput_line()}")
    echo(f"    {summary.rows_written} segments written to {paths.db} (table segments, run {summary.run_id!r}, "
         f"checkpoint {summary.checkpoint_id}); {summary.videos_failed} videos failed")
    return {"run_id": summary.run_id, "checkpoint_id": summary.checkpoint_id, "queries": summary.queries,
            "videos": summary.videos_done, "rows": summary.rows_written, "seconds": round(summary.seconds, 1),
            "db": str(paths.db)}


def paraphrase(text: str) -> str | None:
    """``"the red square moves left"`` -> ``"crimson box slides leftward"``: no word in common with any query."""
    words = text.split()
    if len(words) < 4 or words[0] != "the":
        return None
    colour, shape, action = words[1], words[2], " ".join(words[3:])
    if colour not in PARAPHRASE_WORDS or shape not in PARAPHRASE_WORDS or action not in PARAPHRASE_WORDS:
        return None
    return f"{PARAPHRASE_WORDS[colour]} {PARAPHRASE_WORDS[shape]} {PARAPHRASE_WORDS[action]}"


def search_texts(texts: Sequence[str], vocabulary: set[str]) -> list[tuple[str, str]]:
    """(text, why) of the demo's searches: a stored query, a shorter wording, and a paraphrase in new words."""
    chosen: list[tuple[str, str]] = []
    simple = [t for t in texts if paraphrase(t) is not None] or list(texts)
    first = simple[0]
    chosen.append((first, "a query of the collection, word for word"))
    words = first.split()
    if len(words) >= 3:
        chosen.append((f"{words[1]} {words[2]}", "a shorter wording"))
    for text in simple:
        other = paraphrase(text)
        if other and not set(other.split()) & vocabulary:
            chosen.append((other, f"no word in any query (a paraphrase of {text!r})"))
            break
    return chosen


def run_searches(paths: DemoPaths, searches: Sequence[tuple[str, str]], k: int = 3,
                 echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Step 6: search the index for each text and print the results."""
    from moments.index.results import format_results
    from moments.index.table import Index

    index = Index(paths.db)
    found = []
    for text, why in searches:
        results = index.search(text, k=k)
        echo(f'\n    search "{text}"  ({why})')
        echo("\n".join("      " + line for line in format_results(results).splitlines()))
        found.append({"text": text, "why": why, "results": results.select(
            ["query_text", "video_id", "start_s", "end_s", "score"]).to_pylist()})
    return found


def two_stage_search(features: str | os.PathLike, db: str | os.PathLike, checkpoint: str, text: str, k: int = 3,
                     echo: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Index the library's cells (``jobs.index_library``) and answer ``text`` live in two stages: the nearest
    cells, then DRN on the candidate videos only (``moments.search.two_stage``). None for a checkpoint without a
    trained retrieval stage."""
    from drn.checkpoint import read_checkpoint
    from moments.library.cell_indexing import run_index_library
    from moments.search.two_stage import TwoStageSearcher

    if not read_checkpoint(checkpoint)["state_dict"].get("retrieval.trained_epochs", 0):
        return None
    summary = run_index_library(checkpoint, str(features), str(db))
    results = TwoStageSearcher(str(db)).search(text, k=k)
    echo(f'\n    two-stage live search "{text}"  ({summary.rows_in_table} cells in the cells table; DRN ran on the '
         "candidate videos only)")
    for row in results.to_pylist():
        echo(f"      {row['result_rank'] + 1}  {row['video_id']}  {row['start_s']:.2f}-{row['end_s']:.2f} s  "
             f"score {row['score']:.3f} (DRN {row['drn_score']:.3f}, retrieval {row['retrieval_score']:.3f})")
    return {"text": text, "why": "two-stage live search: cells by ANN, then DRN on the candidates",
            "results": results.select(["query_text", "video_id", "start_s", "end_s", "score"]).to_pylist()}


def library_video_hits(paths: DemoPaths, run_id: str) -> dict[str, int]:
    """How often a video that holds the query's moment (any split) is the query's best, or among its 5 best,
    videos across the library: the index ranks videos by their best segment's score."""
    from moments.index.table import Index

    holders: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        for line in (paths.annotations / f"{split}.jsonl").read_text().splitlines():
            if line.strip():
                pair = json.loads(line)
                holders.setdefault(pair["query"], set()).add(pair["video_id"])
    rows = Index(paths.db).to_pandas(run_id=run_id)
    hits = {"queries": 0, "at_1": 0, "at_5": 0}
    for text, group in rows[rows["rank"] == 0].groupby("query_text"):
        order = group.sort_values(["score", "video_id"], ascending=[False, True]).video_id.tolist()
        positions = [order.index(v) for v in holders.get(text, ()) if v in order]
        if positions:
            hits["queries"] += 1
            hits["at_1"] += min(positions) == 0
            hits["at_5"] += min(positions) < 5
    return hits


def video_hits_note(hits: dict[str, int], videos: int, config) -> str:
    """What the library ranks say: how often a video holding the moment came first, and why."""
    measured = (f"a video that holds the moment came first for {hits['at_1']} of {hits['queries']} held-out queries "
                f"(top 5: {hits['at_5']}) among {videos} videos")
    k = config.train.negatives.per_positive
    if k > 0:
        return (f"library ranks: {measured}. Training paired each query with {k} videos that do not hold it "
                "(negative pairs),\n    so scores compare across videos (docs/training.md).")
    return (f"note: trained without negative pairs, DRN's scores rank segments within a video, not videos across the "
            f"library: {measured}.")


def library_vocabulary(paths: DemoPaths) -> set[str]:
    """Every word of every query of the library (all splits)."""
    words: set[str] = set()
    for split in ("train", "val", "test"):
        for line in (paths.annotations / f"{split}.jsonl").read_text().splitlines():
            if line.strip():
                words |= set(json.loads(line)["query"].lower().split())
    return words


def where_things_are(paths: DemoPaths) -> str:
    """The closing note: where each output is and how to open the notebook."""
    out = paths.out
    return "\n".join([
        f"videos and annotations  {paths.library}",
        f"feature store           {paths.features}",
        f"checkpoints             {paths.runs / RUN_NAME} (best.pt, summary.json)",
        f"predictions (test)      {paths.eval}",
        f"search index (LanceDB)  {paths.db}",
        f"report                  {paths.marker}",
        "",
        f'search:    python -m jobs.search "a red circle moves up" --db {paths.db}',
        f"watch:     python -m jobs.serve --db {paths.db} --features {paths.features} --videos {paths.videos}",
        "           then open http://127.0.0.1:8000/ (or run the demo with --serve)",
        f"explore:   DRN_DB={paths.db} DRN_FEATURES={paths.features} DRN_ANNOTATIONS={paths.annotations} "
        "jupyter lab notebooks/explore_results.ipynb",
        f"           (the notebook's defaults already point at {DEFAULT_OUT}/; set the variables for --out {out};",
        "           set-up installs no notebook server: pip install jupyterlab)",
    ])


def run_demo(settings: DemoSettings, echo: Callable[[str], None] = print) -> DemoReport:
    """All steps in order; ``echo`` receives every line the demo prints. Ray is started locally if needed."""
    settings.check()
    paths = prepare_output(settings.out, settings.force)
    report = DemoReport(paths)
    steps = StepPrinter(report, echo)
    _start_ray()
    paths.marker.write_text(json.dumps({"status": "running", "settings": _settings_dict(settings)}, indent=2))

    with steps.step("generate", f"Generating a synthetic video library ({settings.size} videos)"):
        report.library = generate_library(settings, paths)
        echo(f"    {report.library['videos']} videos ({report.library['codec']}) in {paths.videos}; "
             f"queries per split {report.library['queries']}")
    with steps.step("extract", "Extracting C3D features (Ray Data)"):
        report.extraction = extract_features(settings, paths, echo)
    with steps.step("train", "Training DRN, three stages (Ray Train)"):
        report.training = train_model(settings, paths, echo)
    checkpoint = report.training["best_checkpoint"]
    with steps.step("evaluate", "Evaluating on the held-out test queries, beside the no-video baselines"):
        report.evaluation = evaluate_on_test(paths, checkpoint)
        echo("\n".join("    " + line for line in format_comparison(report.evaluation).splitlines()))
    with steps.step("ground", "Grounding the query collection against the library (LanceDB)"):
        texts = query_collection(paths)
        echo(f"    {len(texts)} distinct test queries -> {paths.queries}")
        report.grounding = ground_collection(paths, checkpoint, f"{RUN_NAME}-seed{settings.seed}", settings.use_gpu,
                                             echo)
    with steps.step("search", "Searching the index"):
        report.searches = run_searches(paths, search_texts(texts, library_vocabulary(paths)), echo=echo)
        live = two_stage_search(paths.features, paths.db, local_path(checkpoint), report.searches[-1]["text"],
                                echo=echo)
        report.searches += [live] if live else []
        hits = library_video_hits(paths, report.grounding["run_id"])
        report.grounding["video_hits"] = hits
        report.search = {"video_first": {"hits": hits["at_1"], "queries": hits["queries"]},
                         "video_top5": {"hits": hits["at_5"], "queries": hits["queries"]}}
        echo(f"\n    {video_hits_note(hits, report.grounding['videos'], demo_config(settings))}")
    with steps.step("report", "Where everything is"):
        echo("\n".join("    " + line for line in where_things_are(paths).splitlines()))
    total = steps.finish()
    paths.marker.write_text(json.dumps({"status": "done", "settings": _settings_dict(settings),
                                        "report": json.loads(report.to_json())}, indent=2))
    echo(f"\nThe demo took {total:.0f} s ({total / 60:.1f} min).")
    return report


def _settings_dict(settings: DemoSettings) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()}


def _start_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="warning")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
