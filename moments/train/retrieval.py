"""Stage 4 on Ray Train: the retrieval head (``drn.retrieval``) of a trained DRN, data-parallel, resumable.

``moments.train.driver.fit_distributed`` runs it after DRN's stages when ``model.retrieval_dim > 0`` (or alone, with
``--stages 4`` on a trained checkpoint), as one more TorchTrainer run ``<name>-stage4`` that starts from the best
DRN checkpoint. DRN is frozen (``drn.retrieval_training.freeze_for_retrieval``); DDP wraps only the loss module
(``drn.retrieval.RetrievalObjective``), so only the head's gradients are synchronised. Each worker draws its own
sampled negatives; in-batch negatives are the worker's own batch. Rank 0 validates (video R@k on the validation
split, ``retrieval.select_metric`` picks the epoch) and reports a checkpoint per epoch; a restarted worker group
resumes from the latest one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import ray.train
import ray.train.torch
import torch

from drn.checkpoint import load_checkpoint
from drn.config import DRNConfig
from drn.retrieval import RETRIEVAL_STAGE, RetrievalObjective
from drn.retrieval_training import (
    RetrievalBatches,
    freeze_for_retrieval,
    prepare_retrieval_model,
    retrieval_skip_reason,
    retrieval_step,
    selection_value,
    video_recall,
)
from drn.training import validate
from drn.training_setup import prepare_training_data
from moments.train.worker import (
    STATE_FILE,
    FailureInjection,
    _epoch_loader,
    local_model_file,
    report_checkpoint,
    to_device,
    unwrap,
    world,
)

EXTRA_KEYS = ("negatives", "extra_video")


def wants_retrieval_stage(config: DRNConfig, stages) -> bool:
    """Stage 4 runs when it is asked for and the config has a retrieval stage with epochs to train."""
    return RETRIEVAL_STAGE in set(stages) and config.model.retrieval_dim > 0 and config.retrieval.epochs > 0


def retrieval_stage_skip_reason(config: DRNConfig, features: str, annotations: str, dataset: str | None) -> str | None:
    """Why stage 4 cannot learn from the training split (``drn.retrieval_training.retrieval_skip_reason``)."""
    from drn.store import FeatureStore
    from drn.training_setup import load_pairs

    pairs = load_pairs(config, annotations, "train", FeatureStore(features).durations(), dataset)
    return retrieval_skip_reason(pairs)


def retrieval_stage_job(config: DRNConfig, features: str, annotations: str, dataset: str | None,
                        init_checkpoint: str | None, *, failure: FailureInjection | None = None,
                        threads: int | None = None, progress: bool = False) -> dict[str, Any]:
    """The train_loop_config of stage 4 (plain values, like ``moments.train.driver.stage_job``)."""
    r = config.retrieval
    stage = {"number": RETRIEVAL_STAGE, "trains": "retrieval_only", "losses": ["retrieval"], "lr": r.lr,
             "epochs": r.epochs}
    return {"config": config.to_dict(), "features": features, "annotations": annotations, "dataset": dataset,
            "stage": stage, "init_checkpoint": init_checkpoint, "precision": "fp32",
            "failure": dataclasses.asdict(failure) if failure else None, "sync_batchnorm": False,
            "threads": threads, "progress": progress}


def retrieval_stage_worker(job: dict[str, Any]) -> dict[str, Any]:
    """Ray Train loop of stage 4 (``job`` from ``retrieval_stage_job``)."""
    config = DRNConfig.from_dict(job["config"])
    epochs = int(job["stage"]["epochs"])
    rank, size = world()
    device = ray.train.torch.get_device()
    if isinstance(device, list):
        device = device[0]
    torch.manual_seed(config.train.seed)
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    failure = FailureInjection(**job["failure"]) if job.get("failure") else None
    resume = ray.train.get_checkpoint()
    with local_model_file(resume, job.get("init_checkpoint")) as model_file:
        data = prepare_training_data(config, job["features"], job["annotations"], job.get("dataset"),
                                     resume_from=model_file, with_test=False)
        model, checkpoint_config, _ = load_checkpoint(model_file)
        model = prepare_retrieval_model(model, checkpoint_config, config, job.get("init_checkpoint"))
        state = None
        if resume is not None:
            state = torch.load(os.path.join(os.path.dirname(model_file), STATE_FILE), weights_only=True)

    params = freeze_for_retrieval(model)
    model.to(device)
    objective = RetrievalObjective(model).to(device)
    optimizer = torch.optim.Adam(params, lr=config.retrieval.lr)
    first_epoch, grounding = 1, None
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        first_epoch, grounding = int(state["epoch"]) + 1, state.get("grounding")
    wrapped = ray.train.torch.prepare_model(objective, move_to_device=False)
    batches = RetrievalBatches(data.train, config, data.negatives)
    per_worker = math.ceil(config.train.batch_size / size)
    loader = _epoch_loader(data, per_worker, rank, size, config.train.seed, config.train.num_workers)
    generator = torch.Generator().manual_seed(config.train.seed + rank)
    if rank == 0 and grounding is None:  # DRN is frozen: its validation metrics are measured once
        grounding = validate(model, to_device(data.loader("val"), device), data.val.pairs, config)
    history = []
    for epoch in range(first_epoch, epochs + 1):
        loader.sampler.set_epoch(epoch)
        freeze_for_retrieval(model)
        total, pairs, started = 0.0, 0, time.perf_counter()
        for step, batch in enumerate(to_device(loader, device), start=1):
            if failure is not None:
                failure.maybe_fail(RETRIEVAL_STAGE, epoch, step, rank)
            prepared = batches.prepare(batch, generator)
            prepared.update({k: prepared[k].to(device) for k in EXTRA_KEYS})
            total += retrieval_step(wrapped, prepared, optimizer, config.train.grad_clip_norm) * len(batch["qid"])
            pairs += len(batch["qid"])
        seconds = time.perf_counter() - started
        totals = torch.tensor([total, pairs], dtype=torch.float64, device=device)
        if size > 1:
            torch.distributed.all_reduce(totals)
        total, pairs = totals.cpu().tolist()
        record: dict[str, Any] = {"stage": RETRIEVAL_STAGE, "epoch": epoch, "pairs": int(pairs), "seconds": seconds,
                                  "pairs_per_s": pairs / seconds if seconds > 0 else 0.0, "world_size": size,
                                  "loss_retrieval": total / max(pairs, 1), "loss_total": total / max(pairs, 1)}
        history.append(_report_epoch(wrapped, optimizer, data, config, epoch, record, rank, device, grounding))
    return {"stage": RETRIEVAL_STAGE, "first_epoch": first_epoch, "resumed": resume is not None,
            "history": history, "world_size": size}


def _report_epoch(wrapped: torch.nn.Module, optimizer: torch.optim.Optimizer, data, config: DRNConfig, epoch: int,
                  record: dict[str, Any], rank: int, device: torch.device,
                  grounding: dict[str, float] | None) -> dict[str, Any]:
    """Rank 0 validates retrieval and reports the epoch's checkpoint; the other ranks report without one."""
    if rank != 0:
        ray.train.report(record, checkpoint=None)
        return record
    model = unwrap(wrapped).model
    metrics = {**(grounding or {}), **video_recall(model, data.val, device)}
    key = selection_value(metrics, config.retrieval.select_metric)
    record.update({f"val_{k}": v for k, v in metrics.items()})
    record["selection_score"] = key[0] + 1e-7 * key[1]
    model.retrieval.trained_epochs.fill_(epoch)
    retrieval = {"epoch": epoch, "val": {k: v for k, v in metrics.items() if k.startswith("video R@")},
                 "loss": record["loss_retrieval"]}
    report_checkpoint(record, model, data.vocab, RETRIEVAL_STAGE,
                      {"val": metrics, "epoch": epoch, "retrieval": retrieval},
                      {"optimizer": optimizer.state_dict(), "epoch": epoch, "stage": RETRIEVAL_STAGE,
                       "grounding": grounding})
    print(f"stage 4 epoch {epoch}: retrieval loss {record['loss_retrieval']:.4f} ({record['pairs_per_s']:.0f} pairs/s "
          f"on {record['world_size']} workers) val {config.retrieval.select_metric} "
          f"{metrics[config.retrieval.select_metric]:.2f}", flush=True)
    return record
