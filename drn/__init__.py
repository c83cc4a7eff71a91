"""DRN: the Dense Regression Network for video grounding (Zeng et al., CVPR 2020), as a library; no Ray, no LanceDB.

Rooms: ``model``, ``targets``, ``losses``, ``decoding`` (the paper's pieces); ``training`` and ``retrieval_training``
(the stages); ``inference`` (``Grounder``); ``checkpoint``; ``evaluation`` and ``corpus`` (the metrics);
``datasets`` (annotation loaders, the synthetic benchmarks); ``store`` (the Parquet feature store, local or on
object storage); ``text`` (query words and MiniLM sentence vectors).

The names below load on first use, so ``import drn`` costs nothing::

    from drn import FeatureStore, Grounder
    grounder = Grounder.from_checkpoint("best.pt")
"""

from drn.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "DRN": "drn.model",
    "DRNConfig": "drn.config",
    "load_config": "drn.config",
    "Grounder": "drn.inference",
    "EncodedQueries": "drn.inference",
    "GroundingResult": "drn.inference",
    "load_checkpoint": "drn.checkpoint",
    "save_checkpoint": "drn.checkpoint",
    "read_checkpoint": "drn.checkpoint",
    "FeatureStore": "drn.store",
    "FeatureStoreWriter": "drn.store",
    "VideoFeatures": "drn.store",
    "VideoLookup": "drn.store",
    "EvalConfig": "drn.evaluation",
    "EvalResult": "drn.evaluation",
    "evaluate": "drn.evaluation",
    "format_result": "drn.evaluation",
    "CorpusConfig": "drn.corpus",
    "evaluate_corpus": "drn.corpus",
    "ground_corpus": "drn.corpus",
    "GroundingPair": "drn.pairs",
    "load_split": "drn.datasets",
    "Prediction": "drn.predictions",
    "read_predictions": "drn.predictions",
    "write_predictions": "drn.predictions",
    "InputError": "drn.errors",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
