"""Summaries of a pair dataset: counts per source, flag counts, length percentiles."""

from __future__ import annotations

import textwrap
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


def summary_text(summary: dict[str, Any]) -> str:
    """The human-readable report of ``rmclean data inspect``."""
    lines = [
        f"{summary['source']}: {summary['pairs']:,} pairs ({summary['valid']:,} valid, "
        f"{summary['invalid']:,} invalid) from {len(summary['sources'])} source(s)",
        "",
    ]
    width = max([len(name) for name in summary["sources"]] + [6])
    lines.append(f"{'source':<{width}}  {'pairs':>7}  flags")
    for name, entry in summary["sources"].items():
        flags = ", ".join(f"{flag} {count:,}" for flag, count in entry["flags"].items()) or "-"
        lines.append(f"{name:<{width}}  {entry['pairs']:>7,}  {flags}")
    lines += ["", "flags (pairs carrying each; flagged pairs are kept, not dropped)"]
    lines += [f"  {flag:<22} {count:>7,}" for flag, count in summary["flags"].items()] or ["  none"]
    for unit in ("characters", "words"):
        lines += ["", f"length in {unit:<11}" + "".join(f"{p:>9}" for p in ("p5", "p25", "p50", "p75", "p95", "max"))]
        for field in TEXT_FIELDS:
            stats = summary["lengths"][field][unit]
            cells = "".join(f"{stats[p]:>9,.0f}" for p in ("p5", "p25", "p50", "p75", "p95", "max")) if stats else ""
            lines.append(f"  {field:<20}{cells}")
    if summary["examples"]:
        lines += ["", "examples"]
        for number, example in enumerate(summary["examples"], 1):
            flags = ", ".join(example["flags"]) or "-"
            lines.append(f"  [{number}] {example['source']} row {example['row']}  id {example['pair_id']}  flags: {flags}")
            lines.append(f"      prompt:   {clip_text(example['prompt'], tail=True)}")
            lines.append(f"      chosen:   {clip_text(example['chosen'])}")
            lines.append(f"      rejected: {clip_text(example['rejected'])}")
    if summary["errors"]:
        lines += ["", f"rejected rows (first {len(summary['errors'])} of {summary['invalid']:,})"]
        lines += [f"  {textwrap.shorten(error, 200)}" for error in summary["errors"]]
    return "\n".join(lines)


def clip_text(text: str, width: int = 160, tail: bool = False) -> str:
    """``text`` on one line as a quoted repr, cut to ``width`` characters (keeping the end with
    ``tail``)."""
    flat = " ".join(text.split())
    if len(flat) <= width:
        return repr(flat)
    return repr("…" + flat[-width:]) if tail else repr(flat[:width] + "…")
