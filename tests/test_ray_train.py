"""Distributed training on real local Ray Train (2 CPU workers, gloo): DDP equivalence, three stages, failures."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import ray.cloudpickle
import torch

from drn.checkpoint import load_checkpoint
from drn.config import DRNConfig, load_config
from drn.data import PairCollator, collate
from drn.datasets.synthetic import make_synthetic_benchmark
from drn.errors import InputError
from drn.model import DRN
from drn.negatives import build_negative_filter
from drn.pairs import GroundingPair
from drn.training import Stage, configure_stage, make_optimizer, train_step, validate
from drn.training_setup import prepare_training_data
from jobs import train as train_job
from moments.train import driver as ray_train
from moments.train.storage import RunStorage
from moments.train.worker import distributed_step, world

# Workers cannot import this test module by name: send its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SMALL = [
    "model.feature_dim=16", "model.num_segments=8", "model.lstm_hidden=8", "model.attention_dim=8",
    "model.location_dim=4", "model.level_channels=[8,8,16]", "model.fpn_channels=8", "model.iou_channels=[8,4]",
    "train.batch_size=16",
]
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml"


def small_config(*extra: str) -> DRNConfig:
    return load_config(CONFIG, [*SMALL, *extra])


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_synthetic_benchmark(tmp_path_factory.mktemp("syn"), num_videos=40, feature_dim=16, seed=3)


# --- DDP: two workers on two halves == one process on the whole batch ----------------------------------------

def fixed_items(size: int = 8) -> list[dict]:
    gen = torch.Generator().manual_seed(7)
    items = []
    for i in range(size):
        start = float(torch.randint(0, 4, (1,), generator=gen))
        length = 0.6 + 6.0 * float(torch.rand(1, generator=gen))  # short and long: different positive counts
        words = [(int(w),) for w in torch.randint(2, 10, (3 + i % 3,), generator=gen)]
        items.append({"video": torch.randn(8, 16, generator=gen), "words": words,
                      "gt": torch.tensor([start, min(start + length, 8.0)]), "duration": 8.0, "qid": i,
                      "video_id": f"v{i}", "query": f"query {i}"})
    return items


def fixed_batch(size: int = 8) -> dict:
    return collate(fixed_items(size))


def part(batch: dict, rows: slice) -> dict:
    return {k: v[rows] for k, v in batch.items()}


def batches_with_negatives(size: int = 8, per_positive: int = 2) -> tuple[list[dict], dict]:
    """Each worker's half with its own in-batch negative rows, and the two halves as one global batch."""
    items = fixed_items(size)
    pairs = [GroundingPair(i, it["video_id"], it["query"], 0.0, 1.0, 8.0) for i, it in enumerate(items)]
    collator = PairCollator(build_negative_filter(pairs, paraphrase_cosine=1.0), per_positive, seed=0)
    halves = [collator(items[: size // 2]), collator(items[size // 2:])]
    merged = {}
    for key in ("video", "words", "word_mask", "gt", "duration", "negative"):
        merged[key] = torch.cat([h[key] for h in halves])
    for key in ("video_index", "query_index"):
        merged[key] = torch.cat([halves[0][key], halves[1][key] + size // 2])
    for key in ("qid", "video_id", "query"):
        merged[key] = halves[0][key] + halves[1][key]
    return halves, merged


def fixed_statistics(model: DRN) -> None:
    """Batch norm with its running statistics (eval mode): the mode in which DDP equals one process exactly."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def step_setup(config: DRNConfig) -> tuple[DRN, Stage, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = DRN(config, torch.randn(12, 6, generator=torch.Generator().manual_seed(1)))
    stage = Stage(3, "all", ("location", "matching", "quality"), 1e-2, 1)  # every loss, a visible step
    params = configure_stage(model, stage)
    fixed_statistics(model)
    return model, stage, make_optimizer(params, stage)


def ddp_one_step(job: dict) -> dict:
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    config = DRNConfig.from_dict(job["config"])
    model, stage, optimizer = step_setup(config)
    rank, size = world()
    wrapped = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    if "batches" in job:  # each worker's own half, with its own negative rows
        local = job["batches"][rank]
    else:
        half = len(job["batch"]["words"]) // size
        local = part(job["batch"], slice(rank * half, (rank + 1) * half))
    shares = distributed_step(wrapped, local, optimizer, stage, config)
    totals = torch.tensor([shares[k] for k in ("location", "matching", "quality", "total")], dtype=torch.float64)
    dist.all_reduce(totals)
    grads = {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters() if p.grad is not None}
    ray.train.report({"rank": rank})
    return {"world": size, "losses": totals.tolist(), "grads": grads,  # numpy: Ray Train returns no tensors
            "state": {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}}


@pytest.mark.slow
@pytest.mark.parametrize("negatives", [False, True], ids=["positives", "with-negatives"])
def test_ddp_step_on_two_workers_equals_one_process_on_the_global_batch(ray_session, tmp_path, negatives) -> None:
    config = small_config()
    if negatives:
        halves, batch = batches_with_negatives()
        assert int(batch["negative"].sum()) == 2 * 8  # two per positive row
        job = {"config": config.to_dict(), "batches": halves}
    else:
        batch = fixed_batch()
        job = {"config": config.to_dict(), "batch": batch}
    trainer = ray_train.TorchTrainer(
        ddp_one_step, train_loop_config=job,
        scaling_config=ray.train.ScalingConfig(num_workers=2),
        run_config=ray.train.RunConfig(name="ddp-step", storage_path=str(tmp_path)),
    )
    got = trainer.fit().return_value
    assert got["world"] == 2

    model, stage, optimizer = step_setup(config)
    expected = train_step(model, batch, optimizer, stage, config)  # the plain loop's step, whole batch
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got["losses"] == pytest.approx([expected[k] for k in ("location", "matching", "quality", "total")],
                                          rel=1e-5)
    assert grads.keys() == got["grads"].keys() and len(grads) > 10
    for name, grad in grads.items():
        torch.testing.assert_close(torch.from_numpy(got["grads"][name]), grad, rtol=1e-4, atol=1e-7, msg=name)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(torch.from_numpy(got["state"][name]), value, rtol=1e-5, atol=1e-6, msg=name)

    if negatives:
        return
    # The check has teeth: plainly averaging the halves' own (per-half normalised) gradients is not the same.
    naive = {}
    for rows in (slice(0, 4), slice(4, 8)):
        m, s, o = step_setup(config)
        train_step(m, part(batch, rows), o, s, config)
        for n, p in m.named_parameters():
            if p.grad is not None:
                naive[n] = naive.get(n, 0) + p.grad / 2
    assert any(not torch.allclose(naive[n], grads[n], rtol=1e-3, atol=1e-6) for n in grads)


# --- three stages, a stop in stage 2, a restart that resumes there ------------------------------------------

@pytest.fixture(scope="module")
def resumed_run(ray_session, bench, tmp_path_factory):
    """Run 1 stops in stage 2 epoch 2 (max_failures=0). Run 2, the same call, resumes in stage 2; in stage 3 one
    worker (rank 1) raises once mid-epoch 2 and, with max_failures=1, the group is replaced and the stage goes on."""
    storage = tmp_path_factory.mktemp("runs")
    marker = storage.parent / f"{storage.name}-failed-once"
    config = small_config("train.stage1.epochs=2", "train.stage2.epochs=2", "train.stage3.epochs=2",
                          "train.stage2.lr=1.0e-3", "train.stage3.lr=1.0e-4")
    common = {"num_workers": 2, "storage": str(storage), "name": "syn", "keep_checkpoints": 2}
    with pytest.raises(ray_train.StageFailedError, match="stage 2") as stopped:
        ray_train.fit_distributed(config, bench.features, bench.annotations, **common, max_failures=0,
                                  fail_at="stage=2,epoch=2,step=1")
    after_stop = {
        "stage1_done": (storage / "syn-stage1" / "DONE.json").read_text(),
        "stage1_mtime": (storage / "syn-stage1" / "DONE.json").stat().st_mtime_ns,
        "stage1_files": sorted(p.name for p in (storage / "syn-stage1").iterdir()),
        "stage2_files": sorted(p.name for p in (storage / "syn-stage2").iterdir()),
    }
    # the restart runs from another folder with relative paths, as a user would type them: workers must still
    # find the store and the annotations
    here = os.getcwd()
    os.chdir(Path(bench.features).parent)
    try:
        summary = ray_train.fit_distributed(
            config, os.path.relpath(bench.features), os.path.relpath(bench.annotations), **common,
            max_failures=1, fail_at="stage=3,epoch=2,step=2,rank=1", fail_marker=str(marker))
    finally:
        os.chdir(here)
    return {"config": config, "storage": storage, "stop": str(stopped.value), "after_stop": after_stop,
            "summary": summary, "marker": marker}


@pytest.mark.slow
def test_a_job_stopped_in_stage2_resumes_there_without_rerunning_stage1(resumed_run) -> None:
    storage, after = resumed_run["storage"], resumed_run["after_stop"]
    assert "injected failure at stage 2, epoch 2" in resumed_run["stop"] and "again to resume" in resumed_run["stop"]
    assert "epoch001" in after["stage2_files"] and "DONE.json" not in after["stage2_files"]
    s1, s2, _ = resumed_run["summary"]["stages"]
    assert s1["skipped"] is True  # stage 1 was not rerun: its files are untouched
    assert (storage / "syn-stage1" / "DONE.json").read_text() == after["stage1_done"]
    assert (storage / "syn-stage1" / "DONE.json").stat().st_mtime_ns == after["stage1_mtime"]
    assert sorted(p.name for p in (storage / "syn-stage1").iterdir()) == after["stage1_files"]
    assert (s2["skipped"], s2["resumed"], s2["first_epoch"], s2["epochs_run"]) == (False, True, 2, [2])
    assert {"epoch001", "epoch002", "DONE.json", "best.json"} <= {p.name for p in (storage / "syn-stage2").iterdir()}


@pytest.mark.slow
def test_a_worker_failure_mid_epoch_is_recovered_from_the_latest_checkpoint(resumed_run) -> None:
    assert resumed_run["marker"].read_text().startswith("failed at stage 3 epoch 2 step 2 rank 1")
    s3 = resumed_run["summary"]["stages"][2]
    # the replaced worker group started from the epoch-1 checkpoint of stage 3 and ran only epoch 2
    assert (s3["skipped"], s3["resumed"], s3["first_epoch"], s3["epochs_run"]) == (False, True, 2, [2])
    assert s3["world_size"] == 2 and (resumed_run["storage"] / "syn-stage3" / "DONE.json").exists()


@pytest.mark.slow
def test_three_stages_on_two_workers_and_the_best_checkpoint_reproduces_in_one_process(resumed_run, bench) -> None:
    summary, storage, config = resumed_run["summary"], resumed_run["storage"], resumed_run["config"]
    assert [s["stage"] for s in summary["stages"]] == [1, 2, 3]
    assert all((storage / f"syn-stage{k}" / "DONE.json").exists() for k in (1, 2, 3))
    assert summary["best_checkpoint"] == str(storage / "syn" / "best.pt")
    assert json.loads((storage / "syn" / "summary.json").read_text())["val"] == summary["val"]

    model, loaded_config, vocab = load_checkpoint(summary["best_checkpoint"], expected=config)
    data = prepare_training_data(loaded_config, bench.features, bench.annotations,
                                 resume_from=summary["best_checkpoint"])
    val = validate(model, data.loader("val"), data.val.pairs, loaded_config)
    test = validate(model, data.loader("test"), data.test.pairs, loaded_config)
    assert val == pytest.approx(summary["val"], abs=1e-6)
    assert test == pytest.approx(summary["test"], abs=1e-6)
    # ...and equal what rank 0 reported for that epoch during training
    best_stage = summary["stages"][summary["stage"] - 1]
    assert val == pytest.approx(best_stage["val"], abs=1e-4)
    assert len(vocab) == len(data.vocab) and set(val) >= {"R@1,IoU=0.5", "R@5,IoU=0.7", "mIoU"}


# --- bad input: clear errors before any worker starts --------------------------------------------------------

def test_missing_videos_are_counted_and_listed_or_skipped_on_request(bench, tmp_path, capsys) -> None:
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    for split in ("train", "val", "test"):
        text = (Path(bench.annotations) / f"{split}.jsonl").read_text()
        if split == "train":
            ghost = {"qid": 999, "video_id": "ghost01", "query": "the red event", "start_s": 1.0, "end_s": 3.0,
                     "duration_s": 10.0}
            text += json.dumps(ghost) + "\n"
        (annotations / f"{split}.jsonl").write_text(text)
    config = small_config()
    with pytest.raises(InputError, match=r"1 of \d+ pairs name 1 videos .*ghost01.*skip_missing_videos") as missing:
        ray_train.check_pairs_have_features(config, bench.features, str(annotations), None, False)
    assert "--skip-missing-videos" not in str(missing.value)  # the library names its parameter, the job its flag
    dropped = ray_train.check_pairs_have_features(config, bench.features, str(annotations), None, True)
    assert dropped == {"train": 1, "val": 0, "test": 0}
    args = ["--config", str(CONFIG), "--features", bench.features, "--annotations", str(annotations),
            "--num-workers", "1", "--storage", str(tmp_path / "runs"), "--name", "m",
            *[a for option in SMALL for a in ("--set", option)]]
    assert train_job.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.search(r"^error: .*1 of \d+ pairs name 1 videos .*ghost01.*with --skip-missing-videos to leave", err)
    assert not (tmp_path / "runs" / "m-stage1").exists()


def test_unwritable_or_unknown_storage_is_refused_before_training(tmp_path, capsys, bench) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(InputError, match="storage is not writable"):
        RunStorage.open(blocker / "runs", "x").check_writable()
    with pytest.raises(InputError, match="storage cannot be opened"):
        RunStorage.open("nosuchscheme://bucket/runs", "x")
    args = ["--config", str(CONFIG), "--features", bench.features, "--annotations", bench.annotations,
            "--num-workers", "2", "--storage", str(blocker / "runs"), "--name", "x"]
    assert train_job.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not writable" in err and len(err.splitlines()) == 1
    assert train_job.main([*args[:-4], "--storage", str(tmp_path), "--set", "train.nope=1"]) == 2
    assert "unknown config key 'train.nope'" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x-stage1")


@pytest.mark.slow
def test_ray_train_takes_the_store_dimension_of_a_preset_without_set(ray_session, bench, tmp_path, capsys) -> None:
    """configs/synthetic.yaml says 64-d, the store is 16-d: --num-workers trains a 16-d model and records it."""
    sizes = [a for s in SMALL[1:] for a in ("--set", s)]  # small layers, but no model.feature_dim
    args = ["--config", str(CONFIG), "--features", bench.features, "--annotations", bench.annotations,
            "--num-workers", "1", "--storage", str(tmp_path), "--name", "dim", "--stages", "1", "--quiet",
            "--set", "train.stage1.epochs=1", *sizes]
    assert train_job.main(args) == 0
    captured = capsys.readouterr()
    assert "model.feature_dim: 16 (the feature store's dimension; the config said 64)" in captured.err
    best = json.loads(captured.out.strip().splitlines()[-1])["best_checkpoint"]
    _, config, _ = load_checkpoint(best)
    assert config.model.feature_dim == 16
    assert train_job.main([*args, "--set", "model.feature_dim=64"]) == 2
    assert "--set model.feature_dim=64 disagrees with the feature store" in capsys.readouterr().err
