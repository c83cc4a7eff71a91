"""DRN: the Dense Regression Network for video grounding, as a library (no Ray, no LanceDB here)."""

__version__ = "0.1.0"
