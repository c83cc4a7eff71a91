"""Tokenizer, vocabulary (PAD, UNK, limits), GloVe parsing and the offline MiniLM word vectors."""

from __future__ import annotations

import numpy as np
import pytest

from drn.config import TextConfig
from drn.errors import InputError
from drn.text import (
    PAD_ID,
    UNK_ID,
    GloveWordVectors,
    MiniLMWordVectors,
    Vocabulary,
    build_embedding_matrix,
    tokenize,
    vocabulary_and_vectors,
)


def test_tokenize_lowercases_and_drops_punctuation() -> None:
    assert tokenize("The person opens the fridge, then sits.") == [
        "the", "person", "opens", "the", "fridge", "then", "sits"]
    assert tokenize("person's  DOOR") == ["person's", "door"]


def test_vocabulary_orders_by_frequency_and_maps_unknown_words_to_unk() -> None:
    vocab = Vocabulary.build(["a person opens a door", "a person sits"], min_count=1)
    assert vocab.tokens[:3] == ["<pad>", "<unk>", "a"]
    ids = vocab.encode("a person eats pizza", max_words=10)
    assert ids[:2] == [vocab.index["a"], vocab.index["person"]]
    assert ids[2:] == [UNK_ID, UNK_ID]
    assert vocab.unknown_words("a person eats pizza") == ["eats", "pizza"]
    assert PAD_ID not in ids


def test_min_count_sends_rare_words_to_unk() -> None:
    vocab = Vocabulary.build(["door door window"], min_count=2)
    assert "window" not in vocab.index and vocab.encode("window", 5) == [UNK_ID]


def test_empty_query_is_a_clear_error() -> None:
    vocab = Vocabulary.build(["a door"])
    with pytest.raises(InputError, match="empty"):
        vocab.encode("  ,. ", max_words=5, where="qid 7")
    with pytest.raises(InputError, match="qid 7"):
        vocab.encode("", max_words=5, where="qid 7")


def test_query_longer_than_the_limit_errors_or_truncates() -> None:
    vocab = Vocabulary.build(["one two three four"])
    with pytest.raises(InputError, match="4 words, more than the encoder's limit of 3"):
        vocab.encode("one two three four", max_words=3)
    assert vocab.encode("one two three four", max_words=3, truncate=True) == [vocab.index[w] for w in
                                                                                ("one", "two", "three")]


def test_glove_file_parsing(tmp_path) -> None:
    path = tmp_path / "glove.txt"
    path.write_text("door 1.0 0.0 0.5\nopens 0.0 2.0 -1.0\nunk 0.1 0.1 0.1\nfridge 3 3 3\n")
    vectors = GloveWordVectors(path, words=["door", "opens", "zebra"])
    assert vectors.dim == 3
    np.testing.assert_allclose(vectors.lookup("opens"), [0.0, 2.0, -1.0])
    assert vectors.lookup("fridge") is None  # not asked for, not kept
    np.testing.assert_allclose(vectors.unk, [0.1, 0.1, 0.1])
    vocab = Vocabulary(["<pad>", "<unk>", "door", "zebra"])
    matrix, missing = build_embedding_matrix(vocab, vectors)
    assert missing == 1
    np.testing.assert_allclose(matrix[0], 0.0)
    np.testing.assert_allclose(matrix[2], [1.0, 0.0, 0.5])
    np.testing.assert_allclose(matrix[3], vectors.unk)


def test_glove_without_unk_uses_the_mean_and_bad_lines_name_the_line(tmp_path) -> None:
    good = tmp_path / "g.txt"
    good.write_text("a 1 3\nb 3 5\n")
    np.testing.assert_allclose(GloveWordVectors(good).unk, [2.0, 4.0])
    bad = tmp_path / "bad.txt"
    bad.write_text("a 1 3\nb 3 x\n")
    with pytest.raises(InputError, match=r"bad.txt, line 2: non-numeric"):
        GloveWordVectors(bad)
    ragged = tmp_path / "ragged.txt"
    ragged.write_text("a 1 3\nb 3 5 7\n")
    with pytest.raises(InputError, match=r"line 2: vector of 'b' has 3 values, expected 2"):
        GloveWordVectors(ragged)
    with pytest.raises(InputError, match="not found"):
        GloveWordVectors(tmp_path / "missing.txt")


def test_minilm_vectors_are_offline_and_split_rare_words_into_pieces() -> None:
    vectors = MiniLMWordVectors()
    assert vectors.dim == 384
    red = vectors.lookup("red")
    np.testing.assert_allclose(red, vectors.table[vectors.piece_index["red"]])
    pieces = vectors.pieces("fridges")
    assert pieces is not None and len(pieces) >= 1
    np.testing.assert_allclose(vectors.lookup("fridges"), vectors.table[pieces].mean(axis=0))


def test_vocabulary_and_vectors_from_config_with_glove(tmp_path) -> None:
    path = tmp_path / "glove.txt"
    path.write_text("person 1 0\nopens 0 1\n")
    vocab, matrix = vocabulary_and_vectors(["person opens door"], TextConfig(word_source="glove",
                                                                              glove_path=str(path)))
    assert matrix.shape == (len(vocab), 2)
    np.testing.assert_allclose(matrix[vocab.index["opens"]], [0, 1])
    np.testing.assert_allclose(matrix[vocab.index["door"]], [0.5, 0.5])  # unknown: mean vector
