"""Library ranking when annotations are incomplete (issue 22): negatives with and without exclusions, both
evaluation conventions, and the two-stage fusion weight and candidate count chosen again.

    python benchmarks/incomplete.py [--seeds 0 1 2] [--omit-fraction 0.5] [--variants none today labels guard]
        [--videos 400] [--dim 64] [--noise 0.5] [--motion-share 0.3] [--threads 2]
        [--fusion-weights 0 0.2 0.4 0.6 0.8 1] [--candidates 1 2 5 10 20 40] [--json out.json]

For each seed: the recurring-descriptions benchmark (``drn.datasets.synthetic.make_recurring_benchmark``) with
``--omit-fraction`` of the events that videos show left out of the annotation files (the videos still show them;
``labels.jsonl`` lists every event). DRN (``configs/synthetic.yaml``, three stages) is trained once per variant:

* ``none``: no negative pairs (``train.negatives.per_positive=0``);
* ``today``: K = 2 negatives filtered by text and paraphrase only (``train.negatives.use_labels=false``);
* ``labels``: K = 2, and a video showing the text's labelled action is never its negative (the default);
* ``guard``: K = 2 without labels, with the score guard (``train.negatives.score_guard=true``).

Then each checkpoint gets the retrieval stage (stage 4, with the variant's negative filter) and the test split is
scored in memory: DRN on every (text, video) pair, the retrieval stage's best-cell cosine of every pair. Printed:
within-video R@1 at IoU 0.5 and 0.7; corpus R@1 and R@10 at IoU 0.5 by the exact convention (an annotated moment of
that text) and by relevance (the video shows the query's labelled action at that time, ``drn.corpus``);
precision@10 by relevance; video R@1 both ways; the training time. With ``--fusion-weights`` and ``--candidates``,
the two-stage ranking of live search (each text's N best videos by the retrieval stage, DRN's scores fused with
the retrieval cosine by ``moments.search.two_stage.fuse``) is scored by relevance for each (w, N), on the
``labels`` variant.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.corpus import cpu_model, train_benchmark  # noqa: E402
from drn.config import load_config  # noqa: E402
from drn.corpus import (  # noqa: E402
    CorpusConfig,
    CorpusResult,
    RankedMoments,
    corpus_queries,
    evaluate_corpus,
    within_video_result,
)
from drn.datasets import load_split  # noqa: E402
from drn.datasets.labels import read_charades_actions, read_labels_jsonl  # noqa: E402
from drn.datasets.synthetic import make_recurring_benchmark  # noqa: E402
from drn.inference import Grounder  # noqa: E402
from drn.predictions import Prediction  # noqa: E402
from drn.retrieval import require_trained_retrieval  # noqa: E402
from drn.store import FeatureStore, FeatureStoreWriter, StoreMetadata, VideoRecord  # noqa: E402
from drn.text.vocabulary import query_key  # noqa: E402
from moments.search.two_stage import fuse  # noqa: E402

VARIANTS = {
    "none": ["train.negatives.per_positive=0"],
    "today": ["train.negatives.per_positive=2", "train.negatives.use_labels=false"],
    "labels": ["train.negatives.per_positive=2", "train.negatives.use_labels=true"],
    "guard": ["train.negatives.per_positive=2", "train.negatives.use_labels=false",
              "train.negatives.score_guard=true"],
}
METRICS = ("within_r1_05", "within_r1_07", "exact_r1", "exact_r10", "relevance_r1", "relevance_r10",
           "relevance_p10", "exact_video_r1", "relevance_video_r1", "train_s")


@dataclass
class TimelineBenchmark:
    """Where ``charades_timeline_benchmark`` wrote its store and annotations, and what it holds."""

    features: str
    annotations: str
    labels: str
    events: int  # labelled actions of the chosen videos
    omitted: int  # of those, actions that no sentence's moment overlaps best
    omitted_fraction: float


def charades_timeline_benchmark(out: Path, source: Path, train_videos: int, test_videos: int, dim: int,
                                noise: float, signal: float, seed: int) -> TimelineBenchmark:
    """Charades-STA sentences on features made from the Charades action timelines (module docstring)."""
    csvs = sorted(source.glob("Charades_v1_*.csv"))
    labels = read_charades_actions(csvs)
    rng = np.random.default_rng(seed)
    classes = sorted(labels.labels())
    signatures = rng.normal(size=(len(classes), dim))
    signatures *= signal * np.sqrt(dim) * 0.5 / np.linalg.norm(signatures, axis=1, keepdims=True)
    column = {label: i for i, label in enumerate(classes)}
    splits: dict[str, list] = {}
    for split, count in (("train", train_videos), ("test", test_videos)):
        pairs = [p for p in load_split("charades_sta", source, split).pairs if p.video_id in labels.actions]
        videos = sorted({p.video_id for p in pairs})
        chosen = set(rng.choice(videos, size=min(count, len(videos)), replace=False).tolist())
        splits[split] = [p for p in pairs if p.video_id in chosen]
    train_ids = sorted({p.video_id for p in splits["train"]})
    val_ids = set(rng.choice(train_ids, size=max(1, len(train_ids) // 10), replace=False).tolist())
    splits["val"] = [p for p in splits["train"] if p.video_id in val_ids]
    splits["train"] = [p for p in splits["train"] if p.video_id not in val_ids]
    metadata = StoreMetadata(extractor="synthetic", layer="charades-timeline", weights_sha256="none", clip_len=2,
                             clip_stride=1, fps="2", feature_dim=dim, dtype="float32")
    annotations = out / "annotations"
    annotations.mkdir(parents=True, exist_ok=True)
    durations = {p.video_id: p.duration_s for pairs in splits.values() for p in pairs}
    moments: dict[str, list] = {}
    for pairs in splits.values():
        for p in pairs:
            moments.setdefault(p.video_id, []).append(p)
    events = covered = 0
    with FeatureStoreWriter(out / "features", metadata) as writer, open(annotations / "labels.jsonl", "w") as fh:
        for video in sorted(durations):
            duration = durations[video]
            starts = np.arange(0.0, max(duration - 1.0, 0.0) + 1e-9, 0.5)
            centres = starts + 0.5
            features = rng.normal(0.0, noise, size=(len(starts), dim))
            for action in labels.actions[video]:
                inside = (centres >= action.start_s) & (centres < action.end_s)
                features[inside] += signatures[column[action.label]]
                fh.write(json.dumps({"video_id": video, "label": action.label, "start_s": action.start_s,
                                     "end_s": action.end_s}) + "\n")
            writer.add_clips(video, features.astype(np.float32), starts, starts + 1.0)
            writer.finish_video(VideoRecord(video_id=video, uri=f"charades://{video}", fps=2.0,
                                            num_frames=int(duration * 2), duration_s=duration,
                                            num_clips=len(starts)))
            found = (labels.best_action(video, p.start_s, p.end_s) for p in moments[video])
            best = {action for action, _ in filter(None, found)}
            events += len(labels.actions[video])
            covered += len(best)
    for split, pairs in splits.items():
        with open(annotations / f"{split}.jsonl", "w") as fh:
            for qid, p in enumerate(pairs):
                fh.write(json.dumps({"qid": qid, "video_id": p.video_id, "query": p.query, "start_s": p.start_s,
                                     "end_s": p.end_s, "duration_s": p.duration_s}) + "\n")
    return TimelineBenchmark(str(out / "features"), str(annotations), str(annotations / "labels.jsonl"), events,
                             events - covered, round((events - covered) / max(events, 1), 4))


def scored_pairs(grounder: Grounder, store: FeatureStore, texts: list[str], video_ids: list[str]):
    """DRN's segments and the retrieval stage's best-cell cosine of every (text, video) pair."""
    head = require_trained_retrieval(grounder.model)
    encoded = grounder.encode_queries(texts)
    videos = list(store.iter_videos(video_ids))
    segments: dict[tuple[int, str], np.ndarray] = {}
    for result in grounder.ground(videos, encoded):
        segments[(result.query_index, result.video_id)] = result.segments[:, :3]
    with torch.no_grad():
        grids, ids, _ = grounder.grids(videos)
        cells = head.encode_cells(torch.as_tensor(grids, dtype=torch.float32))
        queries = head.encode_query(encoded.features)
        cosine = torch.einsum("qr,vcr->qvc", queries, cells).amax(dim=-1).numpy()
    order = [ids.index(v) for v in video_ids]
    return segments, cosine[:, order]


def rank(segments: dict, texts: list[str], keys: list[str], video_ids: list[str], keep: int,
         chosen: list[list[int]] | None = None, cosine: np.ndarray | None = None, weight: float = 0.0):
    """Each text's results across its videos (all, or ``chosen``), scored by DRN or fused with ``cosine``."""
    ranked = {}
    for q, key in enumerate(keys):
        ids, rows = [], []
        for v in (chosen[q] if chosen is not None else range(len(video_ids))):
            segs = segments[(q, video_ids[v])].copy()
            if cosine is not None:
                segs[:, 2] = fuse(segs[:, 2], np.full(len(segs), cosine[q, v]), weight)
            ids += [video_ids[v]] * len(segs)
            rows.append(segs)
        ranked[key] = RankedMoments.rank(ids, np.concatenate(rows), keep=keep)
    return ranked


