"""DRN's three training stages on Ray Train: one TorchTrainer per stage, checkpoints in the run's storage, resumable.

Stage k is a TorchTrainer whose RunConfig name is ``<name>-stage<k>`` under ``storage``; it starts from the best
validation checkpoint of stage k-1. A worker that dies is replaced and its stage goes on from the latest epoch
checkpoint (``max_failures``); a run started again with the same ``storage`` and ``name`` skips the stages with a
``DONE.json`` and resumes the others from their latest checkpoint (Ray Train V2 restores a run built again under
the same storage path and name). The per-worker loop is ``moments.train.worker``; the storage layout is described
in ``moments.train.storage``. :func:`fit_distributed` returns the summary: the best checkpoint with its validation
and test metrics. The command line is ``jobs.train --num-workers N``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import ray
import ray.train
from ray.train.torch import TorchTrainer

from drn.checkpoint import check_feature_dim, load_checkpoint, read_checkpoint, save_checkpoint
from drn.config import DRNConfig
from drn.data import usable_pairs
from drn.errors import InputError
from drn.retrieval import RETRIEVAL_STAGE
from drn.store import FeatureStore, absolute_uri
from drn.training import selection_key, stages_from_config, validate
from drn.training_setup import eval_splits, load_pairs, prepare_training_data
from moments.train.retrieval import (
    retrieval_stage_job,
    retrieval_stage_skip_reason,
    retrieval_stage_worker,
    wants_retrieval_stage,
)
from moments.train.storage import BEST_FILE, DONE_FILE, RunStorage
from moments.train.worker import MODEL_FILE, FailureInjection, local_model_file, train_stage_worker
from pipeline.capacity import DEFAULT_WAIT_S, PipelineNeeds, alive_node_resources, require
from pipeline.ray_runtime import start_ray

FAIL_AT_ENV, FAIL_MARKER_ENV = "MOMENTS_TRAIN_FAIL_AT", "MOMENTS_TRAIN_FAIL_MARKER"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SHOWN_MISSING = 10


class StageFailedError(RuntimeError):
    """A stage's Ray Train run failed after its retries; running it again with the same storage and name resumes it."""


def check_pairs_have_features(config: DRNConfig, features: str, annotations: str, dataset: str | None,
                              skip_missing_videos: bool) -> dict[str, int]:
    """Per split, the pairs whose video is not an ``ok`` video of the store; an InputError listing them
    unless ``skip_missing_videos`` (then the workers leave those pairs out, as ``drn.training_setup`` does)."""
    store = FeatureStore(features)
    check_feature_dim(config, store.metadata.feature_dim, features)
    durations = store.durations()
    name = dataset or config.dataset
    val_split, test_split = eval_splits(name)
    dropped: dict[str, int] = {}
    missing: set[str] = set()
    ok = set(store.ok_video_ids())
    total = without = 0
    for split in ("train", val_split, test_split):
        pairs = load_pairs(config, annotations, split, durations, name)
        selection = usable_pairs(pairs, store)  # also drops pairs that start after their video's decoded end
        total += len(pairs)
        dropped[split] = len(selection.dropped)
        lacking = [p.video_id for p in pairs if p.video_id not in ok]
        without += len(lacking)
        missing.update(lacking)
    if missing and not skip_missing_videos:
        shown = ", ".join(sorted(missing)[:SHOWN_MISSING]) + (" ..." if len(missing) > SHOWN_MISSING else "")
        raise InputError(f"{without} of {total} pairs name {len(missing)} videos that are not ok videos of the "
                         f"feature store ({shown}); train with skip_missing_videos to leave them out", path=features)
    return dropped


