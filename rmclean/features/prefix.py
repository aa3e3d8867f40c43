"""Shared-prefix embedding of response pairs on a decoder backbone.

The chosen and rejected transcripts of a pair repeat one dialogue and differ only in the
response (on hh-rlhf the shared dialogue is about a third of all tokens). A causal model's
states for a token never depend on the tokens after it, so the dialogue runs once and both
responses continue from it, in one pass over the dialogue and both responses (an attention
mask keeps the second response from seeing the first; its positions continue from the
dialogue): the same features as two full passes (up to float rounding), for fewer tokens and
one read of the weights instead of two.

Both sides are cut on the left at **one** position (pair-aligned truncation): the longer side
keeps its last ``max_length`` tokens and the shorter side loses the same dialogue tokens, so
the two still share their prefix. Only dialogue tokens the two sides share are cut this way;
where a response alone is too long for that (it would be cut on the other side too), each side
is cut on its own, as a single text is, and that pair runs without reuse.

A side's features therefore depend on its pair: the plan (tokens cut on the left, tokens
shared) and, in their last bits, the other side. The cache key holds the side, the plan and
both texts, and these features live in a cache folder of their own (``-pairs``), never mixed
with single-text features; given its pair, a side's features are the same bits whatever else
is embedded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..distributed import process_label, process_share, wait_for_everyone
from .backbones import Backbone, embedding_device, load_model, load_tokenizer, model_folder, resolve_precision
from .cache import FeatureCache, ShardBuffer
from .embedding import embed_texts, pool_hidden_states, precision_context


@dataclass(frozen=True)
class PairPlan:
    """How one pair is embedded: ``cut`` tokens dropped after the leading special tokens of
    both sides, the first ``shared`` tokens of what remains run once for both (0: each side
    runs alone), and each side's cut when they are cut apart."""

    cut_first: int
    cut_second: int
    shared: int


def plan_pair(first_ids: list[int], second_ids: list[int], max_length: int, leading: int = 0) -> PairPlan:
    """The plan of one pair of token id lists (leading special tokens, e.g. a BOS, counted in
    ``leading``: they are kept and never cut)."""
    own_cuts = [max(0, len(ids) - max_length) for ids in (first_ids, second_ids)]
    common = 0
    for a, b in zip(first_ids, second_ids):
        if a != b:
            break
        common += 1
    cut = max(own_cuts)
    # shared tokens left after the cut; each side keeps at least one token of its own (its last
    # token's state is a feature, and must come from its own continuation)
    shared = min(common, len(first_ids) - 1, len(second_ids) - 1) - cut
    if shared <= leading:  # the cut reaches past the shared dialogue: cut each side alone
        return PairPlan(own_cuts[0], own_cuts[1], 0)
    return PairPlan(cut, cut, shared)


def cut_ids(ids: list[int], cut: int, leading: int) -> list[int]:
    """``ids`` without ``cut`` tokens after its ``leading`` special tokens."""
    return ids[:leading] + ids[leading + cut:]


def pair_keys(first: str, second: str, plan: PairPlan) -> tuple[str, str]:
    """The texts the cache keys of a pair's two sides are made from: the side, the plan and
    both texts (the two sides run in one pass, so each side's last bits depend on the other)."""
    pair = f"{plan.cut_first}:{plan.cut_second}:{plan.shared}\x00{first}\x00{second}"
    return "first\x00" + pair, "second\x00" + pair


