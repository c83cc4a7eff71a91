"""The demo's steps, each a function over library code, so a notebook or a test can run any of them alone.

Generate the synthetic library (``pipeline.synthetic``), extract C3D features on Ray Data (``pipeline.extract``),
train on Ray Train (``moments.train``), evaluate beside the no-video baselines (``drn.inference.predict_pairs``,
``drn.evaluation``), ground the test queries into LanceDB (``moments.library.grounding``) and search it
(``moments.index``, ``moments.search.two_stage``). The heavy imports (torch, Ray, LanceDB) are made by the step
that needs them, so that the demo's command line refuses bad input at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from drn.errors import InputError
from moments.demo.report import epoch_line
from moments.demo.settings import RUN_NAME, DemoPaths, DemoSettings
from pipeline.synthetic import SPLITS, paraphrase

Echo = Callable[[str], None]


def generate_library(settings: DemoSettings, paths: DemoPaths) -> dict[str, Any]:
    """Step 1: the synthetic video library and its train/val/test annotations."""
    from pipeline.synthetic import make_library

    return make_library(paths.library, num_videos=settings.size, seed=settings.seed,
                        min_duration_s=settings.min_duration_s, max_duration_s=settings.max_duration_s,
                        fps=settings.video_fps, progress=settings.progress)


def extract_features(settings: DemoSettings, paths: DemoPaths, echo: Echo = print) -> dict[str, Any]:
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


def train_model(settings: DemoSettings, paths: DemoPaths, echo: Echo = print) -> dict[str, Any]:
    """Step 3: DRN's three stages on Ray Train (``fit_distributed``), one line per epoch; the best checkpoint's
    summary."""
    from moments.train.driver import fit_distributed
    from moments.train.progress import EpochWatcher

    config = demo_config(settings)
    stages = config.train
    echo(f"    config {settings.config.name}: D={config.model.feature_dim}, T={config.model.num_segments}; "
         f"epochs {stages.stage1.epochs}/{stages.stage2.epochs}/{stages.stage3.epochs}; "
         f"{settings.num_workers} Ray Train worker(s)")
    epochs = {1: stages.stage1.epochs, 2: stages.stage2.epochs, 3: stages.stage3.epochs}
    with EpochWatcher(paths.runs, RUN_NAME, lambda metrics: echo(epoch_line(metrics, epochs))):
        summary = fit_distributed(config, paths.features, paths.annotations, "jsonl",
                                  num_workers=settings.num_workers, use_gpu=settings.use_gpu, storage=paths.runs,
                                  name=RUN_NAME, keep_checkpoints=1,
                                  threads=max(1, (os.cpu_count() or 1) // settings.num_workers), progress=False)
    echo(f"    best: stage {summary['stage']} epoch {summary['epoch']} -> {summary['best_checkpoint']}")
    return {k: summary[k] for k in ("best_checkpoint", "stage", "epoch", "val", "pairs")}


def evaluate_on_test(paths: DemoPaths, checkpoint: str) -> dict[str, dict[str, Any]]:
    """Step 4: R@n,IoU=m and mIoU on the test split of DRN and the no-video baselines (one convention for all)."""
    from drn.baselines import fit_fixed_window, fixed_window_predictions, whole_video_predictions
    from drn.datasets import load_split
    from drn.evaluation import EvalConfig, evaluate
    from drn.inference import predict_pairs
    from drn.predictions import write_predictions
    from drn.store import FeatureStore

    durations = FeatureStore(paths.features).durations()
    train = load_split("jsonl", paths.annotations, "train", durations=durations).pairs
    test = load_split("jsonl", paths.annotations, "test", durations=durations).pairs
    window = fit_fixed_window(train)
    methods = {
        "DRN": predict_pairs(checkpoint, paths.features, test).predictions,
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


def query_collection(paths: DemoPaths) -> list[str]:
    """The test queries' texts, deduplicated in file order, written to ``queries.txt``."""
    from drn.datasets import load_split

    texts = list(dict.fromkeys(p.query for p in load_split("jsonl", paths.annotations, "test").pairs))
    paths.queries.write_text("".join(t + "\n" for t in texts))
    return texts


