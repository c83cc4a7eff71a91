"""DRN: the Dense Regression Network for video grounding (Zeng et al., CVPR 2020), as a library; no Ray, no LanceDB.

Rooms: ``model``, ``targets``, ``losses``, ``decoding`` (the paper's pieces); ``training`` and ``retrieval_training``
(the stages); ``inference`` (``Grounder``); ``checkpoint``; ``evaluation`` and ``corpus`` (the metrics);
``datasets`` (annotation loaders, the synthetic benchmarks); ``store`` (the Parquet feature store, local or on
object storage); ``text`` (query words and MiniLM sentence vectors).

The names below load on first use, so ``import drn`` costs nothing::

    from drn import FeatureStore, Grounder
    grounder = Grounder.from_checkpoint("best.pt")
"""

from drn.lazy import exported_names, lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "drn.model": ("DRN",),
    "drn.config": ("DRNConfig", "load_config"),
    "drn.inference": ("Grounder", "EncodedQueries", "GroundingResult"),
    "drn.checkpoint": ("load_checkpoint", "save_checkpoint", "read_checkpoint"),
    "drn.store": ("FeatureStore", "FeatureStoreWriter", "VideoFeatures", "VideoLookup"),
    "drn.evaluation": ("EvalConfig", "EvalResult", "evaluate", "format_result"),
    "drn.corpus": ("CorpusConfig", "evaluate_corpus", "ground_corpus"),
    "drn.pairs": ("GroundingPair",),
    "drn.datasets": ("load_split",),
    "drn.predictions": ("Prediction", "read_predictions", "write_predictions"),
    "drn.errors": ("InputError",),
}
__all__ = exported_names(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