def stage_job(config: DRNConfig, features: str, annotations: str, dataset: str | None, stage_number: int,
              init_checkpoint: str | None, *, precision: str = "auto", failure: FailureInjection | None = None,
              sync_batchnorm: bool = False, threads: int | None = None, progress: bool = False) -> dict[str, Any]:
    """The train_loop_config of one stage: plain values only, so every worker rebuilds the same state."""
    stage = stages_from_config(config, [stage_number])[0]
    return {"config": config.to_dict(), "features": features, "annotations": annotations, "dataset": dataset,
            "stage": dataclasses.asdict(stage), "init_checkpoint": init_checkpoint, "precision": precision,
            "failure": dataclasses.asdict(failure) if failure else None, "sync_batchnorm": sync_batchnorm,
            "threads": threads, "progress": progress}


def _best_of(best_checkpoints: Sequence[tuple[ray.train.Checkpoint, dict]]) -> tuple[ray.train.Checkpoint, dict]:
    """The best epoch by selection score; the earlier epoch wins a tie (as in drn.training.train_stage)."""
    scored = [(c, m) for c, m in best_checkpoints if "selection_score" in m]
    if not scored:
        raise StageFailedError("the stage reported no checkpoint with validation metrics")
    return max(scored, key=lambda cm: (cm[1]["selection_score"], -cm[1]["epoch"]))


