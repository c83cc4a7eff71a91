"""The three stages: what each trains, the stage-2 freeze, the epoch loop, and the jobs.train CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from drn.checkpoint import load_checkpoint, read_checkpoint
from drn.config import load_config
from drn.data import collate
from drn.datasets.synthetic import make_synthetic_benchmark
from drn.errors import InputError
from drn.model import DRN
from drn.training import configure_stage, run_epoch, stages_from_config, train_step
from drn.training_setup import adopt_store_feature_dim
from jobs import train as train_job

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMALL = [
    "model.feature_dim=16", "model.num_segments=8", "model.lstm_hidden=8", "model.attention_dim=8",
    "model.location_dim=4", "model.level_channels=[8,8,16]", "model.fpn_channels=8", "model.iou_channels=[8,4]",
]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is as fast and does not crawl when the CI machine is oversubscribed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch(size: int = 6) -> dict:
    gen = torch.Generator().manual_seed(1)
    items = []
    for i in range(size):
        start = float(torch.randint(0, 5, (1,), generator=gen))
        words = [(int(w),) for w in torch.randint(2, 10, (3 + i % 2,), generator=gen)]
        items.append({"video": torch.randn(8, 16, generator=gen), "words": words,
                      "gt": torch.tensor([start, start + 2.5]), "duration": 8.0, "qid": i, "video_id": f"v{i}",
                      "query": f"query {i}"})
    return collate(items)


def snapshot(model: DRN) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_stages_follow_the_design() -> None:
    config = load_config(None, SMALL)
    stages = stages_from_config(config)
    assert [(s.number, s.trains, s.losses, s.lr) for s in stages] == [
        (1, "all_but_quality", ("location", "matching"), 1e-3),
        (2, "quality_only", ("quality",), 1e-5),
        (3, "all", ("location", "matching", "quality"), 1e-6),
    ]
    assert config.train.batch_size == 32
    no_quality = load_config(None, [*SMALL, "model.quality=none"])
    assert [s.number for s in stages_from_config(no_quality)] == [1, 3]


def test_stage2_changes_only_the_iou_head_and_no_frozen_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    config = load_config(None, SMALL)
    model = DRN(config, torch.randn(10, 6))
    stage = stages_from_config(config, [2])[0]
    stage = type(stage)(stage.number, stage.trains, stage.losses, 1e-2, 1)  # a visible step
    params = configure_stage(model, stage)
    head_ids = {id(p) for p in model.quality_head().parameters()}
    assert {id(p) for p in params} == head_ids
    before = snapshot(model)
    optimizer = torch.optim.Adam(params, lr=stage.lr)
    train_step(model, batch(), optimizer, stage, config)
    moved = changed(before, snapshot(model))
    assert moved, "the IoU head must learn in stage 2"
    assert all(k.startswith("head.iou.") for k in moved), sorted(k for k in moved if not k.startswith("head.iou."))
    assert any(k.endswith(".weight") for k in moved)
    frozen_bn = [k for k in before if "running_" in k and not k.startswith("head.iou.")]
    assert frozen_bn and not (set(frozen_bn) & moved)


def test_stage1_leaves_the_iou_head_alone_and_stage3_trains_everything() -> None:
    torch.manual_seed(0)
    config = load_config(None, SMALL)
    model = DRN(config, torch.randn(10, 6))
    s1, _, s3 = stages_from_config(config)
    params = configure_stage(model, s1)
    before = snapshot(model)
    train_step(model, batch(), torch.optim.Adam(params, lr=1e-2), s1, config)
    moved = changed(before, snapshot(model))
    assert not any(k.startswith("head.iou.") for k in moved)
    assert "fusion.video_proj.weight" in moved and "fusion.level0.1.running_mean" in moved
    params = configure_stage(model, s3)
    assert len(params) == len(list(model.parameters()))
    before = snapshot(model)
    train_step(model, batch(), torch.optim.Adam(params, lr=1e-2), s3, config)
    assert any(k.startswith("head.iou.") for k in changed(before, snapshot(model)))


def test_run_epoch_reports_losses_and_throughput() -> None:
    config = load_config(None, SMALL)
    model = DRN(config, torch.randn(10, 6))
    stage = stages_from_config(config, [1])[0]
    optimizer = torch.optim.Adam(configure_stage(model, stage), lr=stage.lr)
    first = run_epoch(model, [batch(), batch()], optimizer, stage, config)
    assert first["pairs"] == 12 and first["pairs_per_s"] > 0
    assert {"loss_location", "loss_matching", "loss_total"} <= set(first)
    for _ in range(15):
        last = run_epoch(model, [batch(), batch()], optimizer, stage, config)
    assert last["loss_total"] < first["loss_total"]


@pytest.fixture(scope="module")
def tiny_benchmark(tmp_path_factory):
    return make_synthetic_benchmark(tmp_path_factory.mktemp("syn"), num_videos=40, feature_dim=16, seed=3)


def cli_args(bench, out, *extra):
    return ["--config", "configs/synthetic.yaml", "--features", bench.features, "--annotations", bench.annotations,
            "--out", str(out), "--quiet", *[a for s in SMALL[1:] for a in ("--set", s)],
            "--set", "model.feature_dim=16", "--set", "train.stage1.epochs=2", "--set", "train.stage2.epochs=1",
            "--set", "train.stage3.epochs=1", *extra]


def test_train_cli_ends_with_one_json_line(tiny_benchmark, tmp_path, capsys) -> None:
    assert train_job.main(cli_args(tiny_benchmark, tmp_path / "run")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["best_checkpoint"] == str(tmp_path / "run" / "best.pt")
    assert {"R@1,IoU=0.5", "R@5,IoU=0.7", "mIoU"} <= set(result["val"]) and "mIoU" in result["test"]
    assert result["stage"] in (1, 2, 3)
    for name in ("best.pt", "last.pt", "stage1_best.pt", "stage2_best.pt", "stage3_best.pt"):
        assert (tmp_path / "run" / name).is_file()
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["metrics"]["val"] == result["val"]
    durations = best["metrics"]["train_duration_s"]  # read by grounding to size its windows
    assert 0 < durations["median"] <= durations["p95"]
    # the best checkpoint is the best stage by validation R@1,IoU=0.5 (then mIoU), never by test
    stage_vals = [torch.load(tmp_path / "run" / f"stage{s}_best.pt", weights_only=True)["metrics"]["val"]
                  for s in (1, 2, 3)]
    top = max((v["R@1,IoU=0.5"], v["mIoU"]) for v in stage_vals)
    assert (result["val"]["R@1,IoU=0.5"], result["val"]["mIoU"]) == top

    # resume from the best checkpoint and run only stage 3
    resumed = tmp_path / "resumed"
    assert train_job.main(cli_args(tiny_benchmark, resumed, "--resume-from", result["best_checkpoint"],
                                   "--stages", "3")) == 0
    assert (resumed / "stage3_best.pt").is_file() and not (resumed / "stage1_best.pt").exists()


def test_select_metric_last_keeps_the_latest_epoch_and_stage(tiny_benchmark, tmp_path, capsys) -> None:
    assert train_job.main(cli_args(tiny_benchmark, tmp_path / "run", "--set", "train.select_metric=last")) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["stage"] == 3
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert best["stage"] == last["stage"] == 3
    assert all(torch.equal(best["state_dict"][k], last["state_dict"][k]) for k in best["state_dict"])
    stage1 = torch.load(tmp_path / "run" / "stage1_best.pt", weights_only=True)
    assert stage1["metrics"]["epoch"] == 2  # the stage's last epoch, whatever validation said


def test_train_cli_bad_input_exits_2_with_one_line(tiny_benchmark, tmp_path, capsys) -> None:
    code = train_job.main(cli_args(tiny_benchmark, tmp_path, "--set", "model.colour=red"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown config key 'model.colour'" in err[0]
    code = train_job.main(cli_args(tiny_benchmark, tmp_path, "--set", "model.feature_dim=32"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "features are 16-d but the model expects 32-d" in err[-1]


# --- the feature dimension comes from the store ------------------------------------------------------------------

def test_a_preset_trains_on_a_store_of_another_dimension_without_set(tiny_benchmark, tmp_path, capsys) -> None:
    """configs/synthetic.yaml says 64-d; the store holds 16-d features: training takes 16 and records it."""
    sizes = [a for s in SMALL[1:] for a in ("--set", s)]  # small layers, but no model.feature_dim
    args = ["--config", "configs/synthetic.yaml", "--features", tiny_benchmark.features, "--annotations",
            tiny_benchmark.annotations, "--out", str(tmp_path / "run"), "--quiet", "--stages", "1",
            "--set", "train.stage1.epochs=1", "--set", "dataset=charades_sta", "--dataset", "jsonl", *sizes]
    assert train_job.main(args) == 0
    captured = capsys.readouterr()
    assert "model.feature_dim: 16 (the feature store's dimension; the config said 64)" in captured.err
    best = json.loads(captured.out.strip().splitlines()[-1])["best_checkpoint"]
    assert read_checkpoint(best)["config"]["model"]["feature_dim"] == 16
    assert read_checkpoint(best)["config"]["dataset"] == "jsonl"  # --dataset, not the config's, is recorded
    model, config, _ = load_checkpoint(best)
    assert config.model.feature_dim == 16 and model.config.model.feature_dim == 16


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_preset_takes_the_store_dimension_and_refuses_only_an_explicit_other_one(preset: str) -> None:
    config = load_config(CONFIGS / preset)
    said = config.model.feature_dim
    notice = adopt_store_feature_dim(config, 24, [], "store/")
    assert config.model.feature_dim == 24 and notice == f"model.feature_dim: 24 (the feature store's dimension; " \
                                                         f"the config said {said})"
    assert adopt_store_feature_dim(config, 24, ["model.feature_dim=24"]) is None  # explicit and agreeing: fine
    explicit = ["model.feature_dim=500"]
    with pytest.raises(InputError, match=r"^store/: --set model.feature_dim=500 disagrees with the feature store: "
                                         r"features are 24-d but the model expects 500-d"):
        adopt_store_feature_dim(load_config(CONFIGS / preset, explicit), 24, explicit, "store/")
