"""DRN training speed per stage on the local machine: pairs per second at D = 4096, T = 32, batch 32.

    python benchmarks/train_speed.py [--steps 4] [--feature-dim 4096] [--segments 32] [--batch 32] \
        [--device cpu] [--threads N]

Random features and queries of 10 words (speed does not depend on the values); the authors' model sizes,
MiniLM-sized word vectors (384-d). Prints a table; copy it into benchmarks/RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from drn.config import load_config
from drn.data import collate
from drn.inference import EncodedQueries, Grounder
from drn.model import DRN, count_parameters
from drn.text import Vocabulary
from drn.training import configure_stage, make_optimizer, stages_from_config, train_step


def make_batch(batch: int, t: int, d: int, vocab: int, gen: torch.Generator) -> dict:
    items = []
    for i in range(batch):
        start = float(torch.rand(1, generator=gen)) * t * 0.6
        words = [(int(w),) for w in torch.randint(2, vocab, (10,), generator=gen)]
        items.append({"video": torch.randn(t, d, generator=gen), "words": words,
                      "gt": torch.tensor([start, start + t * 0.3]), "duration": 30.0, "qid": i, "video_id": str(i),
                      "query": f"query {i}"})
    return collate(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per stage (after one warm-up step)")
    parser.add_argument("--feature-dim", type=int, default=4096)
    parser.add_argument("--segments", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(None, [f"model.feature_dim={args.feature_dim}", f"model.num_segments={args.segments}",
                                f"train.batch_size={args.batch}"])
    gen = torch.Generator().manual_seed(0)
    vocab_size = 1000
    model = DRN(config, torch.randn(vocab_size, 384, generator=gen)).to(args.device)
    batches = [make_batch(args.batch, args.segments, args.feature_dim, vocab_size, gen) for _ in range(2)]
    device = torch.device(args.device)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, device {device}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"DRN D={args.feature_dim} T={args.segments} batch {args.batch}: {count_parameters(model):,} parameters\n")
    print(f"| {'stage':<28} | {'s/step':>7} | {'pairs/s':>8} |")
    print(f"|{'-' * 30}|{'-' * 9}|{'-' * 10}|")
    for stage in stages_from_config(config):
        optimizer = make_optimizer(configure_stage(model, stage), stage)
        train_step(model, batches[0], optimizer, stage, config)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for i in range(args.steps):
            train_step(model, batches[i % 2], optimizer, stage, config)
        if device.type == "cuda":
            torch.cuda.synchronize()
        per_step = (time.perf_counter() - started) / args.steps
        label = f"{stage.number} ({stage.trains})"
        print(f"| {label:<28} | {per_step:7.3f} | {args.batch / per_step:8.1f} |")
    grounder = Grounder(model, config, Vocabulary(["<pad>", "<unk>", *map(str, range(vocab_size - 2))]), device)
    queries = EncodedQueries(["q"] * 32, model.encode_query(batches[0]["words"].to(device),
                                                           batches[0]["word_mask"].to(device)).detach())
    grids = batches[0]["video"][:32]
    grounder.ground(grids[:4], queries, pair_batch_size=256)
    started = time.perf_counter()
    results = grounder.ground(grids, queries, pair_batch_size=256)
    seconds = time.perf_counter() - started
    print(f"| {'inference (Grounder, 32x32)':<28} | {seconds:7.3f} | {len(results) / seconds:8.1f} |")


if __name__ == "__main__":
    main()
