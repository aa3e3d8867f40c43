"""Texts to feature vectors: frozen backbones, pooling and the embedding cache (``backbones``),
and the feature views of a response that reward heads read (``views``: :class:`FeatureConfig`)."""

from .views import VIEWS, FeatureConfig

__all__ = ["VIEWS", "FeatureConfig"]
