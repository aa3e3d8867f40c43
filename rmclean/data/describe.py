"""Summaries of a pair dataset: counts per source, flag counts, length percentiles."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from .formats import FLAG_INVALID

TEXT_FIELDS = ("prompt", "chosen", "rejected")
PERCENTILES = (5, 25, 50, 75, 95)


def describe_pairs(pairs, examples: int = 3, max_errors: int = 20) -> dict[str, Any]:
    """Summary of a dataset from :func:`rmclean.load_pairs`, as plain JSON-ready values.

    Keys: ``pairs`` (rows in), ``valid``, ``invalid``, ``sources`` (per source: pairs and
    flag counts), ``flags`` (count of pairs carrying each flag), ``lengths`` (per text
    field, percentiles and max in characters and in white-space separated words, valid
    pairs only), ``examples`` (evenly spaced valid pairs) and ``errors`` (the first
    ``max_errors`` reasons rows were rejected).
    """
    sources = pairs["source"]
    flags = pairs["flags"]
    errors = pairs["error"]
    valid_index = [i for i, error in enumerate(errors) if error is None]

    per_source: dict[str, dict[str, Any]] = {}
    for source, row_flags in zip(sources, flags):
        entry = per_source.setdefault(source, {"pairs": 0, "flags": Counter()})
        entry["pairs"] += 1
        entry["flags"].update(row_flags)
    flag_counts = Counter(flag for row_flags in flags for flag in row_flags)

    lengths: dict[str, Any] = {}
    for field in TEXT_FIELDS:
        texts = pairs[field]
        chars = np.array([len(texts[i]) for i in valid_index], dtype=float)
        words = np.array([len(texts[i].split()) for i in valid_index], dtype=float)
        lengths[field] = {"characters": _percentiles(chars), "words": _percentiles(words)}

    step = max(1, len(valid_index) // max(examples, 1))
    chosen_examples = [valid_index[i] for i in range(0, len(valid_index), step)][:examples]
    return {
        "pairs": len(errors),
        "valid": len(valid_index),
        "invalid": int(flag_counts.get(FLAG_INVALID, 0)),
        "sources": {
            name: {"pairs": entry["pairs"], "flags": dict(sorted(entry["flags"].items()))}
            for name, entry in per_source.items()
        },
        "flags": dict(sorted(flag_counts.items())),
        "lengths": lengths,
        "examples": [
            {key: pairs[i][key] for key in ("pair_id", "source", "row", "flags", *TEXT_FIELDS)}
            for i in chosen_examples
        ],
        "errors": [error for error in errors if error is not None][:max_errors],
    }


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    result = {f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES}
    result["max"] = float(values.max())
    result["mean"] = float(values.mean())
    return result