def relevance_numbers(result: CorpusResult) -> dict[str, float]:
    relevance = result.relevance
    return {"relevance_r1": relevance.recall[(1, 0.5)], "relevance_r10": relevance.recall[(10, 0.5)],
            "relevance_p10": relevance.precision[0.5], "relevance_video_r1": relevance.video_recall[1],
            "label_videos": relevance.videos_per_label["mean"]}


def run_one(bench, seed: int, variant: str, args: argparse.Namespace, out: Path) -> dict:
    torch.manual_seed(seed)
    sentences = ["text.max_words=20", "text.truncate_long_queries=true"] if args.charades else []
    config = load_config(ROOT / "configs" / "synthetic.yaml", [
        f"model.feature_dim={args.dim}", f"train.seed={seed}", f"model.retrieval_dim={args.retrieval_dim}",
        *sentences, *VARIANTS[variant], *args.overrides])
    trained = train_benchmark(bench, config, out, with_retrieval=True)
    data, epochs, train_s, retrieval_s = trained.data, trained.epochs, trained.train_s, trained.retrieval_s
    grounder = Grounder.from_checkpoint(trained.checkpoint)
    pairs = data.test.pairs
    queries = corpus_queries(pairs)
    keys, texts = [q.key for q in queries], [q.text for q in queries]
    video_ids = sorted({p.video_id for p in pairs})
    segments, cosine = scored_pairs(grounder, FeatureStore(bench.features), texts, video_ids)
    index = {key: q for q, key in enumerate(keys)}
    predictions = [Prediction(p.qid, p.video_id, segments[(index[query_key(p.query)], p.video_id)]) for p in pairs]
    corpus_config = CorpusConfig()
    within = within_video_result(pairs, predictions, corpus_config)
    keep = corpus_config.keep(grounder.config.decode.top_n)
    labels = read_labels_jsonl(bench.labels)
    corpus = evaluate_corpus(queries, rank(segments, texts, keys, video_ids, keep), len(video_ids), corpus_config,
                             within, labels=labels, video_ids=video_ids)
    stage1 = [e["seconds"] for e in epochs if e["stage"] == 1]
    row = {
        "seed": seed, "variant": variant, "within_r1_05": within.recall[(1, 0.5)],
        "within_r1_07": within.recall[(1, 0.7)], "exact_r1": corpus.recall[(1, 0.5)],
        "exact_r10": corpus.recall[(10, 0.5)], "exact_video_r1": corpus.video_recall[1],
        **relevance_numbers(corpus), "train_s": train_s, "retrieval_s": retrieval_s,
        "stage1_epoch_s": statistics.mean(stage1) if stage1 else float("nan"),
        "guarded": sum(e.get("negatives_guarded", 0) for e in epochs),
        "negative_rows": sum(e.get("negative_rows", 0) for e in epochs),
        "filter": data.negatives.report.to_dict() if data.negatives is not None else None,
        "queries": len(queries), "videos": len(video_ids), "curve": [],
    }
    if variant == args.curve_variant:
        by_retrieval = [sorted(range(len(video_ids)), key=lambda v, q=q: (-cosine[q, v], video_ids[v]))
                        for q in range(len(keys))]
        for n in args.candidates:
            chosen = [order[:n] for order in by_retrieval]
            for w in args.fusion_weights:
                fused = evaluate_corpus(queries, rank(segments, texts, keys, video_ids, keep, chosen, cosine, w),
                                        len(video_ids), corpus_config, labels=labels, video_ids=video_ids)
                row["curve"].append({"candidates": n, "weight": w, "exact_r1": fused.recall[(1, 0.5)],
                                     "exact_r10": fused.recall[(10, 0.5)], **relevance_numbers(fused)})
    return row


