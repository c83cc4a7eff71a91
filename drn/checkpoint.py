"""One file per checkpoint: config, vocabulary, weights, stage, metrics, and how it was trained.

The file is a ``torch.save`` dict (loadable with ``weights_only=True``)::

    format: "drn-checkpoint", version: 2
    config: DRNConfig.to_dict()
    vocabulary: {"kind": "open-minilm", "table_sha256": ...}    the MiniLM table is read from the package
              | {"kind": "closed", "tokens": [PAD, UNK, words...]}   its matrix is query_encoder.word_vectors
    state_dict: model weights (a closed vocabulary's word vectors included)
    stage: 1 | 2 | 3                       metrics: {"val": {...}, "test": {...}?, ...}
    word_source: {"name": "minilm" | "glove", "glove_path": ...}  (how the vectors were made)
    training: {"negatives_per_positive": K}    K > 0: trained with negative pairs (scores comparable across videos)

Version 1 files (a closed vocabulary under ``vocab``, no ``training``: trained without negatives) still load.
"""

from __future__ import annotations

import io
import os
from typing import Any

import torch

from drn.config import DRNConfig, model_differences
from drn.errors import InputError
from drn.model import DRN, new_model
from drn.store.object_store import filesystem_for, is_uri
from drn.text.vocabulary import OpenVocabulary, Vocabulary, vocabulary_from_record

FORMAT, VERSION = "drn-checkpoint", 2
WORD_VECTORS = "query_encoder.word_vectors"
READABLE_VERSIONS = (1, 2)


def save_checkpoint(
    path: str | os.PathLike, model: DRN, vocab: Vocabulary | OpenVocabulary, *, stage: int,
    metrics: dict[str, Any] | None = None,
) -> None:
    """Write the checkpoint atomically (a killed write never leaves a half file under ``path``)."""
    config = model.config
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": config.to_dict(),
        "vocabulary": vocab.record(),
        "word_source": {"name": config.text.word_source, "glove_path": config.text.glove_path},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()
                       if not (vocab.open and k == WORD_VECTORS)},  # the open table comes from the package
        "stage": int(stage),
        "metrics": metrics or {},
        "training": {"negatives_per_positive": int(config.train.negatives.per_positive)},
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
        if is_uri(path):  # an object-store URI (s3://, gs://, ...): read it through pyarrow's filesystems
            fs, inner = filesystem_for(path)
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
    if payload.get("version") not in READABLE_VERSIONS:
        raise InputError(f"checkpoint version {payload.get('version')} is not supported (expected one of "
                         f"{READABLE_VERSIONS})", path=path)
    return payload


def negatives_per_positive(payload: dict[str, Any]) -> int:
    """K of the negative pairs a checkpoint was trained with (0: none; version 1 files never had them)."""
    return int((payload.get("training") or {}).get("negatives_per_positive", 0))


def model_from_payload(payload: dict[str, Any], source: object = "checkpoint",
                       expected: DRNConfig | None = None) -> tuple[DRN, DRNConfig, Vocabulary | OpenVocabulary]:
    """Rebuild the model (eval mode), its config and its vocabulary from a checkpoint dict (or any dict with its
    ``config``, ``vocabulary`` (or ``vocab``), ``state_dict`` and ``training`` entries)."""
    config = DRNConfig.from_dict(payload["config"], source=str(source))
    config.train.negatives.per_positive = negatives_per_positive(payload)
    if expected is not None:
        diffs = model_differences(config, expected)
        diffs = [d for d in diffs if not d.startswith("model.word_dim")]
        if diffs:
            raise InputError("checkpoint was trained with another model config: " + "; ".join(diffs), path=source)
    state = payload["state_dict"]
    stored = state.get(WORD_VECTORS)
    vocab = vocabulary_from_record(payload.get("vocabulary", payload.get("vocab")),
                                   None if stored is None else stored.numpy(), source)
    config.text.open_vocabulary = vocab.open
    if vocab.matrix is None or (not vocab.open and vocab.matrix.shape[0] != len(vocab)):
        raise InputError("checkpoint's word vectors do not match its vocabulary", path=source)
    model = new_model(config, vocab)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1:2] or [str(err)]
        raise InputError(f"checkpoint weights do not fit its config: {first[0].strip()}", path=source) from err
    model.eval()
    return model, config, vocab


def load_checkpoint(
    path: str | os.PathLike, expected: DRNConfig | None = None
) -> tuple[DRN, DRNConfig, Vocabulary | OpenVocabulary]:
    """A ready model (eval mode) with its config and vocabulary.

    With ``expected``, a checkpoint whose model differs from that config (sizes, T, D, switches) is an
    InputError naming each difference.
    """
    return model_from_payload(read_checkpoint(path), path, expected)


def check_feature_dim(config: DRNConfig, feature_dim: int, source: object) -> None:
    """InputError when features of ``feature_dim`` cannot feed a model of ``config``."""
    if int(feature_dim) != config.model.feature_dim:
        raise InputError(
            f"features are {feature_dim}-d but the model expects {config.model.feature_dim}-d "
            "(model.feature_dim); use features from the extractor the model was trained on",
            path=source,
        )