def embed_pairs(
    backbone: Backbone,
    first_texts: list[str],
    second_texts: list[str],
    max_length: int = 256,
    cache_dir: Path | None = None,
    progress: bool = True,
    precision: str = "auto",
    layer: int | None = None,
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Features of both sides of each pair, two arrays of shape ``(n_pairs, dim)``, float32,
    through the cache, with shared-prefix reuse (module docstring). ``precision`` and ``layer``
    as in :func:`~rmclean.features.embedding.embed_texts`. An encoder (bidirectional: no
    prefix to reuse) embeds each text alone (:func:`embed_texts`, in batches of ``batch_size``
    on a GPU); a decoder runs one pair per pass."""
    if len(first_texts) != len(second_texts):
        raise ValueError(f"{len(first_texts)} first texts but {len(second_texts)} second texts")
    if not backbone.is_decoder:
        vectors = embed_texts(backbone, list(first_texts) + list(second_texts), max_length=max_length,
                              batch_size=batch_size, cache_dir=cache_dir, progress=progress, precision=precision,
                              layer=layer)
        return vectors[:len(first_texts)], vectors[len(first_texts):]
    device = embedding_device()
    precision = resolve_precision(precision, device)
    cache = FeatureCache(backbone, max_length, cache_dir, precision, layer=layer, variant="pairs")
    tokenizer = load_tokenizer(backbone, cache_dir)
    max_length = min(max_length, _max_positions(backbone, cache_dir) or max_length)
    first_ids, second_ids = _token_ids(tokenizer, first_texts), _token_ids(tokenizer, second_texts)
    leading = _leading_specials(tokenizer)
    plans = [plan_pair(a, b, max_length, leading) for a, b in zip(first_ids, second_ids)]
    keyed = [pair_keys(a, b, plan) for a, b, plan in zip(first_texts, second_texts, plans)]
    first_keys, second_keys = [keys[0] for keys in keyed], [keys[1] for keys in keyed]
    # launched distributed: each process embeds the uncached pairs of its own share (shares of
    # all pairs, not of the uncached ones, which differ by when each process looks)
    share = process_share(list(range(len(plans))))
    missing = set(cache.missing([first_keys[i] for i in share] + [second_keys[i] for i in share]))
    todo = [i for i in share if first_keys[i] in missing or second_keys[i] in missing]
    if todo:
        from tqdm.auto import tqdm

        _, model = load_model(backbone, cache_dir, layer=layer, precision=precision)
        model.to(device)
        pending = ShardBuffer(cache)
        with precision_context(precision, device):
            for index in tqdm(todo, desc=f"embedding pairs with {backbone.name}{process_label()}", unit="pair",
                              disable=not progress):
                plan = plans[index]
                sides = (cut_ids(first_ids[index], plan.cut_first, leading),
                         cut_ids(second_ids[index], plan.cut_second, leading))
                pending.add([first_keys[index], second_keys[index]],
                            np.stack(_embed_plan(model, sides, plan.shared, device)))
        pending.flush()
    wait_for_everyone()  # every process's share is in the cache before any reads it back
    stacked = cache.get(first_keys + second_keys)
    return stacked[:len(plans)], stacked[len(plans):]


def _embed_plan(model, sides: tuple[list[int], list[int]], shared: int, device: str) -> list[np.ndarray]:
    """Pooled features of both sides from one pass over ``shared`` tokens, the first side's
    rest and the second side's rest, packed in one sequence: a mask keeps the second side's
    tokens from seeing the first side's rest, and its positions continue from the shared
    tokens (with ``shared == 0`` the two sides are simply side by side). One pass instead of
    two: a CPU pays for reading the weights once per pass, which is most of a short pass."""
    import torch

    first, second = sides
    rest = second[shared:]
    length = len(first) + len(rest)
    allowed = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    allowed[len(first):, shared:len(first)] = False  # the second side sees the shared tokens only
    mask = torch.zeros(1, 1, length, length, device=device)
    mask.masked_fill_(~allowed, torch.finfo(mask.dtype).min)
    positions = torch.tensor([list(range(len(first))) + list(range(shared, shared + len(rest)))], device=device)
    with torch.inference_mode():
        hidden = model(input_ids=torch.tensor([first + rest], device=device), attention_mask=mask,
                       position_ids=positions).last_hidden_state[0]
    states = (hidden[:len(first)], torch.cat([hidden[:shared], hidden[len(first):]]))
    ones = torch.ones(1, 1, dtype=torch.long, device=device)
    return [pool_hidden_states(side[None], ones.expand(1, side.shape[0]), "last+mean")[0].cpu().numpy()
            for side in states]


def _token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]


def _leading_specials(tokenizer) -> int:
    """How many special tokens (a BOS) the tokenizer puts before a text's own tokens."""
    ids = tokenizer("a")["input_ids"]
    own = tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(ids) - len(own) + 1):
        if ids[start:start + len(own)] == own:
            return start
    return 0


def _max_positions(backbone: Backbone, cache_dir: Path | None) -> int | None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_folder(backbone, cache_dir)))
    return getattr(config, "max_position_embeddings", None)


__all__ = ["PairPlan", "cut_ids", "embed_pairs", "pair_keys", "plan_pair"]
