"""Texts to feature vectors through a frozen backbone and the embedding cache.

On a CPU each text runs alone, so its features never depend on what else is embedded; on a
GPU texts run in batches of one token length (no padding).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from ..distributed import process_label, process_share, wait_for_everyone
from .backbones import Backbone, embedding_device, load_model, resolve_precision
from .cache import FeatureCache, ShardBuffer


def embed_texts(
    backbone: Backbone,
    texts: list[str],
    max_length: int = 256,
    batch_size: int = 32,
    cache_dir: Path | None = None,
    progress: bool = True,
    precision: str = "auto",
    store: bool = True,
    layer: int | None = None,
) -> np.ndarray:
    """Features of ``texts``, shape ``(len(texts), dim)``, float32, through the cache.

    Only texts missing from the cache are run through the model and saved shard by shard: on
    a CPU one text at a time, so a text's features are the same bits whatever else is embedded
    (and whatever the cache held before); on a GPU in batches of ``batch_size`` texts of one
    token length (:func:`equal_length_batches`: no padding); with ``store=False`` they are not saved
    (texts never seen again, such as a policy's samples). ``precision`` is one of
    ``PRECISIONS`` (see :mod:`rmclean.features.backbones`), ``layer`` the block whose states
    are pooled (default: the last); each resolved precision and layer has its own cache.
    """
    import torch

    device = embedding_device()
    precision = resolve_precision(precision, device)
    cache = FeatureCache(backbone, max_length, cache_dir, precision, layer=layer)
    # launched distributed: each process embeds the uncached texts of its own share (shares of the
    # distinct texts, not of the uncached ones, which differ by when each process looks)
    todo = cache.missing(process_share(list(dict.fromkeys(texts)))) if store else cache.missing(texts)
    fresh: dict[str, np.ndarray] = {}  # embedded and not stored
    if todo:
        from tqdm.auto import tqdm

        tokenizer, model = load_model(backbone, cache_dir, layer=layer, precision=precision)
        model.to(device)
        # a model with fewer positions than max_length reads the last tokens it can
        max_length = min(max_length, getattr(model.config, "max_position_embeddings", None) or max_length)
        lengths = [len(ids) for ids in tokenizer(todo, truncation=True, max_length=max_length)["input_ids"]]
        bar = tqdm(total=len(todo), desc=f"embedding with {backbone.name}{process_label()}", unit="text", disable=not progress)
        pending = ShardBuffer(cache)
        with torch.inference_mode(), precision_context(precision, device):
            # on a CPU each text runs alone: the same shapes, so the same bits, whatever else is embedded
            # (batches, even of equal lengths, change the matrix kernels' summation order); a GPU
            # needs batches, so there a text's last bits can depend on its batch neighbours
            for batch_index in equal_length_batches(lengths, batch_size if device.startswith("cuda") else 1):
                batch = [todo[i] for i in batch_index]
                encoded = tokenizer(batch, truncation=True, max_length=max_length, padding=True,
                                    return_tensors="pt").to(device)
                hidden = model(**encoded).last_hidden_state
                vectors = pool_hidden_states(hidden, encoded["attention_mask"], backbone.pooling).cpu().numpy()
                bar.update(len(batch))
                if not store:
                    fresh.update(zip(batch, vectors))
                    continue
                pending.add(batch, vectors)
        pending.flush()
        bar.close()
    if store:
        wait_for_everyone()  # every process, even with nothing to embed: then all shares are in the cache
    if not fresh:
        return cache.get(texts)
    cached = [text for text in dict.fromkeys(texts) if text not in fresh]
    if cached:
        fresh.update(zip(cached, cache.get(cached)))
    return np.stack([fresh[text] for text in texts]).astype(np.float32)


def precision_context(precision: str, device: str):
    """bfloat16 autocast on ``device`` for ``precision="bfloat16"``; nothing otherwise (an
    int8 model is quantized when loaded)."""
    import torch

    if precision == "bfloat16":
        return torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def equal_length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices of ``lengths`` in batches of at most ``batch_size`` whose texts all have the same
    token length, longest first: no text is padded (padding changes the summation order inside
    attention, so a padded text's features depend on its longest neighbour)."""
    by_length: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        by_length.setdefault(length, []).append(index)
    return [group[start:start + batch_size] for length in sorted(by_length, reverse=True)
            for group in (by_length[length],) for start in range(0, len(group), batch_size)]


def pool_hidden_states(hidden, mask, pooling: str):
    """Features ``(batch, dim)`` or ``(batch, 2 * dim)`` from hidden states ``(batch, tokens, dim)``:
    the mean over real tokens (``mask``), and for ``pooling="last+mean"`` also the last real
    token's state first (right padding)."""
    import torch

    weights = mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    if pooling == "mean":
        return mean.float()
    last_index = mask.sum(1) - 1
    last = hidden[torch.arange(hidden.shape[0]), last_index]
    return torch.cat([last, mean], dim=-1).float()
