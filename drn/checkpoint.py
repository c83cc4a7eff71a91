"""One file per checkpoint: config, vocabulary, word vectors (a buffer of the weights), weights, stage, metrics.

The file is a ``torch.save`` dict (loadable with ``weights_only=True``)::

    format: "drn-checkpoint", version: 1
    config: DRNConfig.to_dict()            vocab: list of tokens (PAD, UNK, words...)
    state_dict: model weights, including query_encoder.word_vectors [len(vocab), word_dim]
    stage: 1 | 2 | 3                       metrics: {"val": {...}, "test": {...}?, ...}
    word_source: {"name": "minilm" | "glove", "glove_path": ...}  (how the vectors were made)
"""

from __future__ import annotations

import io
import os
from typing import Any

import torch

from drn.config import DRNConfig, model_differences
from drn.errors import InputError
from drn.model import DRN
from drn.store import open_filesystem
from drn.text import Vocabulary

FORMAT, VERSION = "drn-checkpoint", 1


def save_checkpoint(
    path: str | os.PathLike, model: DRN, vocab: Vocabulary, *, stage: int, metrics: dict[str, Any] | None = None
) -> None:
    """Write the checkpoint atomically (a killed write never leaves a half file under ``path``)."""
    config = model.config
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": config.to_dict(),
        "vocab": list(vocab.tokens),
        "word_source": {"name": config.text.word_source, "glove_path": config.text.glove_path},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "stage": int(stage),
        "metrics": metrics or {},
    }
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw checkpoint dict, after checking that it is one."""
    path = os.fspath(path)
    try:
        if "://" in path:  # an object-store URI (s3://, gs://, ...): read it through pyarrow's filesystems
            fs, inner = open_filesystem(path)
            with fs.open_input_stream(inner) as stream:
                payload = torch.load(io.BytesIO(stream.read()), map_location="cpu", weights_only=True)
        else:
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise InputError("checkpoint not found", path=path) from err
    except Exception as err:  # a truncated or foreign file
        raise InputError(f"not a readable checkpoint ({type(err).__name__})", path=path) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError("not a DRN checkpoint (no 'format: drn-checkpoint')", path=path)
    if payload.get("version") != VERSION:
        raise InputError(f"checkpoint version {payload.get('version')} is not supported (expected {VERSION})",
                         path=path)
    return payload


def load_checkpoint(
    path: str | os.PathLike, expected: DRNConfig | None = None
) -> tuple[DRN, DRNConfig, Vocabulary]:
    """A ready model (eval mode) with its config and vocabulary.

    With ``expected``, a checkpoint whose model differs from that config (sizes, T, D, switches) is an
    InputError naming each difference.
    """
    payload = read_checkpoint(path)
    config = DRNConfig.from_dict(payload["config"], source=os.fspath(path))
    if expected is not None:
        diffs = model_differences(config, expected)
        diffs = [d for d in diffs if not d.startswith("model.word_dim")]
        if diffs:
            raise InputError("checkpoint was trained with another model config: " + "; ".join(diffs), path=path)
    vocab = Vocabulary(payload["vocab"])
    state = payload["state_dict"]
    vectors = state.get("query_encoder.word_vectors")
    if vectors is None or vectors.shape[0] != len(vocab):
        raise InputError("checkpoint's word vectors do not match its vocabulary", path=path)
    model = DRN(config, vectors)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1:2] or [str(err)]
        raise InputError(f"checkpoint weights do not fit its config: {first[0].strip()}", path=path) from err
    model.eval()
    return model, config, vocab


def check_feature_dim(config: DRNConfig, feature_dim: int, source: object) -> None:
    """InputError when features of ``feature_dim`` cannot feed a model of ``config``."""
    if int(feature_dim) != config.model.feature_dim:
        raise InputError(
            f"features are {feature_dim}-d but the model expects {config.model.feature_dim}-d "
            "(model.feature_dim); use features from the extractor the model was trained on",
            path=source,
        )
