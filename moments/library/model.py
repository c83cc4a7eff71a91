"""A checkpoint loaded for grounding, and the query side every library job and search shares: loading and naming
a checkpoint, shipping it to Ray actors, checking and encoding queries once per run."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drn.checkpoint import model_from_payload, negatives_per_positive, read_checkpoint
from drn.config import DRNConfig
from drn.errors import InputError
from drn.inference import Grounder
from drn.store.object_store import filesystem_for
from drn.text.sentence import embed_texts
from moments.library.queries import Query, QueryCollection, normalise_text
from moments.library.scoring import QuerySide


@dataclass
class LoadedModel:
    """A checkpoint ready to ground with: the grounder, its id (name + content hash) and its recorded metrics."""

    grounder: Grounder
    checkpoint_id: str
    sha256: str
    metrics: dict[str, Any]
    negatives_per_positive: int = 0  # trained with negative pairs (> 0): scores compare across videos

    @property
    def config(self) -> DRNConfig:
        return self.grounder.config


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a local file or an object-store object, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    fs, inner = filesystem_for(path)  # a local file or an object-store URI
    with fs.open_input_stream(inner) as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(checkpoint: str | os.PathLike, device: str = "cpu") -> LoadedModel:
    """Load a checkpoint (InputError for a missing or foreign file) and name it ``<file stem>-<sha256[:12]>``."""
    payload = read_checkpoint(checkpoint)  # checks the format first, with a clear message
    model, config, vocab = model_from_payload(payload, checkpoint)
    sha = file_sha256(checkpoint)
    return LoadedModel(Grounder(model, config, vocab, device), f"{Path(checkpoint).stem}-{sha[:12]}", sha,
                       dict(payload.get("metrics") or {}), negatives_per_positive(payload))


def model_payload(grounder: Grounder) -> dict[str, Any]:
    """What an actor needs to rebuild the model: config, vocabulary record, weights (CPU tensors), training facts
    (the shape of a checkpoint, so ``drn.checkpoint.model_from_payload`` reads both)."""
    state = {k: v.detach().cpu() for k, v in grounder.model.state_dict().items()}
    config = grounder.config
    return {"config": config.to_dict(), "vocabulary": grounder.vocab.record(), "state_dict": state,
            "training": {"negatives_per_positive": config.train.negatives.per_positive}}


def grounder_from_payload(payload: dict[str, Any], device: str) -> Grounder:
    model, config, vocab = model_from_payload(payload, "grounding job")
    return Grounder(model, config, vocab, device)


def check_queries_encodable(grounder: Grounder, collection: QueryCollection) -> QueryCollection:
    """Drop (and report) queries the model cannot encode: no known words at all, or too many words."""
    kept, dropped = [], list(collection.dropped)
    for query in collection.queries:
        try:
            grounder.tokenize([query.text])
        except InputError as error:
            dropped.append((query.line, f"{str(error).replace('query 0', f'query {query.query_id}')}, skipped"))
            continue
        kept.append(query)
    if not kept:
        if len(collection.queries) == 1 and dropped:
            raise InputError(dropped[-1][1].removesuffix(", skipped"), path=collection.source)
        raise InputError("no query of the collection can be encoded by this checkpoint", path=collection.source)
    return QueryCollection(collection.source, kept, dropped)


def encode_query_side(grounder: Grounder, queries: Sequence[Query]) -> QuerySide:
    """The model's query side and the MiniLM embedding of each query, once for the whole run."""
    texts = [q.text for q in queries]
    return QuerySide([q.query_id for q in queries], texts, embed_texts(texts), grounder.encode_queries(texts))


def live_query_id(text: str) -> str:
    """A stable id for a live query: ``live-`` and a hash of its normalised words."""
    return "live-" + hashlib.sha256(normalise_text(text).encode()).hexdigest()[:12]
