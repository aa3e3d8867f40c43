"""Writers for denoised pairs: profiles that other trainers read as-is, and the files
``rmclean denoise`` writes (SPEC 4).

Profiles (``format=``):

=========== ===========================================================================
input       chosen/rejected (and prompt) the way the input held them: whole transcripts
            for hh-rlhf, prompt/chosen/rejected texts for TRL-style input, lists of
            turns for MOSS input; other inputs as ``trl``
trl         ``prompt``, ``chosen``, ``rejected`` texts (TRL's explicit-prompt format;
            ``RewardTrainer`` reads the ``margin`` column)
openrlhf    the same columns; OpenRLHF reads them with ``--prompt_key prompt
            --chosen_key chosen --rejected_key rejected`` and takes ``margin`` as is
moss        hh-rlhf-strength-cleaned's columns: ``chosen``/``rejected`` lists of turns,
            ``mean preference difference``, ``std preference difference``, ``chosen score
            list`` (each member's margin), ``rejected score list`` (zeros: members score
            the difference), and ``GPT4 label`` (0/1 swapped for flips) when the input had one
canonical   every column of :func:`rmclean.denoise`'s result
=========== ===========================================================================

Every profile also carries ``pair_id``, ``margin``, ``soft_label``, ``strength_mean``,
``strength_std``, ``action`` and ``reason``. Flipped pairs are written with chosen and
rejected swapped, so no consumer needs to know.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from . import plots
from .data.formats import HH_ASSISTANT
from .files import atomic_path, json_text, output_folder, write_json
from .strength import scored_strength

FORMATS = ("input", "trl", "openrlhf", "moss", "canonical")
TRAINABLE = ("keep", "flip", "soften")  # actions whose pairs go to the cleaned files
DENOISE_COLUMNS = ("margin", "soft_label", "strength_mean", "strength_std", "action", "reason")
MOSS_MEAN, MOSS_STD = "mean preference difference", "std preference difference"
MOSS_CHOSEN_SCORES, MOSS_REJECTED_SCORES, MOSS_GPT4 = "chosen score list", "rejected score list", "GPT4 label"
_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def input_profile(result) -> str:
    """The profile that writes pairs back the way the input held them."""
    found = {value for value, error in zip(result["input_format"], result["error"]) if error is None}
    if found == {"transcript"}:
        return "transcript"
    if found == {"turns"}:
        return "moss"
    return "trl"


def to_profile(result, format: str = "input"):
    """Rows of a denoise result (all actions) as a ``pandas.DataFrame`` in ``format``."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}: use one of {', '.join(FORMATS)}")
    frame = result.to_pandas()
    if format == "canonical":
        return frame
    profile = input_profile(result) if format == "input" else format
    prompts, chosen, rejected = frame["prompt"].tolist(), frame["chosen"].tolist(), frame["rejected"].tolist()
    out: dict[str, Any] = {"pair_id": frame["pair_id"]}
    if profile == "transcript":
        out["chosen"] = [p + c for p, c in zip(prompts, chosen)]
        out["rejected"] = [p + r for p, r in zip(prompts, rejected)]
    elif profile in ("trl", "openrlhf"):
        out.update(prompt=prompts, chosen=chosen, rejected=rejected)
    else:
        out["chosen"] = [to_turns(p, c) for p, c in zip(prompts, chosen)]
        out["rejected"] = [to_turns(p, r) for p, r in zip(prompts, rejected)]
        out[MOSS_MEAN] = frame["strength_mean"]
        out[MOSS_STD] = frame["strength_std"]
        margins = [None if m is None else [float(x) for x in m] for m in frame["member_margins"]]
        out[MOSS_CHOSEN_SCORES] = margins
        out[MOSS_REJECTED_SCORES] = [None if m is None else [0.0] * len(m) for m in margins]
        if MOSS_GPT4 in frame:
            flipped = (frame["action"] == "flip").tolist()
            out[MOSS_GPT4] = [_flip_label(label) if f else label for label, f in zip(frame[MOSS_GPT4].tolist(), flipped)]
    import pandas as pd

    table = pd.DataFrame(out)
    for column in DENOISE_COLUMNS:
        table[column] = frame[column]
    return table


def to_turns(prompt: str, response: str) -> list[str]:
    """A prompt and response as MOSS-RLHF's alternating turns (human first, response last).

    hh-style text (``"\\n\\nHuman: ... \\n\\nAssistant:"``) is split at its speaker marks;
    a plain instruction becomes one human turn.
    """
    if HH_ASSISTANT not in prompt:
        return ([prompt] if prompt else []) + [response.strip()]
    return _TURN.split(prompt + response)[2::2]  # [before, speaker, turn, speaker, turn, ...]


def _flip_label(label: Any) -> Any:
    """A 0/1 judge label read against the chosen response, after chosen and rejected swap."""
    return 1 - label if label in (0, 1) and not isinstance(label, bool) else label


DENOISE_OUTPUTS = ("cleaned.jsonl", "cleaned.parquet", "cleaned", "dropped.jsonl", "summary.json", "plots")


def write_denoised(result, summary: dict[str, Any], folder: str | os.PathLike, format: str = "input") -> dict[str, Path]:
    """Write ``cleaned.jsonl``, ``cleaned.parquet``, ``cleaned/`` (``save_to_disk``),
    ``dropped.jsonl`` (dropped and invalid rows, with reasons), ``summary.json`` and
    ``plots/actions.png`` (what the method did, by strength) into
    ``folder`` as one unit (:func:`rmclean.files.output_folder`: replaced whole, with a
    manifest). Numbers are finite: ``NaN`` and infinities are written as null. Returns the
    paths written."""
    import datasets
    import numpy as np

    folder = Path(folder)
    table = to_profile(result, format)
    numeric = table.select_dtypes("number").columns
    table[numeric] = table[numeric].replace([np.inf, -np.inf], np.nan)
    trainable = table["action"].isin(TRAINABLE)
    cleaned, dropped = table[trainable].reset_index(drop=True), table[~trainable].reset_index(drop=True)
    summary = {**summary, "format": format if format != "input" else f"input ({input_profile(result)})",
               "written": {"cleaned": int(len(cleaned)), "dropped_or_invalid": int(len(dropped))}}
    with output_folder(folder, owned=DENOISE_OUTPUTS, produced_by="rmclean denoise") as staging:
        write_jsonl(cleaned, staging / "cleaned.jsonl")
        write_jsonl(dropped, staging / "dropped.jsonl")
        cleaned.to_parquet(staging / "cleaned.parquet", index=False)
        datasets.Dataset.from_pandas(cleaned, preserve_index=False).save_to_disk(str(staging / "cleaned"))
        write_json(staging / "summary.json", summary)
        before_flips = scored_strength(result["strength_mean"], result["action"])
        plots.save(plots.denoise_actions(before_flips, result["action"]), staging / "plots" / "actions.png")
    written = {name: folder / name for name in DENOISE_OUTPUTS if name != "plots"}
    return {**written, "actions_plot": folder / "plots" / "actions.png"}


def write_jsonl(table, path: Path) -> Path:
    """Write the rows of a ``pandas.DataFrame`` as JSON Lines (finite numbers only: ``NaN``
    and infinities as null), atomically."""
    with atomic_path(path) as partial, open(partial, "w", encoding="utf-8") as handle:
        handle.writelines(json_text(record, indent=None) for record in table.to_dict(orient="records"))
    return path


__all__ = ["FORMATS", "to_profile", "to_turns", "write_denoised", "write_jsonl"]
