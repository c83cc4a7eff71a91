"""The plain three-stage DRN training loop (DESIGN.md section 5), usable from a notebook or wrapped by Ray Train.

Stages::

    1  everything but the quality (IoU) head   location + matching loss        Adam, train.stage1.lr (1e-3)
    2  only the quality head                    quality loss                    Adam, train.stage2.lr (1e-5)
    3  everything                               location + matching + quality   Adam, train.stage3.lr (1e-6)

Frozen parts are truly frozen: ``requires_grad`` is False and their batch-norm layers stay in eval mode, so their
running statistics do not move. Each stage keeps the weights of its best validation epoch (never the test split).

Seams for other runners: ``configure_stage`` (freeze + modes, returns the trainable parameters),
``train_step``/``run_epoch`` (a model, an iterable of batches from ``drn.data.collate``, an optimizer),
``predict``/``validate`` and ``train_stage``. ``fit`` chains them with checkpoints for ``jobs.train``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from drn.checkpoint import save_checkpoint
from drn.config import DRNConfig
from drn.decoding import decode_segments
from drn.evaluation import EvalConfig, evaluate
from drn.losses import compute_losses
from drn.model import DRN
from drn.pairs import GroundingPair
from drn.predictions import Prediction
from drn.targets import Targets, assign_targets
from drn.text.vocabulary import OpenVocabulary, Vocabulary


@dataclass(frozen=True)
class Stage:
    """One training stage: which parameters train, with which losses, at which learning rate, for how long."""

    number: int
    trains: str  # "all_but_quality", "quality_only" or "all"
    losses: tuple[str, ...]
    lr: float
    epochs: int


def stages_from_config(config: DRNConfig, numbers: Iterable[int] = (1, 2, 3)) -> list[Stage]:
    """The stages to run, in order. Without a quality head (``model.quality: none``) stage 2 is skipped."""
    has_quality = config.model.quality != "none"
    t = config.train
    all_stages = {
        1: Stage(1, "all_but_quality", ("location", "matching"), t.stage1.lr, t.stage1.epochs),
        2: Stage(2, "quality_only", ("quality",), t.stage2.lr, t.stage2.epochs),
        3: Stage(3, "all", ("location", "matching", "quality") if has_quality else ("location", "matching"),
                 t.stage3.lr, t.stage3.epochs),
    }
    out = []
    for n in sorted(set(numbers)):
        if n not in all_stages:
            raise ValueError(f"stage {n} does not exist (1, 2 or 3)")
        if n == 2 and not has_quality:
            continue
        out.append(all_stages[n])
    return out


def configure_stage(model: DRN, stage: Stage) -> list[torch.nn.Parameter]:
    """Freeze what the stage does not train, set train/eval modes, and return the trainable parameters."""
    quality = model.quality_head()
    quality_ids = {id(p) for p in quality.parameters()} if quality is not None else set()
    for p in model.parameters():
        in_quality = id(p) in quality_ids
        p.requires_grad_(
            stage.trains == "all"
            or (stage.trains == "quality_only" and in_quality)
            or (stage.trains == "all_but_quality" and not in_quality)
        )
    set_stage_mode(model, stage)
    return [p for p in model.parameters() if p.requires_grad]


def set_stage_mode(model: DRN, stage: Stage) -> None:
    """Train mode for the trained parts, eval mode (fixed batch-norm statistics) for the frozen ones."""
    quality = model.quality_head()
    if stage.trains == "quality_only":
        model.eval()
        if quality is not None:
            quality.train()
    else:
        model.train()
        if stage.trains == "all_but_quality" and quality is not None:
            quality.eval()


def make_optimizer(parameters: Sequence[torch.nn.Parameter], stage: Stage) -> torch.optim.Optimizer:
    return torch.optim.Adam(parameters, lr=stage.lr)


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch's tensors on ``device`` (other fields as they are)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) and k != "duration" else v
            for k, v in batch.items()}


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def step_losses(
    model: torch.nn.Module, batch: dict, stage: Stage, config: DRNConfig, generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[dict[str, torch.Tensor], Targets]:
    """The stage's losses on one batch (already on the model's device), with the targets they came from.

    Rows are the batch's pairs, plus its negative rows when it has them (``drn.data.PairCollator``).
    """
    cast = (torch.autocast(batch["video"].device.type, dtype=autocast_dtype) if autocast_dtype is not None
            else contextlib.nullcontext())
    with cast:
        output = model(batch["video"], batch["words"], batch["word_mask"], batch.get("video_index"),
                       batch.get("query_index")).flat()
    output = output.float()
    gt = batch["gt"] if batch.get("query_index") is None else batch["gt"][batch["query_index"]]
    negative = batch.get("negative")
    guarded = None
    if negative is not None and config.train.negatives.score_guard:
        guarded = guarded_negatives(output.match_logits, negative, batch["query_index"],
                                    config.train.negatives.guard_min_score)
        if bool(guarded.any()):
            keep = ~guarded
            output = output.rows(keep)
            gt, negative = gt[keep], negative[keep]
    targets = assign_targets(gt, output.points, output.levels, config.scaled_level_ranges(),
                             config.targets.positives, generator, negative=negative)
    if guarded is not None:
        targets.negatives_guarded = int(guarded.sum())
        targets.negative_rows = int(batch["negative"].sum())
    return compute_losses(output, targets, config, stage.losses), targets


def guarded_negatives(match_logits: torch.Tensor, negative: torch.Tensor, query_index: torch.Tensor,
                      min_score: float) -> torch.Tensor:
    """``[B]`` bool: the negative rows that the score guard leaves out of the loss.

    A negative row pairs its query with another video. When the model's best matching score on that video already
    reaches its best score on the query's own video, and that positive score is at least ``min_score`` (so the
    model has learned to find the moment), the other video more likely shows the moment without an annotation than
    not: training it towards 0 would teach the model to miss a true moment. Rows ``0..n-1`` are the positives and
    ``query_index[r]`` is row ``r``'s query (``drn.data.PairCollator``).
    """
    with torch.no_grad():
        best = match_logits.amax(dim=1)
        positive_best = best[query_index]
        threshold = math.log(min_score / (1.0 - min_score)) if min_score > 0 else -math.inf
        return negative & (best >= positive_best) & (positive_best >= threshold)


COUNT_KEYS = ("negatives_guarded", "negative_rows")  # per-step counts of train_step, summed (not averaged) per epoch
LossWeights = Callable[[dict[str, torch.Tensor], Targets, dict], dict[str, float]]


def train_step(
    model: torch.nn.Module, batch: dict, optimizer: torch.optim.Optimizer, stage: Stage, config: DRNConfig,
    generator: torch.Generator | None = None, *, loss_weights: LossWeights | None = None,
    autocast_dtype: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:
    """One optimisation step on one batch (moved to the model's device); returns the losses as floats.

    ``loss_weights(losses, targets, batch)`` scales each loss before the backward pass (a data-parallel runner
    turns per-worker normalisers into global ones with it, ``moments.train.worker``); the returned values are the
    weighted losses. ``autocast_dtype`` and ``scaler`` are the mixed-precision settings of a GPU runner.
    """
    batch = to_device(batch, model_device(model))
    losses, targets = step_losses(model, batch, stage, config, generator, autocast_dtype)
    weights = loss_weights(losses, targets, batch) if loss_weights is not None else None
    total = sum(losses[name] * weight for name, weight in weights.items()) if weights else losses["total"]
    optimizer.zero_grad(set_to_none=True)
    scaler = scaler or torch.amp.GradScaler(enabled=False)
    scaler.scale(total).backward()
    scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, config.train.grad_clip_norm)
    scaler.step(optimizer)
    scaler.update()
    if not weights:
        out = {name: float(value.detach()) for name, value in losses.items()}
    else:
        out = {name: float(losses[name].detach()) * weight for name, weight in weights.items()}
        out["total"] = sum(out.values())
    if config.train.negatives.score_guard and targets.negative_rows:
        out.update(negatives_guarded=float(targets.negatives_guarded), negative_rows=float(targets.negative_rows))
    return out


def run_epoch(
    model: DRN, batches: Iterable[dict], optimizer: torch.optim.Optimizer, stage: Stage, config: DRNConfig,
    progress: bool = False, generator: torch.Generator | None = None,
) -> dict[str, float]:
    """One pass over ``batches``: mean losses, pairs seen, seconds and pairs per second."""
    set_stage_mode(model, stage)
    sums: dict[str, float] = {}
    pairs, started = 0, time.perf_counter()
    bar = tqdm(batches, desc=f"stage {stage.number}", leave=False, disable=not progress)
    for batch in bar:
        losses = train_step(model, batch, optimizer, stage, config, generator)
        size = len(batch["words"])
        pairs += size
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + (value if name in COUNT_KEYS else value * size)
        bar.set_postfix(loss=f"{losses['total']:.3f}")
    seconds = time.perf_counter() - started
    out: dict[str, float] = {f"loss_{k}": v / max(pairs, 1) for k, v in sums.items() if k not in COUNT_KEYS}
    out.update({k: int(v) for k, v in sums.items() if k in COUNT_KEYS})
    out.update(pairs=pairs, seconds=seconds, pairs_per_s=pairs / seconds if seconds > 0 else 0.0)
    return out


@torch.no_grad()
def predict(model: DRN, batches: Iterable[dict], config: DRNConfig) -> list[Prediction]:
    """Ranked segments in seconds for every pair of ``batches`` (eval mode; restores nothing)."""
    model.eval()
    predictions = []
    device = model_device(model)
    for batch in batches:
        batch = to_device(batch, device)
        output = model(batch["video"], batch["words"], batch["word_mask"]).flat()  # positive rows only
        segments = decode_segments(output, batch["duration"].numpy(), config.model.num_segments, config.decode)
        for qid, vid, segs in zip(batch["qid"], batch["video_id"], segments, strict=True):
            predictions.append(Prediction(qid, vid, segs[:, :3]))
    return predictions


def validate(model: DRN, batches: Iterable[dict], pairs: Sequence[GroundingPair], config: DRNConfig) -> dict:
    """R@n,IoU=m and mIoU (percent) of the model on ``pairs`` (the pairs behind ``batches``)."""
    predictions = predict(model, batches, config)
    result = evaluate(pairs, {p.qid: p for p in predictions}, EvalConfig())
    metrics = dict(result.to_dict()["recall"])
    metrics["mIoU"] = result.miou
    return metrics


@dataclass
class StageResult:
    stage: Stage
    best_metrics: dict[str, float]
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None


LAST = "last"  # train.select_metric: keep the latest epoch and stage, no selection on validation


def selection_key(metrics: dict[str, float], metric: str, position: tuple[int, int] = (0, 0)) -> tuple[float, float]:
    """What picks a checkpoint: the validation ``metric`` (ties broken by mIoU), or with ``"last"`` the position
    ``(stage, epoch)``, so the latest wins (for validation splits too small to choose on)."""
    if metric == LAST:
        return float(position[0]), float(position[1])
    if metric not in metrics:
        raise ValueError(f"train.select_metric {metric!r} is not among {sorted(metrics)} or {LAST!r}")
    return metrics[metric], metrics.get("mIoU", 0.0)


def train_stage(
    model: DRN,
    stage: Stage,
    train_batches: Iterable[dict],
    config: DRNConfig,
    validate_fn: Callable[[DRN], dict[str, float]] | None = None,
    on_epoch: Callable[[int, dict[str, Any], bool], None] | None = None,
    progress: bool = False,
    generator: torch.Generator | None = None,
) -> StageResult:
    """Run one stage; with ``validate_fn`` keep (and finally load) the weights of the best validation epoch.

    ``on_epoch(epoch, record, improved)`` is called after each epoch (e.g. to save checkpoints or report).
    """
    params = configure_stage(model, stage)
    optimizer = make_optimizer(params, stage)
    result = StageResult(stage, best_metrics={}, best_epoch=-1)
    best_key = (-math.inf, -math.inf)
    for epoch in range(1, stage.epochs + 1):
        record: dict[str, Any] = {"stage": stage.number, "epoch": epoch}
        record.update(run_epoch(model, train_batches, optimizer, stage, config, progress, generator))
        improved = False
        if validate_fn is not None:
            metrics = validate_fn(model)
            record["val"] = metrics
            key = selection_key(metrics, config.train.select_metric, (stage.number, epoch))
            if key > best_key:
                best_key, improved = key, True
                result.best_metrics, result.best_epoch = metrics, epoch
                result.best_state = copy.deepcopy(model.state_dict())
        result.history.append(record)
        if on_epoch is not None:
            on_epoch(epoch, record, improved)
    if result.best_state is not None:
        model.load_state_dict(result.best_state)
    configure_stage(model, stage)
    return result


@dataclass
class FitResult:
    best_checkpoint: str
    best_stage: int
    val: dict[str, float]
    test: dict[str, float] | None
    stages: list[StageResult]


def fit(
    model: DRN,
    vocab: Vocabulary | OpenVocabulary,
    config: DRNConfig,
    train_batches: Iterable[dict],
    val_batches: Iterable[dict],
    val_pairs: Sequence[GroundingPair],
    out_dir: str | os.PathLike,
    stages: Sequence[Stage],
    test_batches: Iterable[dict] | None = None,
    test_pairs: Sequence[GroundingPair] | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    checkpoint_facts: dict[str, Any] | None = None,
) -> FitResult:
    """Train ``stages`` in order, each starting from the previous stage's best weights.

    Writes ``stage<n>_best.pt`` (best validation epoch) and ``last.pt`` (every epoch, for resuming) into
    ``out_dir``, then ``best.pt``: the stage checkpoint with the best validation metric, with its test metrics
    (the test split is evaluated once, on that checkpoint only, and never used for selection).
    """
    os.makedirs(out_dir, exist_ok=True)
    generator = torch.Generator().manual_seed(config.train.seed)
    results: list[StageResult] = []
    best: tuple[tuple[float, float], int, dict[str, torch.Tensor], dict[str, float]] | None = None

    for stage in stages:
        def on_epoch(epoch: int, record: dict[str, Any], improved: bool, stage: Stage = stage) -> None:
            save_checkpoint(os.path.join(out_dir, "last.pt"), model, vocab, stage=stage.number,
                            metrics={"val": record.get("val", {}), "epoch": epoch})
            if improved:
                save_checkpoint(os.path.join(out_dir, f"stage{stage.number}_best.pt"), model, vocab,
                                stage=stage.number, metrics={"val": record["val"], "epoch": epoch})
            if report is not None:
                report(record)

        result = train_stage(
            model, stage, train_batches, config,
            validate_fn=lambda m: validate(m, val_batches, val_pairs, config),
            on_epoch=on_epoch, progress=progress, generator=generator,
        )
        results.append(result)
        key = selection_key(result.best_metrics, config.train.select_metric, (stage.number, result.best_epoch))
        if best is None or key > best[0]:
            best = (key, stage.number, copy.deepcopy(model.state_dict()), result.best_metrics)

    if best is None:
        raise ValueError("no stage to train")
    _, best_stage, state, val_metrics = best
    model.load_state_dict(state)
    test_metrics = None
    if test_batches is not None and test_pairs is not None:
        test_metrics = validate(model, test_batches, test_pairs, config)
    path = os.path.join(out_dir, "best.pt")
    metrics = {"val": val_metrics, "test": test_metrics, **(checkpoint_facts or {})}
    save_checkpoint(path, model, vocab, stage=best_stage, metrics=metrics)
    return FitResult(path, best_stage, val_metrics, test_metrics, results)
