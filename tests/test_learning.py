"""DRN learns the synthetic benchmark on CPU in well under two minutes, far above the fixed-window floor."""

from __future__ import annotations

import torch

from drn.baselines import fit_fixed_window, fixed_window_predictions
from drn.config import load_config
from drn.datasets.synthetic import make_synthetic_benchmark
from drn.evaluation import evaluate
from drn.training import fit, stages_from_config
from drn.training_setup import prepare_training_data


def test_drn_beats_the_fixed_window_on_the_synthetic_benchmark(tmp_path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is as fast and immune to oversubscription
    try:
        run_and_compare(tmp_path)
    finally:
        torch.set_num_threads(threads)


def run_and_compare(tmp_path) -> None:
    torch.manual_seed(0)
    bench = make_synthetic_benchmark(tmp_path / "syn", num_videos=240, feature_dim=32, seed=11)
    config = load_config("configs/synthetic.yaml", ["model.feature_dim=32", "train.stage1.epochs=7"])
    data = prepare_training_data(config, bench.features, bench.annotations)
    model = data.new_model()
    result = fit(model, data.vocab, config, data.loader("train"), data.loader("val"), data.val.pairs,
                 tmp_path / "run", stages_from_config(config, [1]), data.loader("test"), data.test.pairs)
    window = fit_fixed_window(data.train.pairs)
    floor = evaluate(data.test.pairs, {p.qid: p for p in fixed_window_predictions(data.test.pairs, window)})
    floor_r1 = floor.recall[(1, 0.5)]
    drn_r1 = result.test["R@1,IoU=0.5"]
    print(f"\nsynthetic test R@1,IoU=0.5: DRN {drn_r1:.1f} vs fixed window [{window.start_frac:.2f}, "
          f"{window.end_frac:.2f}] {floor_r1:.1f} ({len(data.test)} test pairs)")
    assert floor_r1 < 30
    assert drn_r1 > floor_r1 + 35
