"""Negative pairs on the recurring-descriptions benchmark: corpus-level ranks with and without them, several seeds;
with ``--candidates``, candidate-driven corpus grounding against exhaustive.

    python benchmarks/corpus.py [--seeds 0 1 2] [--negatives 0 1 2 4] [--videos 400] [--dim 64] [--noise 0.5]
        [--motion-share 0.3] [--threads 2]
    # candidate-driven against exhaustive, for several N and M (the recurring benchmark, then a harder one)
    python benchmarks/corpus.py --negatives 2 --candidates 5 10 20 50 --keep-per-query 5 10 20 100
    python benchmarks/corpus.py --negatives 2 --candidates 5 10 20 50 --keep-per-query 5 10 20 100 --noise 1.0

For each seed: the benchmark of ``drn.datasets.synthetic.make_recurring_benchmark`` (event descriptions such as "the red
ball rises" recur across videos), DRN trained in its three stages on ``configs/synthetic.yaml`` with
``train.negatives.per_positive = K`` for each K of ``--negatives``, then evaluated on the test split both ways:
corpus R@1 and R@10 at IoU 0.5 and video R@1 (every distinct text against every test video, ``drn.corpus``) and
the within-video R@1,IoU=0.5 (each pair in its own video). Also the seconds per stage-1 epoch relative to K = 0.
Prints a markdown table per seed and the mean and spread over seeds.

With ``--candidates N ...`` the model also gets a retrieval stage (``model.retrieval_dim``, ``--retrieval-dim``)
trained as stage 4 after DRN's stages (``drn.retrieval_training.train_retrieval``), and each (seed, K) is also
evaluated candidate-driven (``drn.corpus.ground_corpus(candidates=N)``: the retrieval stage ranks the test videos
of each text exactly by their best cell's cosine, DRN grounds only the N best, as ``jobs.evaluate --corpus
--candidates N``), and each of its rankings and the exhaustive one cut to each text's best M moments
(``--keep-per-query``: what a batch run with ``--keep-per-query M`` keeps). Prints corpus R@1 and R@10 at IoU 0.5,
the R@10 ratio against exhaustive (all moments kept), the pairs DRN scored and the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from drn.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from drn.config import DRNConfig, load_config  # noqa: E402
from drn.corpus import (  # noqa: E402
    CorpusConfig,
    CorpusRun,
    RankedMoments,
    evaluate_corpus,
    ground_corpus,
    within_video_result,
)
from drn.datasets.synthetic import make_recurring_benchmark  # noqa: E402
from drn.inference import Grounder  # noqa: E402
from drn.retrieval_training import train_retrieval  # noqa: E402
from drn.store import FeatureStore  # noqa: E402
from drn.training import fit, stages_from_config  # noqa: E402
from drn.training_setup import TrainingData, prepare_training_data  # noqa: E402


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


@dataclass
class TrainedRun:
    """What ``train_benchmark`` trained: the data, the epoch records, the checkpoint and the seconds it took."""

    data: TrainingData
    epochs: list[dict]
    checkpoint: str
    train_s: float  # DRN's three stages (with preparing the data)
    retrieval_s: float = 0.0  # stage 4, when trained


def train_benchmark(bench, config: DRNConfig, out: Path, with_retrieval: bool = False) -> TrainedRun:
    """DRN's three stages on a feature-level benchmark, keeping the best checkpoint; with ``with_retrieval`` also
    the retrieval stage (stage 4, on the training split's negative filter), saved as ``out/two_stage.pt``."""
    started = time.perf_counter()
    data = prepare_training_data(config, bench.features, bench.annotations)
    epochs: list[dict] = []
    result = fit(data.new_model(), data.vocab, config, data.loader("train"), data.loader("val"), data.val.pairs,
                 out, stages_from_config(config), report=epochs.append, checkpoint_facts=data.checkpoint_facts())
    run = TrainedRun(data, epochs, result.best_checkpoint, time.perf_counter() - started)
    if with_retrieval:  # stage 4 on the selected DRN: the retrieval stage that picks the candidates
        started = time.perf_counter()
        model, _, vocab = load_checkpoint(run.checkpoint)
        train_retrieval(model, data.loader("train"), data.train, data.val, config, negative_filter=data.negatives)
        run.checkpoint = str(Path(out) / "two_stage.pt")
        save_checkpoint(run.checkpoint, model, vocab, stage=4)
        run.retrieval_s = time.perf_counter() - started
    return run


def run_one(bench, seed: int, variant: str, dim: int, out: Path, overrides: list[str],
            candidates: list[int] | None = None, keep_per_query: list[int] | None = None) -> dict:
    torch.manual_seed(seed)
    negatives = int(variant)
    config = load_config(ROOT / "configs" / "synthetic.yaml", [
        f"model.feature_dim={dim}", f"train.seed={seed}", f"train.negatives.per_positive={negatives}",
        *overrides])
    trained = train_benchmark(bench, config, out, with_retrieval=bool(candidates))
    data, epochs, checkpoint = trained.data, trained.epochs, trained.checkpoint
    train_s = trained.train_s + trained.retrieval_s
    stage1 = [e["seconds"] for e in epochs if e["stage"] == 1]
    grounder = Grounder.from_checkpoint(checkpoint)
    store = FeatureStore(bench.features)
    corpus_config = CorpusConfig()
    run = ground_corpus(grounder, store, data.test.pairs, corpus_config)
    queries, ranked, predictions, videos = run
    within = within_video_result(data.test.pairs, predictions, corpus_config)
    corpus = evaluate_corpus(queries, ranked, videos, corpus_config, within)
    modes = []
    if candidates:
        modes.append(mode_row(run, corpus_config, None))
        modes += [mode_row(run, corpus_config, m) for m in keep_per_query or []]
        for n in candidates:
            chosen = ground_corpus(grounder, store, data.test.pairs, corpus_config, candidates=n)
            modes.append(mode_row(chosen, corpus_config, None))
            modes += [mode_row(chosen, corpus_config, m) for m in keep_per_query or []]
    return {
        "seed": seed, "negatives": variant, "corpus_r1": corpus.recall[(1, 0.5)],
        "corpus_r10": corpus.recall[(10, 0.5)], "video_r1": corpus.video_recall[1],
        "video_r1_chance": corpus.video_recall_chance[1], "within_r1": within.recall[(1, 0.5)],
        "stage1_epoch_s": statistics.mean(stage1) if stage1 else float("nan"), "train_s": train_s,
        "queries": corpus.num_queries, "videos": videos, "moments_per_query": corpus.moments_per_query["mean"],
        "excluded": data.negatives.report.line() if data.negatives is not None else "",
        "modes": modes,
    }


def mode_row(run: CorpusRun, config: CorpusConfig, keep: int | None) -> dict:
    """Corpus R@1 and R@10 at IoU 0.5 of a corpus run, its ranking cut to each text's best ``keep`` moments."""
    ranked = run.ranked if keep is None else {
        key: RankedMoments(moments.video_ids[:keep], moments.segments[:keep]) for key, moments in run.ranked.items()}
    result = evaluate_corpus(run.queries, ranked, run.num_videos, config)
    return {"mode": run.mode, "candidates": run.candidates, "keep_per_query": keep,
            "corpus_r1": result.recall[(1, 0.5)], "corpus_r10": result.recall[(10, 0.5)],
            "video_r10": result.video_recall[10], "pairs": run.pairs_scored, "all_pairs": run.all_pairs,
            "seconds": sum(run.seconds.values())}


def modes_table(rows: list[dict]) -> str:
    """Candidate-driven against exhaustive: one line per (seed, K, mode, N, M)."""
    lines = ["| seed | K | mode | N | M | corpus R@1,IoU=0.5 | corpus R@10,IoU=0.5 | R@10 / exhaustive | video R@10 "
             "| pairs scored (of all) | seconds |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        base = next((m["corpus_r10"] for m in r["modes"] if m["mode"] == "exhaustive"
                     and m["keep_per_query"] is None), float("nan"))
        for m in r["modes"]:
            ratio = m["corpus_r10"] / base if base else float("nan")
            lines.append(f"| {r['seed']} | {r['negatives']} | {m['mode']} | {m['candidates'] or 'all'} "
                         f"| {m['keep_per_query'] or 'all'} | {m['corpus_r1']:.1f} | {m['corpus_r10']:.1f} "
                         f"| {ratio:.3f} | {m['video_r10']:.1f} | {m['pairs']:,} ({m['all_pairs']:,}) "
                         f"| {m['seconds']:.1f} |")
    return "\n".join(lines)