def _cause_line(err: BaseException) -> str:
    """The most telling line of a (Ray-wrapped) error: its last ``SomethingError: ...`` line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    causes = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line)]
    return (causes or lines or [type(err).__name__])[-1][:300]


def training_needs(num_workers: int, cpus_per_worker: float, use_gpu: bool) -> PipelineNeeds:
    """The worker group of a stage: what the alive nodes must hold for it to start."""
    return PipelineNeeds("training", "Ray Train worker", num_workers, cpus_per_worker, 1.0 if use_gpu else 0.0)


def run_stage(storage: RunStorage, job: dict[str, Any], *, num_workers: int, use_gpu: bool, max_failures: int,
              keep_checkpoints: int | None, cpus_per_worker: float = 1.0,
              worker=train_stage_worker) -> dict[str, Any]:
    """Train one stage with a TorchTrainer; write and return its ``best.json`` record, then ``DONE.json``.

    A worker group that cannot be placed within Ray Train's start timeout (60 s) counts against
    ``max_failures`` too (Ray Train would retry it forever), so a cluster left too small ends the stage."""
    number = job["stage"]["number"]
    run_name = storage.stage_run(number)
    trainer = TorchTrainer(
        worker,
        train_loop_config=job,
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage.ray_storage[0], storage_filesystem=storage.ray_storage[1],
            failure_config=ray.train.FailureConfig(max_failures=max_failures,
                                                   controller_failure_limit=max(1, max_failures)),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep_checkpoints,
                                                         checkpoint_score_attribute="selection_score",
                                                         checkpoint_score_order="max"),
        ),
    )
    started = time.time()
    try:
        result = trainer.fit()
    except Exception as err:  # ray.train.TrainingFailedError and friends
        first = _cause_line(err)
        try:  # a cluster left too small for the workers: say which resource is missing
            missing = training_needs(num_workers, cpus_per_worker, use_gpu).shortfall(alive_node_resources())
        except Exception:  # the cluster's state is unknown: the cause line alone
            missing = None
        first += f"; missing {missing}" if missing else ""
        raise StageFailedError(f"stage {number} failed ({first}); run the same command again to resume it "
                               f"from its latest checkpoint under {storage.uri_of(run_name)}") from err
    checkpoint, metrics = _best_of(result.best_checkpoints or [])
    ckpt_uri = storage.uri_from_path(checkpoint.path)
    run_info = result.return_value or {}
    record = {
        "stage": number, "epoch": int(metrics["epoch"]), "checkpoint": ckpt_uri,
        "model": f"{ckpt_uri}/{MODEL_FILE}", "selection_score": metrics["selection_score"],
        "val": {k[4:]: v for k, v in metrics.items() if k.startswith("val_")},
        "first_epoch": run_info.get("first_epoch"), "resumed": run_info.get("resumed"),
        "epochs_run": [h["epoch"] for h in run_info.get("history", [])],
        "pairs_per_s": [h["pairs_per_s"] for h in run_info.get("history", [])],
        "world_size": run_info.get("world_size"), "seconds": time.time() - started,
    }
    storage.write_json(record, run_name, BEST_FILE)
    storage.write_json({**record, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}, run_name, DONE_FILE)
    return record


def _final_evaluation(config_dict: dict, features: str, annotations: str, dataset: str | None, model_uri: str,
                      storage_uri: str, name: str, stage: int) -> dict[str, Any]:
    """Validation and test metrics of the chosen checkpoint, and a copy of it as ``<name>/best.pt``."""
    config = DRNConfig.from_dict(config_dict)
    storage = RunStorage.open(storage_uri, name)
    with local_model_file(None, model_uri) as model_file:
        data = prepare_training_data(config, features, annotations, dataset, resume_from=model_file)
        model, _, vocab = load_checkpoint(model_file, expected=config)
        retrieval = read_checkpoint(model_file)["metrics"].get("retrieval")
    val = validate(model, data.loader("val"), data.val.pairs, config)
    test = validate(model, data.loader("test"), data.test.pairs, config) if data.test is not None else None
    with tempfile.TemporaryDirectory(prefix="drn-best-") as tmp:
        local = os.path.join(tmp, "best.pt")
        save_checkpoint(local, model, vocab, stage=stage, metrics={"val": val, "test": test, "source": model_uri,
                                                                   **data.checkpoint_facts(),
                                                                   **({"retrieval": retrieval} if retrieval else {})})
        best_uri = storage.upload_file(local, name, "best.pt")
    return {"best_checkpoint": best_uri, "val": val, "test": test,
            "pairs": {"train": len(data.train), "val": len(data.val), "test": len(data.test or [])}}


def fit_distributed(
    config: DRNConfig, features: str | os.PathLike, annotations: str | os.PathLike, dataset: str | None = None, *,
    num_workers: int, use_gpu: bool = False, storage: str | os.PathLike, name: str,
    stages: Sequence[int] = (1, 2, 3, 4), init_checkpoint: str | None = None, max_failures: int = 3,
    keep_checkpoints: int | None = 2, cpus_per_worker: float = 1.0, precision: str = "auto",
    sync_batchnorm: bool = False, skip_missing_videos: bool = False, threads: int | None = None,
    fail_at: str | None = None, fail_marker: str | None = None, progress: bool = False, notices: Sequence[str] = (),
    capacity_wait_s: float = DEFAULT_WAIT_S,
) -> dict[str, Any]:
    """Train ``stages`` in order on ``num_workers`` Ray Train workers; returns (and stores) the final summary.

    ``notices`` are printed to stderr once the inputs have passed their checks (bad input stays one line). Each
    stage starts once the alive nodes can hold its workers; ``pipeline.capacity.ClusterCapacityError`` (naming the
    missing resource) when they cannot for ``capacity_wait_s`` seconds.

    ``fail_at`` (default: $MOMENTS_TRAIN_FAIL_AT) is a test hook, e.g. ``"stage=2,epoch=1,step=1"``; with
    ``fail_marker`` (default: $MOMENTS_TRAIN_FAIL_MARKER) it fires only once.
    """
    # Workers run in folders of their own (or on other machines): hand them absolute paths.
    features, annotations = absolute_uri(features), absolute_uri(annotations)
    init_checkpoint = absolute_uri(init_checkpoint) if init_checkpoint else None
    if num_workers < 1:
        raise InputError(f"num_workers must be at least 1, not {num_workers}")
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    run_storage = RunStorage.open(storage, name)
    run_storage.check_writable()
    dropped = check_pairs_have_features(config, features, annotations, dataset, skip_missing_videos)
    for notice in notices:
        print(notice, file=sys.stderr)
    failure = FailureInjection.parse(fail_at if fail_at is not None else os.environ.get(FAIL_AT_ENV),
                                     fail_marker if fail_marker is not None else os.environ.get(FAIL_MARKER_ENV))
    chosen = stages_from_config(config, [s for s in stages if s != RETRIEVAL_STAGE])
    retrieval = wants_retrieval_stage(config, stages)
    if not chosen and not retrieval:
        raise InputError("no stage to train (stage 4 needs model.retrieval_dim > 0 and retrieval.epochs > 0)")
    start_ray()

    records: list[dict[str, Any]] = []
    first = chosen[0].number if chosen else RETRIEVAL_STAGE
    earlier = (run_storage.stage_done(n) for n in range(first - 1, 0, -1))
    previous = next((done for done in earlier if done is not None), None)
    init = init_checkpoint or (previous["checkpoint"] if previous else None)
    if first > 1 and init is None:
        raise InputError(f"stage {first} starts from the best checkpoint of stage "
                         f"{first - 1}: run that stage first under the same storage and name, "
                         "or give a checkpoint to start from")
    for stage in chosen:
        done = run_storage.stage_done(stage.number)
        if done is not None:
            print(f"stage {stage.number}: done earlier (best epoch {done['epoch']}), skipped", file=sys.stderr)
            record = {**done, "skipped": True}
        else:
            job = stage_job(config, features, annotations, dataset, stage.number, init, precision=precision,
                            failure=failure, sync_batchnorm=sync_batchnorm, threads=threads, progress=progress)
            require(training_needs(num_workers, cpus_per_worker, use_gpu), wait_s=capacity_wait_s)
            record = {**run_stage(run_storage, job, num_workers=num_workers, use_gpu=use_gpu,
                                  max_failures=max_failures, keep_checkpoints=keep_checkpoints,
                                  cpus_per_worker=cpus_per_worker), "skipped": False}
        records.append(record)
        init = record["checkpoint"]

    best = records[0] if records else {"checkpoint": init}
    for record in records[1:]:
        metric = config.train.select_metric
        if (selection_key(record["val"], metric, (record["stage"], record["epoch"]))
                > selection_key(best["val"], metric, (best["stage"], best["epoch"]))):
            best = record
    skipped = retrieval and retrieval_stage_skip_reason(config, features, annotations, dataset)
    if skipped and not records:
        raise InputError(f"stage 4 cannot run: {skipped.split('; the checkpoint')[0]}", path=annotations)
    if skipped:
        print(f"stage 4 skipped: {skipped}", file=sys.stderr)
    if retrieval and not skipped:  # stage 4 trains the retrieval head on the best DRN checkpoint, DRN frozen
        done = run_storage.stage_done(RETRIEVAL_STAGE)
        if done is not None:
            print(f"stage 4: done earlier (best epoch {done['epoch']}), skipped", file=sys.stderr)
            best = {**done, "skipped": True}
        else:
            job = retrieval_stage_job(config, features, annotations, dataset, best["checkpoint"], failure=failure,
                                      threads=threads, progress=progress)
            best = {**run_stage(run_storage, job, num_workers=num_workers, use_gpu=use_gpu,
                                max_failures=max_failures, keep_checkpoints=keep_checkpoints,
                                cpus_per_worker=cpus_per_worker, worker=retrieval_stage_worker), "skipped": False}
        records.append(best)
    evaluate_remote = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0)(_final_evaluation)
    final = ray.get(evaluate_remote.remote(config.to_dict(), features, annotations, dataset, best["model"],
                                           run_storage.uri, name, best["stage"]))
    summary = {"best_checkpoint": final["best_checkpoint"], "stage": best["stage"], "epoch": best["epoch"],
               "source_checkpoint": best["model"], "val": final["val"], "test": final["test"],
               "pairs": final["pairs"], "dropped_pairs": dropped, "num_workers": num_workers,
               "stages": records}
    run_storage.write_json(summary, name, "summary.json")
    return summary
