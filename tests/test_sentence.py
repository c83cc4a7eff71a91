"""drn.text.sentence: the numpy MiniLM gives sentence-transformers' vectors, fast, and refuses texts it cannot spell."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from drn.errors import InputError
from drn.text.minilm import minilm_model_dir
from drn.text.sentence import EMBEDDING_DIM, check_spellable, embed_text, embed_texts, unknown_words

REPO = Path(__file__).resolve().parents[1]
TEXTS = [
    "a person opens the refrigerator",
    "The chef cuts the onion.",
    "Ñandú corre rápido por el campo",
    "x",
    "someone switches the lamp on, then off again, while laughing at the television " * 12,  # > 256 pieces: cut
    "the red event before the blue event",
    "日本語のテキスト",
    "🦄 a unicorn appears",
    "   padded   with   spaces   ",
]


@pytest.mark.slow
def test_same_vectors_as_sentence_transformers() -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(minilm_model_dir()), device="cpu", local_files_only=True)
    expected = reference.encode([t.strip() for t in TEXTS], convert_to_numpy=True, normalize_embeddings=True)
    ours = embed_texts(TEXTS)
    assert ours.shape == (len(TEXTS), EMBEDDING_DIM) and ours.dtype == np.float32
    cosines = (ours * expected).sum(axis=1)
    assert cosines.min() >= 0.9999, cosines
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    one_by_one = np.stack([embed_text(t) for t in TEXTS])  # batching (padding) changes nothing
    assert np.abs(one_by_one - ours).max() < 1e-5


def test_meaning_is_kept() -> None:
    fridge, door, onion = embed_texts(["someone opens the fridge", "a person opens the refrigerator",
                                       "the chef cuts an onion"])
    assert float(fridge @ door) > float(fridge @ onion) + 0.2


def test_unspellable_and_empty_texts_are_refused() -> None:
    assert unknown_words("🦄🦄 a unicorn ǂ") == ["🦄🦄", "ǂ"]
    check_spellable("🦄 a unicorn")  # some words are enough
    for text, reason in (("🦄🦄 ǂ", "no word that MiniLM can spell"), ("   ", "empty")):
        with pytest.raises(InputError, match=reason):
            check_spellable(text)
    with pytest.raises(InputError, match="query text 1 is empty"):
        embed_texts(["fine", " "])


def test_search_path_imports_neither_torch_nor_sentence_transformers() -> None:
    code = ("import sys; from drn.text.sentence import embed_text; embed_text('a door'); "
            "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_cached_embedding_equals_a_fresh_one_and_cannot_be_spoiled() -> None:
    from drn.text.sentence import clear_embedding_cache, embed_text, embed_texts

    clear_embedding_cache()
    text = "a person puts a cup on the shelf"
    first = embed_text(text)
    first[:] = 0.0  # the caller owns its copy: the cache keeps the true vector
    again = embed_text(f"  {text} ")
    fresh = embed_texts([text])[0]
    assert np.array_equal(again, fresh) and np.linalg.norm(again) == pytest.approx(1.0, abs=1e-5)
