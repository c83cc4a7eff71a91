"""What each Ray Train worker runs for one DRN stage: shard, step under DDP, validate, checkpoint, report.

One call of :func:`train_stage_worker` trains one stage (DESIGN.md section 5) on one worker:

* every worker reads the feature store and the annotations (``drn.training_setup``) and sees its share of the
  training pairs each epoch, shuffled (``DistributedSampler`` with ``set_epoch``);
* the model is wrapped in DDP *after* the stage's freeze, so only trained parameters are synchronised; frozen
  batch-norm layers stay in eval mode on every worker (``drn.training.set_stage_mode``);
* losses normalised per batch (matching by the number of positives, location over positives, quality over
  locations) are re-weighted with all-reduced counts, so a step over W workers equals a single-process step on
  the global batch (exactly when batch norm uses fixed statistics; trained batch-norm layers normalise with
  each worker's own statistics unless ``sync_batchnorm``, which needs GPUs);
* rank 0 validates after each epoch and reports a checkpoint (``model.pt`` from ``drn.checkpoint`` plus
  ``train_state.pt``); a restarted worker group resumes from ``ray.train.get_checkpoint()``.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from drn.checkpoint import load_checkpoint, save_checkpoint
from drn.config import DRNConfig
from drn.model import DRN
from drn.store.object_store import filesystem_for, is_uri
from drn.targets import Targets
from drn.training import (
    COUNT_KEYS,
    Stage,
    configure_stage,
    make_optimizer,
    selection_key,
    set_stage_mode,
    train_step,
    validate,
)
from drn.training_setup import prepare_training_data

MODEL_FILE, STATE_FILE = "model.pt", "train_state.pt"
DEVICE_KEYS = ("video", "words", "word_mask", "gt", "video_index", "query_index", "negative", "blocked")


@dataclass(frozen=True)
class FailureInjection:
    """A test hook: raise in ``stage`` at ``epoch``/``step`` (1-based) on ``rank``; only once if ``marker``."""

    stage: int
    epoch: int
    step: int = 1
    rank: int = 0
    marker: str | None = None

    @classmethod
    def parse(cls, text: str | None, marker: str | None = None) -> FailureInjection | None:
        """``"stage=2,epoch=1,step=1[,rank=0]"`` -> a FailureInjection (None for an empty text)."""
        if not text:
            return None
        try:
            fields = {k.strip(): int(v) for k, v in (item.split("=") for item in text.split(",") if item.strip())}
            return cls(marker=marker or None, **fields)
        except (ValueError, TypeError) as err:
            raise ValueError(f"failure injection {text!r} must look like stage=2,epoch=1,step=1[,rank=0]") from err

    def maybe_fail(self, stage: int, epoch: int, step: int, rank: int) -> None:
        if (stage, epoch, step, rank) != (self.stage, self.epoch, self.step, self.rank):
            return
        if self.marker is not None:
            if os.path.exists(self.marker):
                return
            with open(self.marker, "w") as fh:
                fh.write(f"failed at stage {stage} epoch {epoch} step {step} rank {rank}\n")
        raise RuntimeError(f"injected failure at stage {stage}, epoch {epoch}, step {step}, rank {rank}")


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def unwrap(model: torch.nn.Module) -> DRN:
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


def to_device(batches: Iterable[dict], device: torch.device) -> Iterator[dict]:
    for batch in batches:
        yield {k: (v.to(device, non_blocking=True) if k in DEVICE_KEYS else v) for k, v in batch.items()}


def global_loss_weights(losses: dict[str, torch.Tensor], num_positive: int, batch_size: int,
                        device: torch.device) -> dict[str, float]:
    """Per-loss factors that turn this worker's batch-normalised losses into its share of the global loss.

    DDP averages gradients over W workers; with ``c_w = W * local normaliser / global normaliser`` the average
    of ``c_w * loss_w`` is the loss of the whole global batch. Counts are all-reduced (one small collective).
    """
    rank, size = world()
    if size == 1:
        return {name: 1.0 for name in losses if name != "total"}
    counts = torch.tensor([num_positive, max(num_positive, 1), batch_size], dtype=torch.float64, device=device)
    totals = counts.clone()
    dist.all_reduce(totals)
    npos, npos_clamped, nbatch = counts.tolist()
    tpos, _, tbatch = totals.tolist()
    normaliser = {"location": (npos, tpos), "matching": (npos_clamped, max(tpos, 1.0)),
                  "quality": (nbatch, tbatch)}  # quality: mean over locations; approximate with a min-target
    return {name: (size * normaliser[name][0] / normaliser[name][1] if normaliser[name][1] > 0 else 0.0)
            for name in losses if name != "total"}


def distributed_step(
    model: torch.nn.Module, batch: dict, optimizer: torch.optim.Optimizer, stage: Stage, config: DRNConfig,
    *, scaler: torch.amp.GradScaler | None = None, autocast_dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """One optimisation step of a (DDP-wrapped) model on this worker's part of a global batch.

    ``drn.training.train_step`` with the losses re-weighted to the global batch's normalisers. Returns this
    worker's share of each global loss (summed over workers it is the global batch's loss); with one worker it is
    exactly ``train_step``.
    """
    device = batch["video"].device

    def weights(losses: dict[str, torch.Tensor], targets: Targets, rows: dict) -> dict[str, float]:
        return global_loss_weights(losses, targets.num_positive, len(rows["words"]), device)

    weighted = train_step(model, batch, optimizer, stage, config, generator, loss_weights=weights,
                          autocast_dtype=autocast_dtype, scaler=scaler)
    _, size = world()
    shares = {name: value / size for name, value in weighted.items() if name != "total" and name not in COUNT_KEYS}
    shares["total"] = sum(shares.values())
    return shares


def autocast_dtype_for(precision: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bfloat16 on GPU, none on CPU; ``bf16``/``fp16`` on GPU only; ``fp32``: none."""
    if device.type != "cuda" or precision == "fp32":
        return None
    return torch.float16 if precision == "fp16" else torch.bfloat16


