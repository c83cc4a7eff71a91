"""Score predictions against a dataset split: R@{1,5} at IoU {0.3,0.5,0.7} and mIoU, with the convention printed.

    python -m jobs.evaluate --dataset charades_sta --annotations ../shared/data/annotations/charades_sta \
        --split test --predictions preds.jsonl [--nms m-0.05] [--comparison gt] [--json]

    python -m jobs.evaluate --dataset jsonl --annotations runs/syn/annotations --split test \
        --checkpoint runs/syn/model/best.pt --features runs/syn/features [--predictions-out preds.jsonl] [--top-n 5]

    python -m jobs.evaluate --corpus --dataset jsonl --annotations runs/syn/annotations --split test \
        --checkpoint runs/syn/model/best.pt --features runs/syn/features [--candidates N | --exhaustive]
        # or: --db lancedb [--run-id R]

``--corpus`` ranks every distinct query text of the split against every video of the split (``drn.corpus``):
corpus R@{1,10,100} at IoU {0.5,0.7}, video R@{1,10} and the within-video R@1 beside them, from a checkpoint
run on a feature store or from a LanceDB grounding run. With a checkpoint, DRN grounds either each text's N best
videos by the checkpoint's retrieval stage (``--candidates N``; the default, with N = 20, when the checkpoint has a
trained retrieval stage: texts x N pairs) or every text against every video (``--exhaustive``; the default without
a trained retrieval stage: texts x videos pairs). The mode that ran and its N are printed with the result.

With video labels (every action each video shows; ``drn.datasets.labels``) ``--corpus`` also scores the
*relevance* convention beside the exact one: a result counts when it overlaps any labelled action of the query's
label in its video (or the query's own moment), so a correct moment in a video whose sentence was never written is
not a miss. Labels come from the annotations folder (charades_sta: the ``actions`` column of
``Charades_v1_*.csv``; jsonl: ``labels.jsonl``), from ``--labels PATH`` (a Charades CSV or a labels JSONL), or not
at all (``--no-labels``).

Predictions are JSONL, one query a line: {"qid", "video_id", "segments": [[start_s, end_s, score], ...]}.
With ``--checkpoint`` the model is run on the split's pairs (videos pooled from ``--features``;
``drn.inference.predict_pairs``) and its predictions are scored (and written with ``--predictions-out``) exactly as
a predictions file would be.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from drn.checkpoint import read_checkpoint
from drn.corpus import (
    DEFAULT_CANDIDATES,
    CorpusConfig,
    CorpusResult,
    CorpusRun,
    check_corpus_split,
    evaluate_corpus,
    format_corpus_result,
    ground_corpus,
    within_video_result,
)
from drn.data import usable_pairs
from drn.datasets import LoadedSplit
from drn.datasets.labels import (
    VideoLabels,
    check_label_videos,
    dataset_labels,
    jsonl_annotated_videos,
    read_labels,
)
from drn.errors import InputError
from drn.evaluation import EvalConfig, EvalResult, evaluate, format_result
from drn.inference import MISSING_VIDEOS, CheckpointRun, Grounder, predict_pairs
from drn.predictions import Prediction, read_predictions, write_predictions
from drn.retrieval import require_trained_retrieval
from drn.store import FeatureStore
from jobs.cli import flag_names, job_main
from jobs.dataset_args import add_dataset_arguments, load_split_from_args

COMPARISON_CHOICES = {">=": ">=", "ge": ">=", ">": ">", "gt": ">"}


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The scoring options (shared with jobs.baseline)."""
    group = parser.add_argument_group("scoring")
    group.add_argument(
        "--ious", type=float, nargs="+", default=None,
        help="IoU levels m (default 0.3 0.5 0.7; with --corpus 0.5 0.7)",
    )
    group.add_argument("--recall-at", type=int, nargs="+", default=None,
                       help="the n of R@n (default 1 5; with --corpus 1 10 100)")
    group.add_argument(
        "--comparison",
        choices=sorted(COMPARISON_CHOICES),
        default=">=",
        help="a hit is IoU >= m (>=, ge; default) or IoU > m (>, gt)",
    )
    group.add_argument(
        "--nms",
        default="off",
        help="NMS before taking the top n: off (default), a threshold such as 0.5, or m-0.05 "
        "(the IoU level minus 0.05, as the DRN authors did)",
    )
    group.add_argument(
        "--allow-missing", action="store_true", help="count queries without a prediction as misses instead of failing"
    )
    group.add_argument("--json", action="store_true", help="print the result as JSON")


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``--checkpoint`` mode (running a trained model on a feature store)."""
    group = parser.add_argument_group("checkpoint mode (with --checkpoint)")
    group.add_argument("--features", help="feature store (folder or URI) holding the split's videos")
    group.add_argument("--predictions-out", type=Path, default=None,
                       help="also write the model's predictions to this JSONL file (scorable later with --predictions)")
    group.add_argument("--top-n", type=int, default=None,
                       help="segments kept per query after NMS (default: the checkpoint's decode.top_n, usually 5)")
    group.add_argument(
        "--missing-videos",
        choices=MISSING_VIDEOS,
        default="error",
        help="pairs whose video has no features in the store (or that start after its decoded end): error "
        "(default), skip (left out of the scored split, counted) or miss (scored as misses, counted)",
    )
    group.add_argument("--batch-size", type=int, default=64, help="pairs per forward pass (default 64)")
    group.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    group.add_argument("--device", default="cpu", help="torch device (default cpu)")
    group.add_argument("--quiet", action="store_true", help="no progress bars")


def dataset_from_args(args: argparse.Namespace) -> str:
    """``--dataset``, or the dataset the ``--checkpoint`` was trained on; an explicit one must agree with it."""
    if args.checkpoint is None:
        if args.dataset is None:
            raise InputError("--dataset is required with --predictions or --db (which dataset format to read)")
        return args.dataset
    recorded = read_checkpoint(args.checkpoint)["config"].get("dataset")
    if args.dataset is not None and recorded is not None and args.dataset != recorded:
        raise InputError(f"--dataset {args.dataset} disagrees with the checkpoint, which was trained on {recorded}; "
                         "leave --dataset out to use the checkpoint's", path=args.checkpoint)
    if args.dataset is None and recorded is None:
        raise InputError("the checkpoint does not record its dataset: give --dataset", path=args.checkpoint)
    return args.dataset or recorded


def eval_config_from_args(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(
        recall_at=tuple(args.recall_at or (1, 5)),
        ious=tuple(args.ious or (0.3, 0.5, 0.7)),
        comparison=COMPARISON_CHOICES[args.comparison],
        nms=args.nms,
        allow_missing=args.allow_missing,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.evaluate",
        description="Evaluate moment predictions on a dataset split (R@n,IoU=m and mIoU of the top-1): "
        "a predictions file, or a DRN checkpoint run on a feature store.",
    )
    add_dataset_arguments(parser, default_split="test",
                          dataset_help="which dataset format to read (required with --predictions; with --checkpoint "
                                       "the checkpoint's dataset, which an explicit value must match)")
    source = parser.add_argument_group("what to evaluate").add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", help="a predictions JSONL file")
    source.add_argument("--checkpoint", help="a DRN checkpoint (e.g. runs/train/best.pt or s3://...); needs --features")
    source.add_argument("--db", default=None, help="with --corpus: a LanceDB index holding a grounding run")
    add_checkpoint_arguments(parser)
    corpus = parser.add_argument_group("corpus mode (--corpus)")
    corpus.add_argument("--corpus", action="store_true",
                        help="rank every distinct query text of the split against every video of the split")
    corpus.add_argument("--video-recall-at", type=int, nargs="+", default=[1, 10],
                        help="the k of video R@k (default 1 10)")
    corpus.add_argument("--run-id", default=None, help="with --db: the grounding run (default: the only one)")
    corpus.add_argument("--candidates", type=int, default=None, metavar="N",
                        help="with --checkpoint: DRN grounds only each text's N best videos by the checkpoint's "
                             f"retrieval stage (default: candidate-driven with N = {DEFAULT_CANDIDATES} when the "
                             "checkpoint has a trained retrieval stage, else exhaustive)")
    corpus.add_argument("--exhaustive", action="store_true",
                        help="with --checkpoint: DRN grounds every text against every video")
    corpus.add_argument("--labels", type=Path, default=None, metavar="PATH",
                        help="video labels for the relevance convention: a Charades metadata CSV (column actions) "
                             "or a JSONL file, one action a line {video_id, label, start_s, end_s} (default: the "
                             "annotations folder's Charades_v1_*.csv or labels.jsonl, where there are)")
    corpus.add_argument("--no-labels", action="store_true",
                        help="score the exact convention only, even where the dataset has labels")
    add_eval_arguments(parser)
    return parser


def corpus_config_from_args(args: argparse.Namespace) -> CorpusConfig:
    return CorpusConfig(recall_at=tuple(args.recall_at or (1, 10, 100)), ious=tuple(args.ious or (0.5, 0.7)),
                        video_recall_at=tuple(args.video_recall_at), comparison=COMPARISON_CHOICES[args.comparison])


def check_corpus_mode_flags(args: argparse.Namespace) -> None:
    """``--candidates`` and ``--exhaustive``: checkpoint corpus mode only, not together, N at least 1."""
    if args.candidates is None and not args.exhaustive:
        return
    flag = "--candidates" if args.candidates is not None else "--exhaustive"
    if not args.corpus or args.checkpoint is None:
        raise InputError(f"{flag} chooses the pairs DRN grounds in --corpus --checkpoint mode only")
    if args.candidates is not None and args.exhaustive:
        raise InputError("--candidates and --exhaustive exclude each other: give one")
    if args.candidates is not None and args.candidates < 1:
        raise InputError(f"--candidates must be at least 1, not {args.candidates}")


def check_label_flags(args: argparse.Namespace) -> None:
    """``--labels`` and ``--no-labels``: corpus mode only, not together."""
    if args.labels is None and not args.no_labels:
        return
    flag = "--labels" if args.labels is not None else "--no-labels"
    if not args.corpus:
        raise InputError(f"{flag} applies to --corpus only (the relevance convention of library ranking)")
    if args.labels is not None and args.no_labels:
        raise InputError("--labels and --no-labels exclude each other: give one")


def labels_from_args(args: argparse.Namespace, loaded: LoadedSplit) -> VideoLabels | None:
    """The video labels of the relevance convention: none with ``--no-labels``; ``--labels`` (a JSONL file's videos
    must be the split's, the dataset folder's or the feature store's; it must label one of the split's videos);
    else the annotations folder's (``dataset_labels``)."""
    if args.no_labels:
        return None
    if args.labels is None:
        return dataset_labels(args.dataset, args.annotations)
    labels = read_labels(args.labels)
    split_videos = {p.video_id for p in loaded.pairs}
    if args.labels.suffix.lower() == ".jsonl":
        known = set(split_videos)
        where = f"split {args.split} of {args.annotations}"
        if args.dataset == "jsonl":
            folder = args.annotations if args.annotations.is_dir() else args.annotations.parent
            known |= jsonl_annotated_videos(folder, [args.annotations] if args.annotations.is_file() else [])
            where = str(folder)
        if args.features:
            known |= set(FeatureStore(args.features).ok_video_ids())
            where += f" nor in the feature store {args.features}"
        check_label_videos(labels, known, where)
    if not split_videos & labels.video_ids():
        raise InputError(f"the labels name none of the {len(split_videos)} videos of split {args.split}; give the "
                         "split's labels, or --no-labels", path=args.labels)
    return labels


