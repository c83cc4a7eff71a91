"""The retrieval stage (drn.retrieval, drn.retrieval_training, moments.train.retrieval): cells, the contrastive
loss and its negatives, checkpoints, and stage 4 in one process and on real Ray Train."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import ray.cloudpickle
import torch

from drn.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from drn.config import load_config
from drn.datasets.synthetic import make_synthetic_benchmark
from drn.errors import InputError
from drn.model import DRN, count_parameters
from drn.pairs import GroundingPair
from drn.retrieval import (
    RetrievalHead,
    cell_spans,
    contrastive_loss,
    positive_cells,
    require_trained_retrieval,
)
from drn.retrieval_training import RetrievalBatches, video_recall
from drn.text import Vocabulary
from drn.training_setup import prepare_training_data
from jobs import train as train_job
from moments.train import driver as ray_train

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml"

SMALL = [
    "dataset=jsonl", "model.feature_dim=16", "model.num_segments=8", "model.lstm_hidden=8", "model.attention_dim=8",
    "model.location_dim=4", "model.level_channels=[8,8,16]", "model.fpn_channels=8", "model.iou_channels=[8,4]",
    "train.batch_size=16", "decode.top_per_level=4",
]


def small_model(*extra: str) -> DRN:
    torch.manual_seed(0)
    return DRN(load_config(None, [*SMALL, *extra]), torch.randn(12, 6))


# --- cells ----------------------------------------------------------------------------------------------------

def test_cell_spans_cover_the_grid_width_by_width() -> None:
    assert cell_spans(8, [2, 4]).tolist() == [[0, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7], [6, 8],
                                              [0, 4], [2, 6], [4, 8]]
    assert cell_spans(8, [5]).tolist() == [[0, 5], [2, 7], [3, 8]]  # the last cell of a width ends at T
    assert cell_spans(8, [8]).tolist() == [[0, 8]]


def test_cells_are_the_max_of_their_segments_then_projected() -> None:
    model = small_model("model.retrieval_dim=6", "retrieval.cell_widths=[2,3,8]")
    head = model.retrieval
    grid = torch.randn(3, 8, 16)
    cells = head.encode_cells(grid)
    assert cells.shape == (3, head.num_cells, 6) == (3, len(cell_spans(8, [2, 3, 8])), 6)
    assert torch.allclose(cells.norm(dim=-1), torch.ones(3, head.num_cells), atol=1e-5)
    x = torch.relu(head.context(torch.relu(head.video_proj(head.video_norm(grid))).transpose(1, 2)))
    manual = torch.stack([x[:, :, a:b].amax(-1) for a, b in head.spans], dim=1)
    assert torch.allclose(cells, torch.nn.functional.normalize(head.cell_proj(manual), dim=-1), atol=1e-6)
    query = head.encode_query(torch.randn(4, 3, 16))
    assert query.shape == (4, 6) and torch.allclose(query.norm(dim=-1), torch.ones(4), atol=1e-5)
    with pytest.raises(InputError, match="expects"):
        head.encode_cells(torch.randn(1, 4, 16))


def test_positive_cells_reach_the_iou_or_are_the_best() -> None:
    spans = torch.tensor(cell_spans(8, [2, 4]), dtype=torch.float32)
    positives = positive_cells(torch.tensor([[2.0, 4.0], [0.2, 0.6]]), spans, 0.5)
    assert spans[positives[0]].tolist() == [[2, 4], [0, 4], [2, 6]]  # IoU 1, 1/2, 1/2; [1, 3] has 1/3
    assert spans[positives[1]].tolist() == [[0, 2]]  # nothing reaches 0.5: the best cell alone


def test_blocked_videos_and_own_cells_are_not_negatives() -> None:
    torch.manual_seed(0)
    query = torch.nn.functional.normalize(torch.randn(1, 4), dim=-1)
    cells = torch.nn.functional.normalize(torch.randn(3, 5, 4), dim=-1)  # video 0 is the row's own video
    positives = torch.zeros(1, 5, dtype=torch.bool)
    positives[0, 0] = True
    usable = torch.tensor([[False, True, False]])  # video 2 holds the text (blocked)
    loss = contrastive_loss(query, cells, positives, usable, 0.1)
    changed = cells.clone()
    changed[2, 3] = query[0]  # a perfect match in the blocked video
    changed[0, 1:] = torch.nn.functional.normalize(torch.randn(4, 4), dim=-1)  # the row's own other cells
    assert torch.allclose(contrastive_loss(query, changed, positives, usable, 0.1), loss)
    unblocked = contrastive_loss(query, changed, positives, torch.tensor([[False, True, True]]), 0.1)
    assert unblocked > loss + 1.0  # as a negative, the look-alike raises the loss
    only_positive = contrastive_loss(query, cells, positives, torch.tensor([[False, False, False]]), 0.1)
    assert float(only_positive) == pytest.approx(0.0, abs=1e-6)


def test_a_video_holding_the_text_or_a_paraphrase_is_never_a_negative() -> None:
    texts = ["a man opens the door", "A man opens the door.", "a man opens a door", "the chef cuts onions",
             "a dog runs in the park"]
    videos = [f"v{i}" for i in range(5)]
    pairs = [GroundingPair(i, v, t, 0, 1, 5) for i, (v, t) in enumerate(zip(videos, texts, strict=True))]
    dataset = SimpleNamespace(pairs=pairs,
                              grids={v: np.zeros((8, 16), np.float32) for v in videos})
    batch = {"query": texts, "video_id": videos, "video": torch.zeros(6, 8, 16)}  # a 6th row: a negative row's
    near = load_config(None, [*SMALL, "model.retrieval_dim=8", "retrieval.sampled_negatives=2"])  # cosine 0.9
    prepared = RetrievalBatches(dataset, near).prepare(batch)
    usable = prepared["negatives"][:, :5].tolist()
    assert usable[0] == [False, False, False, True, True]  # the same text, a paraphrase: never negatives
    assert usable[3] == [True, True, True, False, True]
    assert prepared["negatives"].shape == (5, 7) and prepared["extra_video"].shape == (2, 8, 16)
    assert prepared["video"].shape == (5, 8, 16)  # the rows' own videos only
    exact = load_config(None, [*SMALL, "model.retrieval_dim=8", "train.negatives.paraphrase_cosine=1.0"])
    blocked = torch.zeros(5, 5, dtype=torch.bool)
    blocked[0, 4] = True  # a batch's own blocked mask (drn.data with negatives) is honoured as well
    prepared = RetrievalBatches(dataset, exact).prepare({**batch, "blocked": blocked})
    assert prepared["negatives"][0, :5].tolist() == [False, False, True, True, False]


# --- the model and its checkpoints ------------------------------------------------------------------------------

def test_no_retrieval_dim_means_no_head_and_the_same_model(tmp_path) -> None:
    plain, with_head = small_model(), small_model("model.retrieval_dim=8")
    assert plain.retrieval is None and not any(k.startswith("retrieval") for k in plain.state_dict())
    assert {k: v for k, v in with_head.state_dict().items() if not k.startswith("retrieval.")}.keys() == \
        plain.state_dict().keys()
    assert all(torch.equal(plain.state_dict()[k], with_head.state_dict()[k]) for k in plain.state_dict())
    assert count_parameters(with_head) > count_parameters(plain)
    with pytest.raises(InputError, match="no retrieval stage"):
        require_trained_retrieval(plain)
    with pytest.raises(InputError, match="never trained"):
        require_trained_retrieval(with_head)
    with_head.retrieval.trained_epochs.fill_(3)
    vocab = Vocabulary(["<pad>", "<unk>", *[f"w{i}" for i in range(10)]])
    save_checkpoint(tmp_path / "m.pt", with_head, vocab, stage=4)
    loaded, config, _ = load_checkpoint(tmp_path / "m.pt")
    assert isinstance(loaded.retrieval, RetrievalHead) and config.model.retrieval_dim == 8
    assert require_trained_retrieval(loaded) is loaded.retrieval and int(loaded.retrieval.trained_epochs) == 3
    grid = torch.randn(2, 8, 16)
    assert torch.allclose(loaded.retrieval.encode_cells(grid), with_head.retrieval.encode_cells(grid))


@pytest.mark.parametrize("override, message", [
    ("model.retrieval_dim=-1", "retrieval_dim"), ("retrieval.cell_widths=[0]", "cell_widths"),
    ("retrieval.cell_widths=[9]", "cell_widths"), ("retrieval.temperature=0", "temperature"),
])
def test_bad_retrieval_settings_are_refused(override: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_config(None, [*SMALL, override])


# --- training ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_synthetic_benchmark(tmp_path_factory.mktemp("syn"), num_videos=40, feature_dim=16, seed=3)


@pytest.mark.slow
def test_stage_four_alone_adds_a_head_to_a_checkpoint_and_leaves_drn_alone(bench, tmp_path, capsys) -> None:
    config = [*SMALL, "train.stage1.epochs=1"]
    args = ["--features", bench.features, "--annotations", bench.annotations, "--dataset", "jsonl", "--quiet"]
    sets = [item for override in config for item in ("--set", override)]
    first = tmp_path / "drn"
    assert train_job.main(["--config", str(CONFIG), *args, *sets, "--out", str(first),
                           "--stages", "1"]) == 0
    capsys.readouterr()
    out = tmp_path / "retrieval"
    assert train_job.main(["--config", str(CONFIG), *args, *sets, "--out", str(out),
                           "--resume-from", str(first / "best.pt"), "--stages", "4", "--set", "model.retrieval_dim=8",
                           "--set", "retrieval.epochs=2", "--set", "retrieval.lr=3e-3"]) == 0
    shown = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert shown["stage"] == 4 and shown["retrieval"]["epoch"] in (1, 2)
    before, _, _ = load_checkpoint(first / "best.pt")
    after, config_after, _ = load_checkpoint(shown["best_checkpoint"])
    assert config_after.model.retrieval_dim == 8 and require_trained_retrieval(after)
    for name, value in before.state_dict().items():
        assert torch.equal(value, after.state_dict()[name]), name  # DRN frozen
    payload = read_checkpoint(shown["best_checkpoint"])
    assert payload["metrics"]["retrieval"]["val"].keys() == {"video R@1", "video R@5", "video R@10"}
    assert payload["metrics"]["val"] == read_checkpoint(first / "best.pt")["metrics"]["val"]
    with pytest.raises(InputError, match="stage 4"):
        train_job.parse_stages("4", None, retrieval=False)


@pytest.mark.slow
def test_stage_four_on_ray_train_after_drn(bench, tmp_path, ray_session) -> None:
    config = load_config(CONFIG, [*SMALL, "train.stage1.epochs=1", "model.retrieval_dim=8",
                                                    "retrieval.epochs=2", "retrieval.lr=3e-3",
                                                    "retrieval.sampled_negatives=4"])
    summary = ray_train.fit_distributed(config, bench.features, bench.annotations, "jsonl", num_workers=2,
                                        storage=tmp_path / "runs", name="r", stages=(1, 4), keep_checkpoints=1)
    assert [record["stage"] for record in summary["stages"]] == [1, 4] and summary["stage"] == 4
    stage1, stage4 = summary["stages"]
    assert stage4["world_size"] == 2 and len(stage4["epochs_run"]) == 2
    assert "video R@10" in stage4["val"] and stage4["val"]["R@1,IoU=0.5"] == pytest.approx(stage1["val"]["R@1,IoU=0.5"])
    best = summary["best_checkpoint"].removeprefix("file://")
    model, _, _ = load_checkpoint(best)
    source, _, _ = load_checkpoint(stage1["model"].removeprefix("file://"))
    assert require_trained_retrieval(model)
    for name, value in source.state_dict().items():
        if not name.startswith("retrieval."):
            assert torch.equal(value, model.state_dict()[name]), name
    assert "retrieval" in read_checkpoint(best)["metrics"]
    again = ray_train.fit_distributed(config, bench.features, bench.annotations, "jsonl", num_workers=2,
                                      storage=tmp_path / "runs", name="r", stages=(1, 4), keep_checkpoints=1)
    assert [record["skipped"] for record in again["stages"]] == [True, True]  # a rerun resumes: all done


def test_video_recall_counts_a_holder_among_the_k_best(bench) -> None:
    config = load_config(CONFIG, [*SMALL, "model.retrieval_dim=8"])
    data = prepare_training_data(config, bench.features, bench.annotations, "jsonl", with_test=False)
    model = data.new_model().eval()
    recall = video_recall(model, data.val)
    videos = len({p.video_id for p in data.val.pairs})
    assert set(recall) == {"video R@1", "video R@5", "video R@10"}
    assert 0 <= recall["video R@1"] <= recall["video R@5"] <= recall["video R@10"] <= 100
    assert videos <= 10 and recall["video R@10"] == 100.0  # every video is among the 10 best of <= 10 videos
    assert np.isfinite(list(recall.values())).all()


def test_stage_four_is_skipped_where_no_video_can_be_a_negative() -> None:
    from drn.retrieval_training import retrieval_skip_reason

    both = [GroundingPair(0, "v1", "the red event", 0, 1, 5), GroundingPair(1, "v2", "The red event.", 0, 1, 5),
            GroundingPair(2, "v2", "the blue event", 0, 1, 5)]
    assert "every one of the 2 training videos holds the query 'the red event'" in retrieval_skip_reason(both)
    assert retrieval_skip_reason([both[1], GroundingPair(3, "v3", "the blue event", 0, 1, 5)]) is None