def report_checkpoint(record: dict, model: Any, vocab: Any, stage: int, metrics: dict, state: dict) -> None:
    """Report an epoch to Ray Train with its checkpoint: the drn model file (``MODEL_FILE``, with ``metrics``) and
    the training ``state`` to resume from (``STATE_FILE``, holding at least ``epoch``)."""
    with tempfile.TemporaryDirectory(prefix="drn-ckpt-") as tmp:
        save_checkpoint(os.path.join(tmp, MODEL_FILE), model, vocab, stage=stage, metrics=metrics)
        torch.save(state, os.path.join(tmp, STATE_FILE))
        ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"epoch{state['epoch']:03d}")


@contextlib.contextmanager
def local_model_file(checkpoint: ray.train.Checkpoint | None, uri: str | None) -> Iterator[str | None]:
    """A local path of the drn checkpoint file in ``checkpoint`` or at ``uri`` (a Ray checkpoint directory or a
    ``.pt`` file, local or remote), or None when there is neither."""
    if checkpoint is None and uri is not None and uri.endswith(".pt"):
        if not is_uri(uri):
            yield uri
            return
        import pyarrow.fs as pafs

        with tempfile.TemporaryDirectory(prefix="drn-init-") as tmp:
            local = os.path.join(tmp, MODEL_FILE)
            source, path = filesystem_for(uri)  # s3:// configured by the AWS environment (drn.store.object_store)
            pafs.copy_files(path, local, source_filesystem=source, destination_filesystem=pafs.LocalFileSystem())
            yield local
        return
    if checkpoint is None and uri is not None:
        filesystem, path = filesystem_for(uri)
        checkpoint = ray.train.Checkpoint(path, filesystem=filesystem)
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as directory:
        yield os.path.join(directory, MODEL_FILE)


def _epoch_loader(data, batch_size: int, rank: int, size: int, seed: int, num_workers: int) -> DataLoader:
    """This worker's share of the training pairs, shuffled per epoch, batched with the run's negative rows."""
    sampler = DistributedSampler(data.train, num_replicas=size, rank=rank, shuffle=True, seed=seed)
    return DataLoader(data.train, batch_size=batch_size, sampler=sampler, collate_fn=data.collator("train"),
                      num_workers=num_workers)


