"""Blind DRN on Charades-STA: real annotations, constant video features, so only the query and the location
embedding can inform the model. How far does DRN get without seeing the video, beside the fixed-window floor?

    python benchmarks/blind_charades.py [--quick] [--annotations ../shared/data/annotations/charades_sta] \
        [--dim 16] [--pairs-per-epoch 1500] [--stage1-epochs 3] [--stage2-epochs 1] [--stages 1,2] [--threads 1] \
        [--negatives K] [--video-features constant|noise] [--corpus-videos 200]

Every video of the train and test files gets the same constant clip features (D = ``--dim``) over its duration
from the Charades CSV, written as a real feature store. Constant features carry no information, so D does not
change what the model can learn; a small D only saves the Linear(D->D) time. The model is the charades_sta preset
(the authors' sizes, T = 32) with that D. On 2 CPU cores a full epoch (11,079 pairs) takes about 17 minutes, so
an "epoch" here is a fresh seeded random draw of ``--pairs-per-epoch`` training pairs, and stage 3 (lr 1e-6) is
off by default. Checkpoints are picked on the validation split carved from train (charades_sta ``val``, excluded
from training), never on test; test is scored once, on the picked checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from drn.baselines import fit_fixed_window, fixed_window_predictions
from drn.config import load_config
from drn.datasets import load_split
from drn.evaluation import EvalConfig, evaluate
from drn.model import count_parameters
from drn.store import FeatureStoreWriter, StoreMetadata, VideoRecord
from drn.training import fit, stages_from_config
from drn.training_setup import prepare_training_data

REPO_ROOT = Path(__file__).resolve().parents[1]
PRESET = REPO_ROOT / "configs" / "charades_sta.yaml"
DEFAULT_ANNOTATIONS = REPO_ROOT.parent / "shared" / "data" / "annotations" / "charades_sta"
CLIPS_PER_VIDEO = 64
REPORTED = ("R@1,IoU=0.3", "R@1,IoU=0.5", "R@1,IoU=0.7", "R@5,IoU=0.5", "R@5,IoU=0.7", "mIoU")
TINY_MODEL = ("model.lstm_hidden=64", "model.attention_dim=64", "model.location_dim=16",
              "model.level_channels=[64,64,128]", "model.fpn_channels=64", "model.iou_channels=[64,32]")


class FreshSubsetSampler(Sampler[int]):
    """Each pass yields ``count`` indices drawn at random (without replacement) from ``size``: a partial epoch."""

    def __init__(self, size: int, count: int, seed: int) -> None:
        self.size, self.count = size, min(count, size)
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        return iter(torch.randperm(self.size, generator=self.generator)[: self.count].tolist())

    def __len__(self) -> int:
        return self.count


def video_durations(annotations: Path) -> dict[str, float]:
    """Duration (s, from the Charades CSV) of every video of the published train and test files."""
    durations: dict[str, float] = {}
    for split in ("train", "test"):
        for pair in load_split("charades_sta", annotations, split).pairs:
            durations[pair.video_id] = pair.duration_s
    return durations


def write_constant_store(path: Path, durations: dict[str, float], dim: int, kind: str = "constant",
                         seed: int = 0) -> None:
    """A feature store where every video has constant clip features (the same for all videos, or with
    ``kind="noise"`` a random vector of its own), clips spread over its duration."""
    metadata = StoreMetadata(extractor=kind, layer="none", weights_sha256="none", clip_len=16, clip_stride=8,
                             fps="native", feature_dim=dim, dtype="float16")
    rng = np.random.default_rng(seed)
    features = np.ones((CLIPS_PER_VIDEO, dim), dtype=np.float16)
    with FeatureStoreWriter(path, metadata) as writer:
        for video_id, duration in sorted(durations.items()):
            edges = np.linspace(0.0, duration, CLIPS_PER_VIDEO + 1)
            if kind == "noise":
                features = np.repeat(rng.normal(size=(1, dim)).astype(np.float16), CLIPS_PER_VIDEO, axis=0)
            writer.add_clips(video_id, features, edges[:-1], edges[1:])
            writer.finish_video(VideoRecord(video_id=video_id, uri=f"constant://{video_id}", duration_s=duration,
                                            num_clips=CLIPS_PER_VIDEO))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] + " " + __doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run (200 videos, small network, 256 pairs per epoch, 1 epoch) that checks the "
                        "script in about a minute")
    parser.add_argument("--annotations", type=Path, default=DEFAULT_ANNOTATIONS, help="the Charades-STA folder")
    parser.add_argument("--max-videos", type=int, default=None,
                        help="keep a seeded random sample of this many videos (default: all; pairs of the others "
                        "are left out)")
    parser.add_argument("--dim", type=int, default=16, help="feature dimension D of the constant store (default 16)")
    parser.add_argument("--pairs-per-epoch", type=int, default=1500,
                        help="training pairs drawn per epoch (default 1500; the train split minus val is 11,079)")
    parser.add_argument("--stage1-epochs", type=int, default=3)
    parser.add_argument("--stage2-epochs", type=int, default=1)
    parser.add_argument("--stage3-epochs", type=int, default=1)
    parser.add_argument("--stages", default="1,2", help="stages to run (default 1,2: stage 3's lr 1e-6 is skipped)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--negatives", type=int, default=0, help="train.negatives.per_positive (default 0)")
    parser.add_argument("--video-features", choices=("constant", "noise"), default="constant",
                        help="the same constant for every video (default), or a random constant per video")
    parser.add_argument("--corpus-videos", type=int, default=200,
                        help="test videos ranked in the corpus evaluation (with --negatives; default 200)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--work-dir", type=Path, default=None, help="output folder (default: a tmp dir)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the metrics as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.annotations.is_dir():
        print(f"error: {args.annotations} is not a folder (the Charades-STA annotations)", file=sys.stderr)
        return 2
    overrides = [f"model.feature_dim={args.dim}", f"train.seed={args.seed}",
                 f"train.stage1.epochs={args.stage1_epochs}", f"train.stage2.epochs={args.stage2_epochs}",
                 f"train.stage3.epochs={args.stage3_epochs}", f"train.negatives.per_positive={args.negatives}"]
    if args.quick:
        args.max_videos, args.pairs_per_epoch = args.max_videos or 200, 256
        overrides += [*TINY_MODEL, "train.stage1.epochs=1", "train.stage2.epochs=1"]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = load_config(PRESET, overrides)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="drn-blind-charades-"))
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} "
          f"thread(s), load average at start {os.getloadavg()[0]:.1f}; work dir {work}", file=sys.stderr)
    started = time.perf_counter()

    store = work / f"{args.video_features}_features"
    if not (store / "videos").is_dir():
        durations = video_durations(args.annotations)
        if args.max_videos is not None and args.max_videos < len(durations):
            keep = np.random.default_rng(args.seed).choice(sorted(durations), size=args.max_videos, replace=False)
            durations = {v: durations[v] for v in keep}
        write_constant_store(store, durations, args.dim, args.video_features, args.seed)
    data = prepare_training_data(config, store, args.annotations, progress=False)
    model = data.new_model()
    stages = stages_from_config(config, [int(s) for s in args.stages.split(",")])
    sampler = FreshSubsetSampler(len(data.train), args.pairs_per_epoch, args.seed)
    train_batches = DataLoader(data.train, batch_size=config.train.batch_size, sampler=sampler,
                               collate_fn=data.collator("train"))
    if data.negatives is not None:
        print(data.negatives.report.line(), file=sys.stderr)
    print(f"pairs: train {len(data.train)} (drawing {sampler.count} per epoch), val {len(data.val)}, test "
          f"{len(data.test)} (left out, video not kept: {data.dropped}); {count_parameters(model):,} parameters; "
          f"stages {[s.number for s in stages]}",
          file=sys.stderr)

    def report(record: dict) -> None:
        val = record.get("val", {})
        print(f"  stage {record['stage']} epoch {record['epoch']}: loss {record.get('loss_total', 0):.3f}, "
              f"{record['pairs_per_s']:.1f} pairs/s, val R@1,IoU=0.5 {val.get('R@1,IoU=0.5', 0):.2f} "
              f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr)

    result = fit(model, data.vocab, config, train_batches, data.loader("val"), data.val.pairs, work / "model",
                 stages, data.loader("test"), data.test.pairs, report=report)
    wall = time.perf_counter() - started

    window = fit_fixed_window(load_split("charades_sta", args.annotations, "train").pairs)  # as jobs.baseline does
    test_pairs = data.test.pairs  # the pairs the model was scored on
    floor = evaluate(test_pairs, {p.qid: p for p in fixed_window_predictions(test_pairs, window)}, EvalConfig())
    floor_metrics = {**floor.to_dict()["recall"], "mIoU": floor.miou}

    trained_pairs = sum(s.epochs for s in stages) * sampler.count
    print(f"| Charades-STA test ({len(data.test)}) | " + " | ".join(REPORTED) + " |")
    print("|---|" + "---|" * len(REPORTED))
    print(f"| blind DRN (stage {result.best_stage} picked on val) | "
          + " | ".join(f"{result.test[k]:.2f}" for k in REPORTED) + " |")
    print(f"| fixed window [{window.start_frac:.2f}, {window.end_frac:.2f}] (fitted on train) | "
          + " | ".join(f"{floor_metrics.get(k, math.nan):.2f}" for k in REPORTED) + " |")
    print(f"\nval R@1,IoU=0.5 of the picked checkpoint {result.val['R@1,IoU=0.5']:.2f}; {trained_pairs} pair visits "
          f"({trained_pairs / len(data.train):.2f} epochs of the {len(data.train)}-pair train split); D = {args.dim}; "
          f"wall {wall:.0f} s; load average at end {os.getloadavg()[0]:.1f}; checkpoint {result.best_checkpoint}")
    corpus = None
    if args.negatives > 0:
        corpus = blind_corpus(result.best_checkpoint, store, test_pairs, args.corpus_videos, args.seed)
        print(f"\ncorpus (test, {corpus.num_queries} texts x {corpus.num_videos} videos): video R@1 "
              f"{corpus.video_recall[1]:.2f} (chance {corpus.video_recall_chance[1]:.2f}), video R@10 "
              f"{corpus.video_recall[10]:.2f} (chance {corpus.video_recall_chance[10]:.2f}), R@1,IoU=0.5 "
              f"{corpus.recall[(1, 0.5)]:.2f}; {args.video_features} video features, K = {args.negatives}")
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps({"test": result.test, "val": result.val, "stage": result.best_stage,
                                             "fixed_window": floor_metrics, "wall_s": wall,
                                             "corpus": corpus.to_dict() if corpus else None,
                                             "history": [r.history for r in result.stages]}, indent=1))
    return 0


def blind_corpus(checkpoint: str, store: Path, pairs: list, videos: int, seed: int):
    """Corpus metrics of the blind model on a seeded sample of ``videos`` test videos and their texts."""
    from drn.corpus import CorpusConfig, evaluate_corpus, ground_corpus
    from drn.inference import Grounder
    from drn.store import FeatureStore

    chosen = sorted({p.video_id for p in pairs})
    if videos < len(chosen):
        chosen = sorted(np.random.default_rng(seed).choice(chosen, size=videos, replace=False).tolist())
    kept = [p for p in pairs if p.video_id in set(chosen)]
    config = CorpusConfig()
    queries, ranked, _, count = ground_corpus(Grounder.from_checkpoint(checkpoint), FeatureStore(store), kept, config)
    return evaluate_corpus(queries, ranked, count, config)


if __name__ == "__main__":
    raise SystemExit(main())
