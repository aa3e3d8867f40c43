"""Feature views of a response: what a reward head reads, from a frozen backbone through the
embedding cache.

A :class:`FeatureConfig` says which backbone, which views, how many tokens and which precision;
the scorer, the reward-model trainer and the benefit experiment all take one. Views (each trains
its own members in the scorer):

=================== ===========================================================================
``transcript``      the dialogue ending in the response (left-truncated, so the response stays)
``response``        the response alone
``response+prompt`` the response embedding and its elementwise product with the prompt's
=================== ===========================================================================

A views entry may name its own backbone, ``"smollm2:transcript"``, so one ensemble can hold
members over several backbones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.formats import HH_ASSISTANT
from .backbones import PRECISIONS, resolve_backbone
from .embedding import embed_texts
from .prefix import embed_pairs

VIEWS = ("transcript", "response", "response+prompt")


def split_view(entry: str, default_backbone: str) -> tuple[str, str]:
    """``(backbone, view)`` of a views entry: ``"response"`` uses ``default_backbone``,
    ``"smollm2:transcript"`` names its own (the view follows the last colon)."""
    backbone, _, view = entry.rpartition(":")
    return (backbone or default_backbone), view


def comma_list(text: str) -> tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")``, empty parts left out."""
    return tuple(part for part in text.split(",") if part)


@dataclass(frozen=True)
class FeatureConfig:
    """Which features reward heads read. Defaults measured on hh-rlhf (README, "Scoring")."""

    backbone: str = field(default="minilm", metadata={"help": "minilm, smollm2, a model folder or a Hub id"})
    views: tuple[str, ...] = field(default=("transcript", "response+prompt"), metadata={
        "help": f"feature views, each with its own members: {', '.join(VIEWS)}, each optionally BACKBONE:VIEW to "
                "mix backbones, e.g. transcript,smollm2:transcript",
        "metavar": "VIEW[,VIEW]", "parse": comma_list})
    max_length: int = field(default=256, metadata={"help": "tokens per text (left-truncated)"})
    precision: str = field(default="auto", metadata={
        "help": "backbone precision: auto = bfloat16 where the hardware has it natively, else float32; int8 = "
                "dynamic int8 linear layers (CPU)",
        "choices": PRECISIONS})
    prefix_reuse: bool = field(default=True, metadata={
        "help": "embed both transcripts of a pair alone, each left-truncated on its own (default on a decoder: the "
                "pair's shared dialogue and both responses run in one pass, the dialogue once, both cut at one "
                "position; a feature cache of its own)"})
    layer: int | None = field(default=None, metadata={
        "help": "pool the states of this block and run no further (1 = first; default: the last)", "metavar": "K"})
    batch_size: int = field(default=32, metadata={"help": "texts per backbone batch on a GPU (speed only; a CPU embeds one text at a time)",
                                                  "flag": "--embed-batch-size"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "views", tuple(self.views))
        unknown = [view for view in self.views if split_view(view, self.backbone)[1] not in VIEWS]
        if unknown or not self.views:
            raise ValueError(f"views must be a non-empty selection of {', '.join(VIEWS)}, each optionally "
                             f"BACKBONE:VIEW, got {self.views}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.layer is not None and self.layer < 1:
            raise ValueError(f"layer must be at least 1, got {self.layer}")
        for name in ("max_length", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def scoring_text(prompt: str, response: str) -> str:
    """The text a backbone reads for one response: the dialogue with the response at its
    end (hh-style turns for plain instructions), so left truncation keeps the response."""
    if not prompt or HH_ASSISTANT in prompt or "<|" in prompt:
        return prompt + response
    return f"\n\nHuman: {prompt}{HH_ASSISTANT} {response}"


def scoring_texts(pairs) -> tuple[list[str], list[str]]:
    """The texts reward models read for each pair: ``(chosen_texts, rejected_texts)``."""
    prompts = pairs["prompt"]
    return (
        [scoring_text(p, r) for p, r in zip(prompts, pairs["chosen"])],
        [scoring_text(p, r) for p, r in zip(prompts, pairs["rejected"])],
    )


def feature_views(pairs, features: FeatureConfig, *, cache_dir: str | os.PathLike | None = None,
                  progress: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(chosen, rejected)`` features of valid pairs, each ``(n_pairs, dim)``, for every view
    of ``features.views`` in order, through the embedding cache."""
    return [pair_features(pairs, features, view=view, cache_dir=cache_dir, progress=progress)
            for view in features.views]


def pair_features(pairs, features: FeatureConfig, *, view: str = "transcript",
                  cache_dir: str | os.PathLike | None = None, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(chosen, rejected)`` features of valid pairs in one view (a :data:`VIEWS` entry,
    optionally ``BACKBONE:VIEW``), each ``(n_pairs, dim)``; the transcript view of a decoder
    with ``features.prefix_reuse`` through :func:`~rmclean.features.prefix.embed_pairs`."""
    n_pairs = len(pairs)
    prompts = list(pairs["prompt"])
    backbone_name, view_name = split_view(view, features.backbone)
    if view_name == "transcript" and features.prefix_reuse:
        chosen_texts, rejected_texts = scoring_texts(pairs)
        return embed_pairs(resolve_backbone(backbone_name), chosen_texts, rejected_texts, max_length=features.max_length,
                           cache_dir=Path(cache_dir) if cache_dir else None, progress=progress,
                           precision=features.precision, layer=features.layer, batch_size=features.batch_size)
    stacked = response_features(prompts + prompts, list(pairs["chosen"]) + list(pairs["rejected"]), features,
                                view=view, cache_dir=cache_dir, progress=progress)
    return stacked[:n_pairs], stacked[n_pairs:]


def response_features(prompts: list[str], responses: list[str], features: FeatureConfig, *,
                      view: str = "transcript", cache_dir: str | os.PathLike | None = None,
                      progress: bool = True, store: bool = True) -> np.ndarray:
    """One row of features per (prompt, response) in one view, shape ``(n_responses, dim)``;
    ``store=False`` keeps new texts out of the cache (see :func:`embed_texts`)."""
    backbone_name, view = split_view(view, features.backbone)
    backbone = resolve_backbone(backbone_name)

    def embed(texts: list[str]) -> np.ndarray:
        return embed_texts(backbone, texts, max_length=features.max_length, batch_size=features.batch_size,
                           cache_dir=Path(cache_dir) if cache_dir else None, progress=progress,
                           precision=features.precision, store=store, layer=features.layer)

    if view == "transcript":
        vectors = embed([scoring_text(p, r) for p, r in zip(prompts, responses)])
    else:
        vectors = embed(list(responses))
    if view == "response+prompt":
        vectors = np.hstack([vectors, embed(list(prompts)) * vectors])
    return vectors


def backbone_fingerprints(features: FeatureConfig) -> dict[str, str]:
    """``{backbone name: weights fingerprint}`` of every backbone ``features``' views read
    (:meth:`Backbone.fingerprint`): what a trained head records, so it is never run on
    features from other weights."""
    names = sorted({split_view(view, features.backbone)[0] for view in features.views})
    return {name: resolve_backbone(name).fingerprint() for name in names}


__all__ = ["VIEWS", "FeatureConfig", "backbone_fingerprints", "comma_list", "feature_views", "pair_features", "response_features",
           "scoring_text", "scoring_texts", "split_view"]