def train_stage_worker(job: dict[str, Any]) -> dict[str, Any]:
    """Ray Train loop of one stage. ``job`` is built by ``moments.train.driver.stage_job`` (plain, picklable values)."""
    config = DRNConfig.from_dict(job["config"])
    stage = Stage(**job["stage"])
    rank, size = world()
    device = ray.train.torch.get_device()
    if isinstance(device, list):
        device = device[0]
    torch.manual_seed(config.train.seed)
    failure = FailureInjection(**job["failure"]) if job.get("failure") else None

    resume = ray.train.get_checkpoint()
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    with local_model_file(resume, job.get("init_checkpoint")) as model_file:
        data = prepare_training_data(config, job["features"], job["annotations"], job.get("dataset"),
                                     resume_from=model_file, with_test=False)
        if model_file is not None:
            model, _, _ = load_checkpoint(model_file, expected=config)
            model.config = config
        else:
            model = data.new_model()
        state = None
        if resume is not None:
            state = torch.load(os.path.join(os.path.dirname(model_file), STATE_FILE), weights_only=True)

    params = configure_stage(model, stage)
    model.to(device)
    if job.get("sync_batchnorm") and device.type == "cuda" and size > 1:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = make_optimizer(params, stage)
    dtype = autocast_dtype_for(job.get("precision", "auto"), device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    first_epoch = 1
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        first_epoch = int(state["epoch"]) + 1
    wrapped = ray.train.torch.prepare_model(model, move_to_device=False,
                                            parallel_strategy_kwargs={"find_unused_parameters": True})

    per_worker = math.ceil(config.train.batch_size / size)
    loader = _epoch_loader(data, per_worker, rank, size, config.train.seed, config.train.num_workers)
    generator = torch.Generator().manual_seed(config.train.seed + rank)
    history = []
    for epoch in range(first_epoch, stage.epochs + 1):
        loader.sampler.set_epoch(epoch)
        set_stage_mode(unwrap(wrapped), stage)
        sums = torch.zeros(4, dtype=torch.float64)  # location, matching, quality, total (weighted by pairs)
        pairs, started = 0, time.perf_counter()
        bar = tqdm(loader, desc=f"stage {stage.number} epoch {epoch}", disable=rank != 0 or not job.get("progress"),
                   mininterval=5.0, leave=False)
        for step, batch in enumerate(to_device(bar, device), start=1):
            if failure is not None:
                failure.maybe_fail(stage.number, epoch, step, rank)
            shares = distributed_step(wrapped, batch, optimizer, stage, config, scaler=scaler,
                                      autocast_dtype=dtype, generator=generator)
            n = len(batch["words"])
            pairs += n
            sums += torch.tensor([shares.get(k, 0.0) for k in ("location", "matching", "quality", "total")]) * n
        seconds = time.perf_counter() - started
        totals = torch.cat([sums, torch.tensor([pairs], dtype=torch.float64)]).to(device)
        if size > 1:  # every step has `size` equal local batches, so sum(share * local pairs) * size / all pairs
            dist.all_reduce(totals)  # is the epoch's mean of the global batch losses
            totals[:4] *= size
        totals = totals.cpu().tolist()
        seen = totals[4]
        record: dict[str, Any] = {"stage": stage.number, "epoch": epoch, "pairs": int(seen), "seconds": seconds,
                                  "pairs_per_s": seen / seconds if seconds > 0 else 0.0, "world_size": size}
        record.update({f"loss_{k}": totals[i] / max(seen, 1)
                       for i, k in enumerate(("location", "matching", "quality", "total"))
                       if k == "total" or k in stage.losses})
        history.append(_report_epoch(job, wrapped, optimizer, scaler, data, config, stage, epoch, record, rank,
                                     device))
    return {"stage": stage.number, "first_epoch": first_epoch, "resumed": resume is not None,
            "history": history, "world_size": size}


def _report_epoch(job: dict, wrapped: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler, data, config: DRNConfig, stage: Stage, epoch: int,
                  record: dict[str, Any], rank: int, device: torch.device) -> dict[str, Any]:
    """Rank 0 validates and reports the epoch's checkpoint; the other ranks report the same epoch without one."""
    if rank != 0:
        ray.train.report(record, checkpoint=None)
        return record
    model = unwrap(wrapped)
    metrics = validate(model, to_device(data.loader("val"), device), data.val.pairs, config)
    key = selection_key(metrics, config.train.select_metric, (stage.number, epoch))
    record.update({f"val_{k}": v for k, v in metrics.items()})
    record["selection_score"] = key[0] + 1e-7 * key[1]  # select metric, ties broken by mIoU (or the epoch: "last")
    report_checkpoint(record, model, data.vocab, stage.number, {"val": metrics, "epoch": epoch},
                      {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                       "stage": stage.number})
    print(f"stage {stage.number} epoch {epoch}: loss {record['loss_total']:.4f} "
          f"({record['pairs_per_s']:.0f} pairs/s on {record['world_size']} workers) "
          f"val R@1,IoU=0.5 {metrics['R@1,IoU=0.5']:.2f}", flush=True)
    return record
