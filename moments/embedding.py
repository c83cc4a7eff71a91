"""Sentence embeddings for the index: re-exported from :mod:`drn.sentence`, where the model library uses them too."""

from drn.sentence import EMBEDDING_DIM, MODEL_NAME, embed_text, embed_texts, load_sentence_model, model_path

__all__ = ["EMBEDDING_DIM", "MODEL_NAME", "embed_text", "embed_texts", "load_sentence_model", "model_path"]
