"""MiniLM (all-MiniLM-L6-v2) on onnxruntime: the same vectors as ``drn.text.minilm.MiniLM``, without torch.

The ONNX graph is written with the ``onnx`` helper API straight from the shipped ``model.safetensors``
(``minilm_model_dir``; nothing is downloaded, torch is never imported): the BERT encoder in the layout that
PyTorch exports (so onnxruntime's graph fusions apply), then mean pooling over the tokens and L2
normalisation, inside the graph. Importing ``onnx`` takes seconds, so the graph is built once and kept in a
user cache folder (``$DRN_CACHE_DIR``, else ``$XDG_CACHE_HOME/drn-moments``, else ``~/.cache/drn-moments``);
later processes import only ``onnxruntime``. The cached file is named after the weights file (path, size,
mtime) and ``GRAPH_VERSION``, so a reinstalled model or a changed builder writes a new one. Where the cache
cannot be written the graph is built in memory.

Tokenisation is MiniLM's: the ``tokenizer.json`` WordPiece, [CLS] ... [SEP], cut at 256 tokens; texts are
batched by similar length, as ``MiniLM.encode`` does.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from drn.text.minilm import WordPieceSentences

if TYPE_CHECKING:
    import onnx

GRAPH_VERSION = 1  # bump when build_onnx_graph changes: cached files of other versions are not used
OPSET = 17  # LayerNormalization
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "sentence_embedding"


def build_onnx_graph(model_dir: str | Path) -> onnx.ModelProto:
    """The MiniLM sentence encoder as an ONNX model: int64 ``input_ids``, ``attention_mask`` [batch, tokens] ->
    float32 ``sentence_embedding`` [batch, 384], mean-pooled and L2-normalised."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from safetensors import safe_open

    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    heads, dim = int(config["num_attention_heads"]), int(config["hidden_size"])
    eps = float(config["layer_norm_eps"])
    with safe_open(str(model_dir / "model.safetensors"), "np") as fh:
        w = {name: fh.get_tensor(name).astype(np.float32, copy=False) for name in fh.keys()}
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    count = [0]

    def const(name: str, value: Any, dtype: type = np.float32) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(np.asarray(value, dtype=dtype)), name))
        return name

    def op(kind: str, *inputs: str, **attributes: Any) -> str:
        count[0] += 1
        out = f"{kind}_{count[0]}"
        nodes.append(helper.make_node(kind, list(inputs), [out], name=out, **attributes))
        return out

    def linear(x: str, prefix: str) -> str:  # x @ W.T + b, as torch.nn.Linear exports
        return op("Add", op("MatMul", x, const(prefix + ".weight_t", w[prefix + ".weight"].T)),
                  const(prefix + ".bias", w[prefix + ".bias"]))

    def layer_norm(x: str, prefix: str) -> str:
        return op("LayerNormalization", x, const(prefix + ".weight", w[prefix + ".weight"]),
                  const(prefix + ".bias", w[prefix + ".bias"]), axis=-1, epsilon=eps)

    split_heads = const("split_heads", [0, 0, heads, dim // heads], np.int64)
    merge_heads = const("merge_heads", [0, 0, dim], np.int64)
    one, half, sqrt2 = const("one", 1.0), const("half", 0.5), const("sqrt2", math.sqrt(2.0))

    length = op("Shape", "input_ids", start=1, end=2)
    positions = op("Slice", const("embeddings.position_embeddings.weight", w["embeddings.position_embeddings.weight"]),
                   const("zero_i", [0], np.int64), length, const("axis_0", [0], np.int64))
    x = op("Add", op("Gather", const("embeddings.word_embeddings.weight", w["embeddings.word_embeddings.weight"]),
                     "input_ids"), positions)
    x = op("Add", x, const("token_type_0", w["embeddings.token_type_embeddings.weight"][0]))
    x = layer_norm(x, "embeddings.LayerNorm")
    axis_1, axis_2 = const("axis_1", [1], np.int64), const("axis_2", [2], np.int64)
    mask = op("Cast", op("Unsqueeze", op("Unsqueeze", "attention_mask", axis_1), axis_2), to=TensorProto.FLOAT)
    bias = op("Mul", op("Sub", one, mask), const("masked", -10000.0))  # [batch, 1, 1, tokens], as BERT's exports
    scale = const("head_scale", math.sqrt(dim // heads))
    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}."
        q, k, v = (op("Reshape", linear(x, p + f"attention.self.{n}"), split_heads) for n in ("query", "key", "value"))
        scores = op("MatMul", op("Transpose", q, perm=[0, 2, 1, 3]), op("Transpose", k, perm=[0, 2, 3, 1]))
        probs = op("Softmax", op("Add", op("Div", scores, scale), bias), axis=-1)
        context = op("MatMul", probs, op("Transpose", v, perm=[0, 2, 1, 3]))
        context = op("Reshape", op("Transpose", context, perm=[0, 2, 1, 3]), merge_heads)
        x = layer_norm(op("Add", linear(context, p + "attention.output.dense"), x), p + "attention.output.LayerNorm")
        hidden = linear(x, p + "intermediate.dense")  # exact GELU: x * 0.5 * (1 + erf(x / sqrt 2))
        gelu = op("Mul", op("Mul", hidden, half), op("Add", one, op("Erf", op("Div", hidden, sqrt2))))
        x = layer_norm(op("Add", linear(gelu, p + "output.dense"), x), p + "output.LayerNorm")
    weights = op("Unsqueeze", op("Cast", "attention_mask", to=TensorProto.FLOAT), axis_2)
    summed = op("ReduceSum", op("Mul", x, weights), axis_1, keepdims=0)
    tokens = op("Max", op("ReduceSum", weights, axis_1, keepdims=0), const("min_tokens", 1e-9))
    pooled = op("Div", summed, tokens)
    norm = op("Max", op("ReduceL2", pooled, axes=[1], keepdims=1), const("min_norm", 1e-12))
    nodes.append(helper.make_node("Div", [pooled, norm], [OUTPUT], name=OUTPUT))
    graph = helper.make_graph(
        nodes, "all-MiniLM-L6-v2",
        [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "tokens"]) for name in INPUTS],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", dim])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="drn-moments")
    model.ir_version = 8  # readable by onnxruntime >= 1.10
    onnx.checker.check_model(model)
    return model


def cache_dir() -> Path:
    """The user cache folder of built graphs: $DRN_CACHE_DIR, else $XDG_CACHE_HOME/drn-moments, else ~/.cache/..."""
    if os.environ.get("DRN_CACHE_DIR"):
        return Path(os.environ["DRN_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "drn-moments"


def cached_graph_path(model_dir: str | Path, folder: str | Path | None = None) -> Path:
    """Where the graph of these weights is cached (named after the weights file and GRAPH_VERSION)."""
    weights = Path(model_dir) / "model.safetensors"
    stat = weights.stat()
    key = hashlib.sha256(f"{weights.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{GRAPH_VERSION}|{OPSET}".encode())
    return Path(folder or cache_dir()) / f"all-MiniLM-L6-v2-{key.hexdigest()[:16]}.onnx"


def onnx_graph(model_dir: str | Path, folder: str | Path | None = None) -> str | bytes:
    """The cached graph's path, building and caching it first if needed; the graph's bytes if it cannot be cached."""
    path = cached_graph_path(model_dir, folder)
    if path.is_file():
        return str(path)
    data = build_onnx_graph(model_dir).SerializeToString()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as fh:
            fh.write(data)
        os.replace(fh.name, path)  # atomic: a concurrent reader sees the whole file or none
    except OSError:
        return data
    return str(path)


class OnnxMiniLM(WordPieceSentences):
    """The sentence encoder on onnxruntime: ``encode(texts) -> [N, 384]`` float32 unit rows, as ``MiniLM``."""

    def __init__(self, model_dir: str | Path, *, threads: int = 1, folder: str | Path | None = None,
                 graph: str | Path | bytes | None = None) -> None:
        """``threads``: onnxruntime's intra-op threads; ``folder``: the graph cache (default ``cache_dir()``);
        ``graph``: another graph of the same inputs and output (a benchmark's variant) instead of the cached one."""
        import onnxruntime

        model_dir = Path(model_dir)
        self._load_tokenizer(model_dir)
        self.dim = int(json.loads((model_dir / "config.json").read_text())["hidden_size"])
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # shared CPUs: do not busy-wait
        if graph is None:
            graph = onnx_graph(model_dir, folder)
        self.session = onnxruntime.InferenceSession(graph if isinstance(graph, bytes) else str(graph), options,
                                                    providers=["CPUExecutionProvider"])

    def _forward(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {"input_ids": tokens, "attention_mask": mask.astype(np.int64)})[0]
