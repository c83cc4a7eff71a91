"""Train DRN in its three stages: in this process (plain PyTorch), or data-parallel on Ray Train.

    python -m jobs.train --config configs/synthetic.yaml --features runs/syn/features \
        --annotations runs/syn/annotations --out runs/syn/model
    python -m jobs.train ... --num-workers 2 [--use-gpu] [--storage s3://bucket/runs --name run]   # Ray Train

Prints progress and one line per epoch, and ends with ONE line of JSON naming the best checkpoint (picked on the
validation split) with its validation and test metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from drn.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from drn.config import load_config
from drn.datasets import dataset_names
from drn.errors import InputError
from drn.model import DRN, count_parameters
from drn.retrieval import RETRIEVAL_STAGE
from drn.retrieval_training import prepare_retrieval_model, retrieval_skip_reason, train_retrieval
from drn.store import FeatureStore
from drn.training import fit, stages_from_config
from drn.training_setup import adopt_store_feature_dim, prepare_training_data
from jobs.cli import job_main, run_with_flag_names
from moments.train.driver import PRECISIONS, StageFailedError, fit_distributed
from pipeline.capacity import DEFAULT_WAIT_S


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.train",
        description="Train DRN (stage 1: all but the IoU head; 2: only the IoU head; 3: all) with checkpoint "
        "selection on the validation split.",
    )
    parser.add_argument("--config", required=True, type=Path, help="YAML preset, e.g. configs/charades_sta.yaml")
    parser.add_argument("--features", required=True, help="feature store (folder or URI) with the clip features")
    parser.add_argument("--annotations", required=True, type=Path, help="the dataset's annotation folder or file")
    parser.add_argument("--dataset", choices=dataset_names(), default=None,
                        help="annotation format (default: the config's 'dataset')")
    parser.add_argument("--out", type=Path, default=Path("runs/train"), help="checkpoint folder (default runs/train)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set train.stage1.epochs=3 (repeatable)")
    parser.add_argument("--stages", default=None,
                        help="comma-separated stages to run (default 1,2,3, and 4, the retrieval stage, when "
                             "model.retrieval_dim > 0; after --resume-from: the later stages)")
    parser.add_argument("--resume-from", default=None,
                        help="start from this checkpoint's weights and vocabulary (its config must match)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_distributed_arguments(parser)
    return parser


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    """The Ray Train flags (``--num-workers``, ``--use-gpu``, ``--storage``, ``--name``, ...)."""
    group = parser.add_argument_group("distributed training (Ray Train)")
    group.add_argument("--num-workers", type=int, default=None,
                       help="train on this many Ray Train workers (DDP); without it jobs.train runs in-process")
    group.add_argument("--use-gpu", action="store_true", help="one GPU per worker (NCCL, mixed precision)")
    group.add_argument("--storage", default=None,
                       help="run storage, a folder or URI such as s3://bucket/runs (default: --out)")
    group.add_argument("--name", default=None, help="run name; stages are <name>-stage<k> (default: config name)")
    group.add_argument("--max-failures", type=int, default=3,
                       help="worker-group restarts per stage, each from the latest checkpoint (default 3)")
    group.add_argument("--keep-checkpoints", type=int, default=2,
                       help="epoch checkpoints kept per stage, best first; the latest is always kept (default 2)")
    group.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per worker (default 1)")
    group.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="auto: bfloat16 autocast on GPU, float32 on CPU (default auto)")
    group.add_argument("--sync-batchnorm", action="store_true",
                       help="GPU only: SyncBatchNorm, so trained BN layers see the global batch")
    group.add_argument("--skip-missing-videos", action="store_true",
                       help="train without the pairs whose video has no features (default: stop and list them)")
    group.add_argument("--capacity-wait-s", type=float, default=DEFAULT_WAIT_S,
                       help="stop (exit 1, naming the missing resource) when the cluster cannot hold the workers "
                            "for this many seconds before a stage (default 120); rerun to resume")


def run_distributed(args: argparse.Namespace, stages: Sequence[int]) -> dict:
    """``moments.train.fit_distributed`` from the parsed arguments; prints the summary as ONE JSON line."""
    config = load_config(args.config, args.overrides)
    config.dataset = args.dataset or config.dataset  # recorded in the checkpoints
    notice = adopt_store_feature_dim(config, FeatureStore(args.features).metadata.feature_dim, args.overrides,
                                     args.features)
    storage = args.storage if args.storage is not None else os.fspath(args.out)
    summary = fit_distributed(
        config, args.features, args.annotations, args.dataset,
        num_workers=args.num_workers, use_gpu=args.use_gpu, storage=storage, name=args.name or config.name,
        stages=stages, init_checkpoint=os.fspath(args.resume_from) if args.resume_from else None,
        max_failures=args.max_failures, keep_checkpoints=args.keep_checkpoints,
        cpus_per_worker=args.cpus_per_worker, precision=args.precision, sync_batchnorm=args.sync_batchnorm,
        skip_missing_videos=args.skip_missing_videos, threads=args.threads, progress=not args.quiet,
        notices=[notice] if notice else [], capacity_wait_s=args.capacity_wait_s,
    )
    shown = {k: summary[k] for k in ("best_checkpoint", "stage", "epoch", "val", "test")}
    print(json.dumps(shown), flush=True)
    return summary


def parse_stages(text: str | None, resumed_stage: int | None, retrieval: bool = False) -> list[int]:
    """The stages to run: ``--stages``, else those after the resumed stage (stage 4 only with ``retrieval``)."""
    known = (1, 2, 3, RETRIEVAL_STAGE) if retrieval else (1, 2, 3)
    if text is None:
        return [s for s in known if resumed_stage is None or s > resumed_stage] or [min(resumed_stage or 3, 3)]
    try:
        stages = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--stages must be comma-separated numbers, got {text!r}") from None
    if not stages or any(s not in known for s in stages):
        hint = "" if retrieval else " (stage 4, the retrieval stage, needs model.retrieval_dim > 0)"
        raise InputError(f"--stages must list stages among {','.join(map(str, known))}, got {text!r}{hint}")
    return stages


@job_main
def main(argv: Sequence[str] | None = None) -> int:
    return run_with_flag_names(build_parser(), run, argv)


def run(args: argparse.Namespace) -> int:
    """Train in this process, or on Ray Train with ``--num-workers``; library errors name the flags."""
    if args.num_workers:
        resumed_stage = int(read_checkpoint(args.resume_from)["stage"]) if args.resume_from else None
        retrieval = load_config(args.config, args.overrides).model.retrieval_dim > 0
        try:
            run_distributed(args, parse_stages(args.stages, resumed_stage, retrieval))
        except StageFailedError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config, args.overrides)
    config.dataset = args.dataset or config.dataset  # the checkpoint records the annotation format it was trained on
    notice = adopt_store_feature_dim(config, FeatureStore(args.features).metadata.feature_dim, args.overrides,
                                     args.features)
    torch.manual_seed(config.train.seed)
    progress = not args.quiet
    data = prepare_training_data(config, args.features, args.annotations, args.dataset, args.resume_from,
                                 progress=progress)
    resumed_stage = None
    if args.resume_from is not None:
        retrieval = config.model.retrieval_dim > 0  # a checkpoint without a retrieval head may gain one
        model, loaded, _ = load_checkpoint(args.resume_from, expected=None if retrieval else config)
        if retrieval:
            model = prepare_retrieval_model(model, loaded, config, args.resume_from)
        config.model.word_dim = model.config.model.word_dim
        model.config = config
        resumed_stage = int(read_checkpoint(args.resume_from)["stage"])
    else:
        model = data.new_model()
    numbers = parse_stages(args.stages, resumed_stage, config.model.retrieval_dim > 0)
    stages = stages_from_config(config, [n for n in numbers if n != RETRIEVAL_STAGE])
    if notice:  # after the inputs passed their checks: bad input stays one line
        print(notice, file=sys.stderr)
    print(f"pairs: train {len(data.train)}, val {len(data.val)}, test {len(data.test) if data.test else 0} "
          f"(without features, dropped: {data.dropped}); vocabulary {len(data.vocab)} words; "
          f"parameters {count_parameters(model):,}; stages {[s.number for s in stages]}", file=sys.stderr)
    print(data.negatives.report.line() if data.negatives is not None else
          "negative pairs: off (train.negatives.per_positive=0): scores will not compare across videos",
          file=sys.stderr)

    def report(record: dict) -> None:
        val = record.get("val", {})
        shown = {k: round(v, 2) for k, v in val.items() if k in ("R@1,IoU=0.5", "R@1,IoU=0.7", "R@5,IoU=0.5", "mIoU")}
        guarded = (f"; score guard left out {record['negatives_guarded']:,} of {record['negative_rows']:,} negative "
                   "rows" if record.get("negative_rows") else "")
        print(f"stage {record['stage']} epoch {record['epoch']}: loss {record.get('loss_total', 0):.4f} "
              f"({record['pairs_per_s']:.0f} pairs/s) val {shown}{guarded}", file=sys.stderr)

    facts = data.checkpoint_facts()
    if stages:
        result = fit(
            model, data.vocab, config, data.loader("train"), data.loader("val"), data.val.pairs, args.out, stages,
            test_batches=data.loader("test") if data.test else None,
            test_pairs=data.test.pairs if data.test else None,
            report=report, progress=progress, checkpoint_facts=facts,
        )
        shown = {"best_checkpoint": result.best_checkpoint, "stage": result.best_stage, "val": result.val,
                 "test": result.test}
    else:  # stage 4 alone, on the resumed checkpoint
        recorded = read_checkpoint(args.resume_from)["metrics"]
        shown = {"best_checkpoint": None, "stage": resumed_stage, "val": recorded.get("val"),
                 "test": recorded.get("test")}
        facts = {**facts, **{k: v for k, v in recorded.items() if k not in ("val", "test", "retrieval")}}
    if RETRIEVAL_STAGE in numbers and config.model.retrieval_dim > 0:
        shown = run_retrieval_stage(model, data, config, args.out, shown, facts, progress)
    print(json.dumps(shown))
    return 0


def run_retrieval_stage(model: DRN, data, config, out: Path, shown: dict, facts: dict, progress: bool) -> dict:
    """Stage 4 in this process (DRN frozen): train the retrieval head, then write it into ``best.pt``."""
    reason = retrieval_skip_reason(data.train.pairs)
    if reason is not None and shown["best_checkpoint"] is None:  # stage 4 alone
        raise InputError(f"stage 4 cannot run: {reason.split('; the checkpoint')[0]}")
    if reason is not None:
        print(f"stage 4 skipped: {reason}", file=sys.stderr)
        return shown
    model = prepare_retrieval_model(model, model.config, config)

    def report(record: dict) -> None:
        print(f"stage 4 epoch {record['epoch']}: retrieval loss {record['loss_retrieval']:.4f} "
              f"({record['pairs_per_s']:.0f} pairs/s) val {record['val']}", file=sys.stderr)

    result = train_retrieval(model, data.loader("train"), data.train, data.val, config, progress=progress,
                             report=report, negative_filter=data.negatives)
    retrieval = {"epoch": result.best_epoch, "val": result.best_metrics}
    path = out / "best.pt"
    save_checkpoint(out / "stage4_best.pt", model, data.vocab, stage=RETRIEVAL_STAGE,
                    metrics={"val": result.best_metrics, "epoch": result.best_epoch})
    save_checkpoint(path, model, data.vocab, stage=RETRIEVAL_STAGE,
                    metrics={"val": shown["val"], "test": shown["test"], **facts, "retrieval": retrieval})
    return {**shown, "best_checkpoint": str(path), "stage": RETRIEVAL_STAGE, "retrieval": retrieval}


if __name__ == "__main__":
    raise SystemExit(main())