def corpus_candidates(args: argparse.Namespace, model: torch.nn.Module) -> int | None:
    """N of the candidate-driven mode, or None for the exhaustive one: ``--candidates`` (the checkpoint needs a
    trained retrieval stage), ``--exhaustive``, else N = DEFAULT_CANDIDATES where the checkpoint has a trained
    retrieval stage."""
    if args.exhaustive:
        return None
    if args.candidates is not None:
        require_trained_retrieval(model, args.checkpoint)
        return args.candidates
    head = getattr(model, "retrieval", None)
    return DEFAULT_CANDIDATES if head is not None and head.trained else None


def run_corpus(args: argparse.Namespace, loaded: LoadedSplit) -> tuple[CorpusResult, CorpusRun | None]:
    """Corpus metrics of a checkpoint on a feature store (with how it ran), or of a LanceDB grounding run, on the
    split."""
    config = corpus_config_from_args(args)
    check_corpus_split(loaded.pairs, args.annotations)
    labels = labels_from_args(args, loaded)
    run = None
    if args.db is not None:
        from moments.library.corpus import corpus_from_run

        queries, ranked, predictions, videos = corpus_from_run(args.db, args.run_id, loaded.pairs, config)
        pairs = loaded.pairs
    else:
        if not args.features:
            raise InputError("--corpus --checkpoint needs --features (the feature store holding the split's videos)")
        if args.threads:
            torch.set_num_threads(args.threads)
        grounder = Grounder.from_checkpoint(args.checkpoint, device=args.device)
        candidates = corpus_candidates(args, grounder.model)
        store = FeatureStore(args.features)
        grounder.check_features(store.metadata.feature_dim, args.features)
        if args.top_n is not None:
            decode = dataclasses.replace(grounder.config.decode, top_n=args.top_n)
            grounder.config = dataclasses.replace(grounder.config, decode=decode)
        selection = usable_pairs(loaded.pairs, store)
        if selection.dropped and args.missing_videos == "error":
            raise InputError(f"{len(selection.dropped)} of {len(loaded.pairs)} pairs have no features in the store; "
                             "use --missing-videos skip to rank the others", path=args.features)
        pairs = selection.kept
        run = ground_corpus(grounder, store, pairs, config, candidates=candidates,
                            pair_batch_size=max(args.batch_size, 1), progress=not args.quiet)
        queries, ranked, predictions, videos = run
    within = within_video_result(pairs, predictions, config)
    return evaluate_corpus(queries, ranked, videos, config, within, labels=labels,
                           video_ids={p.video_id for p in pairs}), run


