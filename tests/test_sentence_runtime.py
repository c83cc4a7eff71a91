"""drn.text.onnx_minilm: onnxruntime gives numpy MiniLM's vectors, builds its graph without torch, and caches it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from drn.text import onnx_minilm  # noqa: E402
from drn.text.minilm import MiniLM, minilm_model_dir  # noqa: E402
from drn.text.onnx_minilm import OnnxMiniLM, cached_graph_path  # noqa: E402

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
    "padded   with   spaces",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A graph cache folder, with the graph built once for the module."""
    folder = tmp_path_factory.mktemp("onnx-cache")
    OnnxMiniLM(minilm_model_dir(), folder=folder)
    return folder


def test_same_vectors_as_numpy_minilm(cache: Path) -> None:
    model_dir = minilm_model_dir()
    expected = MiniLM(model_dir).encode(TEXTS)
    for threads in (1, 2):
        encoder = OnnxMiniLM(model_dir, threads=threads, folder=cache)
        ours = encoder.encode(TEXTS, batch_size=4)
        assert ours.shape == expected.shape and ours.dtype == np.float32
        assert (ours * expected).sum(axis=1).min() >= 0.9999
        assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
        one_by_one = np.concatenate([encoder.encode([text]) for text in TEXTS])  # padding changes nothing
        assert np.abs(one_by_one - ours).max() < 1e-5
    assert encoder.unknown_words("🦄🦄 a unicorn ǂ") == ["🦄🦄", "ǂ"]


def test_a_cached_graph_loads_without_onnx_or_torch(cache: Path) -> None:
    assert cached_graph_path(minilm_model_dir(), cache).is_file()
    code = ("import sys; from drn.text.minilm import minilm_model_dir; from drn.text.onnx_minilm import OnnxMiniLM; "
            f"OnnxMiniLM(minilm_model_dir(), folder={str(cache)!r}).encode(['a door']); "
            "print(sorted(m for m in ('onnx', 'torch', 'sentence_transformers', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_an_unwritable_cache_builds_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    graph = onnx_minilm.onnx_graph(minilm_model_dir(), blocked / "cache")
    assert isinstance(graph, bytes) and not (blocked / "cache").exists()
    assert OnnxMiniLM(minilm_model_dir(), graph=graph).encode(["a door"]).shape == (1, 384)
    before = cached_graph_path(minilm_model_dir(), tmp_path)
    monkeypatch.setattr(onnx_minilm, "GRAPH_VERSION", onnx_minilm.GRAPH_VERSION + 1)  # a changed builder: a new file
    assert cached_graph_path(minilm_model_dir(), tmp_path) != before