def ground_collection(paths: DemoPaths, checkpoint: str, run_id: str, use_gpu: bool = False,
                      echo: Echo = print) -> dict[str, Any]:
    """Step 5: every query of ``queries.txt`` against every video, the top segments merged into LanceDB
    (``moments.library.grounding.run_grounding``, the Ray Data program behind ``jobs.ground``)."""
    from drn.store.object_store import local_path
    from moments.library.grounding import Resources, run_grounding

    resources = Resources(num_gpus_per_actor=1.0 if use_gpu else 0.0)
    summary = run_grounding(local_path(checkpoint) or checkpoint, str(paths.features), str(paths.queries),
                            str(paths.db), run_id=run_id, resources=resources)
    echo(f"    {summary.throughput_line()}")
    echo(f"    {summary.rows_in_run} segments in {paths.db} (table segments, run {summary.run_id!r}, "
         f"checkpoint {summary.checkpoint_id}); {summary.videos_failed} videos failed")
    return {"run_id": summary.run_id, "checkpoint_id": summary.checkpoint_id, "queries": summary.queries,
            "videos": summary.videos_done, "rows": summary.rows_in_run, "seconds": round(summary.seconds, 1),
            "db": str(paths.db)}


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


def library_queries(paths: DemoPaths) -> list[dict[str, Any]]:
    """Every annotation row of the library, all splits."""
    rows = []
    for split in SPLITS:
        for line in (paths.annotations / f"{split}.jsonl").read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows


def library_vocabulary(paths: DemoPaths) -> set[str]:
    """Every word of every query of the library (all splits)."""
    words: set[str] = set()
    for row in library_queries(paths):
        words |= set(row["query"].lower().split())
    return words


def run_searches(paths: DemoPaths, searches: Sequence[tuple[str, str]], k: int = 3,
                 echo: Echo = print) -> list[dict[str, Any]]:
    """Step 6: search the index for each text and print the results."""
    from moments.demo.report import indented
    from moments.index import Index, format_results

    index = Index(paths.db)
    found = []
    for text, why in searches:
        results = index.search(text, k=k)
        echo(f'\n    search "{text}"  ({why})')
        echo(indented(format_results(results), "      "))
        found.append({"text": text, "why": why, "results": results.select(
            ["query_text", "video_id", "start_s", "end_s", "score"]).to_pylist()})
    return found


def two_stage_search(features: str | os.PathLike, db: str | os.PathLike, checkpoint: str, text: str, k: int = 3,
                     echo: Echo = print) -> dict[str, Any] | None:
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
    videos across the whole library: videos rank by their best segment's score (``drn.corpus.RankedMoments``).

    Not ``moments.library.corpus.corpus_from_run``: that evaluates one split as a closed corpus (its own videos and
    texts only), while the demo ranks each held-out text against every video of the library."""
    from drn.corpus import RankedMoments
    from moments.index import Index

    holders: dict[str, set[str]] = {}
    for row in library_queries(paths):
        holders.setdefault(row["query"], set()).add(row["video_id"])
    rows = Index(paths.db).to_pandas(run_id=run_id)
    hits = {"queries": 0, "at_1": 0, "at_5": 0}
    for text, group in rows[rows["rank"] == 0].groupby("query_text"):
        ranked = RankedMoments.rank(group["video_id"].tolist(), group[["start_s", "end_s", "score"]].to_numpy())
        order = ranked.video_order()
        positions = [order.index(v) for v in holders.get(text, ()) if v in order]
        if positions:
            hits["queries"] += 1
            hits["at_1"] += min(positions) == 0
            hits["at_5"] += min(positions) < 5
    return hits