def predictions_from_args(args: argparse.Namespace, loaded: LoadedSplit) -> Mapping[int | str, Prediction]:
    """The predictions to score: a predictions file, or the checkpoint run on the feature store."""
    if args.checkpoint is None:
        return read_predictions(args.predictions)
    return {p.qid: p for p in checkpoint_run_from_args(args, loaded).predictions}


def checkpoint_run_from_args(args: argparse.Namespace, loaded: LoadedSplit) -> CheckpointRun:
    """Run ``--checkpoint`` on the split, report pairs without features, write ``--predictions-out``."""
    if not args.features:
        raise InputError("--checkpoint needs --features (the feature store holding the split's videos)")
    if args.threads:
        torch.set_num_threads(args.threads)
    with flag_names(build_parser()):  # top_n -> --top-n, missing_videos -> --missing-videos, ...
        run = predict_pairs(
            args.checkpoint, args.features, loaded.pairs, top_n=args.top_n, missing_videos=args.missing_videos,
            batch_size=args.batch_size, device=args.device, progress=not args.quiet,
        )
    if run.without_features:
        print(f"{len(run.without_features)} of {len(loaded.pairs)} pairs have no features in the store: "
              f"{'left out of the score' if args.missing_videos == 'skip' else 'scored as misses'}", file=sys.stderr)
    if args.predictions_out is not None:
        count = write_predictions(args.predictions_out, run.predictions)
        print(f"wrote {count} predictions to {args.predictions_out}", file=sys.stderr)
    return run