def cell(rows: list[dict], name: str) -> str:
    values = [r[name] for r in rows]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f}"


def per_seed_table(rows: list[dict]) -> str:
    lines = ["| seed | variant | within R@1 0.5 / 0.7 | exact R@1 / R@10 | relevance R@1 / R@10 | relevance P@10 | "
             "video R@1 exact / relevance | training s (stage 4 s) | guarded / negative rows |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        guard = f"{r['guarded']:,} / {r['negative_rows']:,}" if r["negative_rows"] else "-"
        lines.append(f"| {r['seed']} | {r['variant']} | {r['within_r1_05']:.1f} / {r['within_r1_07']:.1f} | "
                     f"{r['exact_r1']:.1f} / {r['exact_r10']:.1f} | {r['relevance_r1']:.1f} / "
                     f"{r['relevance_r10']:.1f} | {r['relevance_p10']:.1f} | {r['exact_video_r1']:.1f} / "
                     f"{r['relevance_video_r1']:.1f} | {r['train_s']:.0f} ({r['retrieval_s']:.0f}) | {guard} |")
    return "\n".join(lines)


def summary_table(rows: list[dict]) -> str:
    lines = ["| variant | within R@1 0.5 | within R@1 0.7 | exact R@1 | exact R@10 | relevance R@1 | relevance R@10 "
             "| relevance P@10 | video R@1 exact | video R@1 relevance | training s | relevance R@1 / within R@1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        group = [r for r in rows if r["variant"] == variant]
        ratio = (statistics.mean(r["relevance_r1"] for r in group)
                 / max(statistics.mean(r["within_r1_05"] for r in group), 1e-9))
        lines.append(f"| {variant} | " + " | ".join(cell(group, m) for m in METRICS) + f" | {ratio:.2f} |")
    return "\n".join(lines)


def curve_table(rows: list[dict]) -> str:
    points: dict[tuple[int, float], list[dict]] = {}
    for r in rows:
        for point in r["curve"]:
            points.setdefault((point["candidates"], point["weight"]), []).append(point)
    if not points:
        return ""
    lines = ["| N | w | exact R@1 | exact R@10 | relevance R@1 | relevance R@10 | relevance P@10 |",
             "|---:|---:|---|---|---|---|---|"]
    for (n, w), group in sorted(points.items()):
        lines.append(f"| {n} | {w:g} | " + " | ".join(cell(group, m) for m in (
            "exact_r1", "exact_r10", "relevance_r1", "relevance_r10", "relevance_p10")) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["none", "today", "labels",
                                                                                    "guard"])
    parser.add_argument("--omit-fraction", type=float, default=0.5,
                        help="share of the events left out of the annotation files (the videos still show them)")
    parser.add_argument("--videos", type=int, default=400)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--noise", type=float, default=0.5)
    parser.add_argument("--motion-share", type=float, default=0.3)
    parser.add_argument("--retrieval-dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fusion-weights", type=float, nargs="*", default=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    parser.add_argument("--candidates", type=int, nargs="*", default=[1, 2, 5, 10, 20, 40])
    parser.add_argument("--curve-variant", default="labels", choices=sorted(VARIANTS),
                        help="the variant whose checkpoint the fusion and candidate curve is measured on")
    parser.add_argument("--charades", action="store_true",
                        help="Charades-STA sentences on features built from its action timelines (see above)")
    parser.add_argument("--charades-annotations", type=Path,
                        default=ROOT.parent / "shared" / "data" / "annotations" / "charades_sta")
    parser.add_argument("--charades-train", type=int, default=1000, help="training videos drawn (10%% validate)")
    parser.add_argument("--charades-test", type=int, default=150, help="test videos drawn")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads; "
          f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    rows, made = [], []
    with tempfile.TemporaryDirectory(prefix="drn-incomplete-") as tmp:
        work = args.work or Path(tmp)
        for seed in args.seeds:
            if args.charades:
                bench = charades_timeline_benchmark(work / f"bench{seed}", args.charades_annotations,
                                                    args.charades_train, args.charades_test, args.dim, args.noise,
                                                    1.5, seed)
            else:
                bench = make_recurring_benchmark(work / f"bench{seed}", num_videos=args.videos, feature_dim=args.dim,
                                                 seed=seed, noise=args.noise, motion_share=args.motion_share,
                                                 omit_fraction=args.omit_fraction)
            made.append(bench)
            for variant in args.variants:
                row = run_one(bench, seed, variant, args, work / f"run{seed}-{variant}")
                print(json.dumps(row), flush=True)
                rows.append(row)
    print()
    print(per_seed_table(rows))
    print()
    print(summary_table(rows))
    curve = curve_table(rows)
    if curve:
        print(f"\ntwo-stage ranking on the {args.curve_variant!r} checkpoints: each text's N best test videos by the "
              "retrieval stage, score = fuse(DRN, retrieval cosine, w)\n")
        print(curve)
    omitted = ", ".join(f"{b.omitted} of {b.events} = {b.omitted_fraction:.3f}" for b in made)
    if args.charades:
        print(f"\nbenchmark: Charades-STA sentences, {args.charades_train} training and {args.charades_test} test "
              f"videos drawn, timeline features D {args.dim}, noise {args.noise}; labelled actions that no sentence "
              f"annotates: {omitted}")
    else:
        print(f"\nbenchmark: {args.videos} videos, D {args.dim}, noise {args.noise}, motion share "
              f"{args.motion_share}, omit fraction {args.omit_fraction} (realised: {omitted})")
    print(f"{rows[0]['queries']} test texts x {rows[0]['videos']} test videos (seed {rows[0]['seed']}); "
          f"videos showing a query's label: {rows[0]['label_videos']:.1f} on average")
    for r in rows:
        if r["filter"] and r["seed"] == rows[0]["seed"]:
            print(f"{r['variant']}: {r['filter']}")
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