def modes_summary(rows: list[dict]) -> str:
    """Mean over seeds (and K) of each (mode, N, M): R@1, R@10 and the R@10 ratio against exhaustive."""
    groups: dict[tuple, list[tuple[dict, float]]] = {}
    for r in rows:
        base = next((m["corpus_r10"] for m in r["modes"] if m["mode"] == "exhaustive"
                     and m["keep_per_query"] is None), float("nan"))
        for m in r["modes"]:
            groups.setdefault((m["mode"], m["candidates"], m["keep_per_query"]), []).append((m, base))
    lines = ["| mode | N | M | corpus R@1,IoU=0.5 | corpus R@10,IoU=0.5 | R@10 / exhaustive (mean, min) "
             "| pairs scored / all |", "|---|---:|---:|---:|---:|---:|---:|"]
    for (mode, n, keep), group in groups.items():
        ratios = [m["corpus_r10"] / base if base else float("nan") for m, base in group]
        share = statistics.mean(m["pairs"] / m["all_pairs"] for m, _ in group)
        r1 = statistics.mean(m["corpus_r1"] for m, _ in group)
        r10 = statistics.mean(m["corpus_r10"] for m, _ in group)
        lines.append(f"| {mode} | {n or 'all'} | {keep or 'all'} | {r1:.1f} | {r10:.1f} | "
                     f"{statistics.mean(ratios):.3f}, {min(ratios):.3f} | {share:.3f} |")
    return "\n".join(lines)