def result_text(
    result: EvalResult, loaded: LoadedSplit, as_json: bool, title: str | None = None,
    extra: Mapping[str, object] | None = None,
) -> str:
    """The printed result: the table (or JSON) with the dataset, split and convention (and ``extra`` facts)."""
    report = loaded.report
    extra = dict(extra or {})
    if as_json:
        return json.dumps({"dataset": report.dataset, "split": report.split, "title": title, **extra,
                           **result.to_dict()})
    heading = f"{report.dataset} {report.split}" + (f" - {title}" if title else "")
    text = format_result(result, title=heading)
    if extra:
        text += "\n" + "   ".join(f"{key} {value}" for key, value in extra.items())
    return text


@job_main
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.predictions is not None:
        used = [flag for flag, value in (("--features", args.features), ("--predictions-out", args.predictions_out),
                                         ("--top-n", args.top_n)) if value is not None]
        if used:
            parser.error(f"{', '.join(used)} only apply with --checkpoint")
    if args.db is not None and not args.corpus:
        parser.error("--db evaluates a grounding run across the library: it needs --corpus")
    check_corpus_mode_flags(args)
    check_label_flags(args)
    args.dataset = dataset_from_args(args)
    loaded = load_split_from_args(args)
    if args.corpus:
        if args.predictions is not None:
            parser.error("--corpus ranks videos against each other: give --checkpoint (with --features) or --db")
        result, run = run_corpus(args, loaded)
        report = loaded.report
        if args.json:
            facts = run.to_dict() if run is not None else {}
            print(json.dumps({"dataset": report.dataset, "split": report.split, **facts, **result.to_dict()}))
        else:
            print(format_corpus_result(result, title=f"{report.dataset} {report.split} - corpus"))
            if run is not None:
                print(run.describe())
        return 0
    config = eval_config_from_args(args)
    pairs, title, extra = loaded.pairs, None, {}
    if args.checkpoint is None:
        predictions = predictions_from_args(args, loaded)
    else:
        run = checkpoint_run_from_args(args, loaded)
        predictions = {p.qid: p for p in run.predictions}
        title = f"checkpoint {args.checkpoint}"
        extra = {"checkpoint": str(args.checkpoint), "pairs_without_features": len(run.without_features),
                 "missing_videos": args.missing_videos}
        pairs = run.scored if args.missing_videos == "skip" else [*run.scored, *run.without_features]
        if run.without_features and args.missing_videos != "skip":
            config = dataclasses.replace(config, allow_missing=True)
        if not pairs:
            raise InputError("no pair of the split has features in the store", path=args.features)
    result = evaluate(pairs, predictions, config)
    print(result_text(result, loaded, args.json, title, extra))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