def table(rows: list[dict], base_epoch: dict[int, float]) -> str:
    lines = ["| seed | K | corpus R@1,IoU=0.5 | corpus R@10,IoU=0.5 | video R@1 (chance) | within-video R@1,IoU=0.5 "
             "| stage-1 s/epoch (x K=0) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["stage1_epoch_s"] / base_epoch[r["seed"]] if base_epoch.get(r["seed"]) else float("nan")
        lines.append(f"| {r['seed']} | {r['negatives']} | {r['corpus_r1']:.1f} | {r['corpus_r10']:.1f} | "
                     f"{r['video_r1']:.1f} ({r['video_r1_chance']:.1f}) | {r['within_r1']:.1f} | "
                     f"{r['stage1_epoch_s']:.2f} ({ratio:.2f}x) |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    lines = ["| K | corpus R@1,IoU=0.5 | corpus R@10,IoU=0.5 | video R@1 | within-video R@1,IoU=0.5 | "
             "corpus R@1 / within R@1 |", "|---|---|---|---|---|---|"]
    for k in dict.fromkeys(r["negatives"] for r in rows):
        group = [r for r in rows if r["negatives"] == k]

        def cell(name: str, group: list[dict] = group) -> str:
            values = [g[name] for g in group]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.1f} ± {spread:.1f}"

        ratio = statistics.mean(g["corpus_r1"] for g in group) / max(statistics.mean(g["within_r1"] for g in group),
                                                                      1e-9)
        lines.append(f"| {k} | {cell('corpus_r1')} | {cell('corpus_r10')} | {cell('video_r1')} | "
                     f"{cell('within_r1')} | {ratio:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--negatives", nargs="+", default=["0", "2"],
                        help="values of K to compare")
    parser.add_argument("--videos", type=int, default=400)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--noise", type=float, default=0.5, help="clip noise of the benchmark (harder when larger)")
    parser.add_argument("--motion-share", type=float, default=0.3,
                        help="the motion's share of an event's signature (harder when smaller)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--candidates", type=int, nargs="+", default=None, metavar="N",
                        help="also train a retrieval stage and evaluate candidate-driven corpus grounding with each N")
    parser.add_argument("--keep-per-query", type=int, nargs="+", default=[10, 100], metavar="M",
                        help="with --candidates: also cut each ranking to each text's best M moments")
    parser.add_argument("--retrieval-dim", type=int, default=64, help="with --candidates: model.retrieval_dim")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work", type=Path, default=None, help="folder for the benchmarks (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    if (args.candidates and min(args.candidates) < 1) or min(args.keep_per_query) < 1:
        parser.error("--candidates and --keep-per-query must be at least 1")
    if args.candidates:
        args.overrides = [f"model.retrieval_dim={args.retrieval_dim}", *args.overrides]
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads; "
          f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="drn-corpus-") as tmp:
        work = args.work or Path(tmp)
        for seed in args.seeds:
            bench = make_recurring_benchmark(work / f"bench{seed}", num_videos=args.videos, feature_dim=args.dim,
                                             seed=seed, noise=args.noise, motion_share=args.motion_share)
            for k in args.negatives:
                row = run_one(bench, seed, k, args.dim, work / f"run{seed}-k{k}", args.overrides, args.candidates,
                              args.keep_per_query)
                print(json.dumps(row), flush=True)
                rows.append(row)
    base = {r["seed"]: r["stage1_epoch_s"] for r in rows if r["negatives"] == "0"}
    print()
    print(table(rows, base))
    print()
    print(summary(rows))
    if args.candidates:
        print("\ncandidate-driven (each text's N best test videos by the retrieval stage) against exhaustive; M: each "
              "text's best M moments kept (all: every video's top 5)\n")
        print(modes_table(rows))
        print()
        print(modes_summary(rows))
    print(f"\nbenchmark: {args.videos} videos, D {args.dim}, noise {args.noise}, motion share {args.motion_share}")
    print(f"{rows[0]['queries']} test texts x {rows[0]['videos']} test videos (seed {rows[0]['seed']}), "
          f"{rows[0]['moments_per_query']:.1f} moments per text")
    if any(r["excluded"] for r in rows):
        print(next(r["excluded"] for r in rows if r["excluded"]))
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
