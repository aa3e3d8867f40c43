"""Named datasets and where their files are found.

A named source (``"hh-rlhf"``, ``"llmbar"``, ...) is looked up, per subset and split, in
this order: the explicit ``data_dir``, then ``$RMCLEAN_DATA_DIR``, then the Hugging Face
Hub where the dataset lives there. ``data_dir`` and ``$RMCLEAN_DATA_DIR`` may point at the
root of a data folder (holding ``hh-rlhf/``, ``llmbar/``, ...) or at the dataset's own
folder. ``data/README.md`` describes the layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DATA_DIR_ENV = "RMCLEAN_DATA_DIR"


class SourceNotFoundError(FileNotFoundError):
    """A dataset could not be found in any of the places it was looked for."""


@dataclass(frozen=True)
class NamedSource:
    """A dataset rmclean knows by name.

    ``files`` maps each subset to its file path relative to the data root, with
    ``{split}`` standing for the split name. ``hub_id`` (optional) is the Hub dataset
    used when no local copy exists; each subset is the Hub ``data_dir``.
    """

    name: str
    files: dict[str, str]
    default_subsets: tuple[str, ...]
    splits: tuple[str, ...]
    default_split: str
    hub_id: str | None = None
    aliases: tuple[str, ...] = field(default=())

    @property
    def folder(self) -> str:
        return next(iter(self.files.values())).split("/")[0]


_LLMBAR = {
    "Natural": "llmbar/LLMBar/Natural/dataset.json",
    "Adversarial/Neighbor": "llmbar/LLMBar/Adversarial/Neighbor/dataset.json",
    "Adversarial/GPTInst": "llmbar/LLMBar/Adversarial/GPTInst/dataset.json",
    "Adversarial/GPTOut": "llmbar/LLMBar/Adversarial/GPTOut/dataset.json",
    "Adversarial/Manual": "llmbar/LLMBar/Adversarial/Manual/dataset.json",
    "Processed/FairEval": "llmbar/Processed/FairEval/dataset.json",
    "Processed/LLMEval2": "llmbar/Processed/LLMEval2/dataset.json",
    "Processed/MT-Bench": "llmbar/Processed/MT-Bench/dataset.json",
}

HH_SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")

NAMED_SOURCES: dict[str, NamedSource] = {
    source.name: source
    for source in (
        NamedSource(
            "hh-rlhf",
            files={subset: f"hh-rlhf/{subset}/{{split}}.jsonl.gz" for subset in HH_SUBSETS},
            default_subsets=HH_SUBSETS,
            splits=("train", "test"),
            default_split="test",
            hub_id="Anthropic/hh-rlhf",
            aliases=("anthropic/hh-rlhf", "hh"),
        ),
        NamedSource(
            "llmbar",
            files=_LLMBAR,
            default_subsets=tuple(k for k in _LLMBAR if not k.startswith("Processed/")),
            splits=("test",),
            default_split="test",
        ),
        NamedSource(
            "llmeval2",
            files={"all": "llmeval2/LLMEval2_benchmark.json.zip"},
            default_subsets=("all",),
            splits=("test",),
            default_split="test",
            aliases=("llmeval²",),
        ),
        NamedSource(
            "auto-j",
            files={"pairwise": "auto-j/testdata_pairwise.jsonl"},
            default_subsets=("pairwise",),
            splits=("test",),
            default_split="test",
            aliases=("autoj",),
        ),
        NamedSource(
            "ultrafeedback-sample",
            files={"all": "ultrafeedback-sample/{split}_clean.jsonl"},
            default_subsets=("all",),
            splits=("train", "eval"),
            default_split="train",
        ),
        NamedSource(
            "hhh-alignment",
            files={"all": "hhh-alignment/hhh_alignment_pairs.jsonl"},
            default_subsets=("all",),
            splits=("test",),
            default_split="test",
            aliases=("hhh",),
        ),
    )
}


def named_source(name: str) -> NamedSource | None:
    """The named source called ``name`` (or one of its aliases), if any."""
    key = name.strip().lower()
    for source in NAMED_SOURCES.values():
        if key == source.name or key in source.aliases:
            return source
    return None


@dataclass(frozen=True)
class Location:
    """Where one (subset, split) of a named source was found: a file or a Hub dataset."""

    name: str
    subset: str
    split: str
    path: Path | None = None
    hub_id: str | None = None

    @property
    def label(self) -> str:
        """The ``source`` value rows from here get, e.g. ``hh-rlhf/harmless-base/test``."""
        if self.subset == "all":
            return f"{self.name}/{self.split}"
        return f"{self.name}/{self.subset}/{self.split}"


def resolve(
    source: NamedSource,
    subsets: list[str] | None,
    split: str | None,
    data_dir: str | os.PathLike | None,
) -> list[Location]:
    """Find every requested (subset, split) of ``source``; raise with every place tried."""
    subsets = subsets or list(source.default_subsets)
    unknown = [s for s in subsets if s not in source.files]
    if unknown:
        raise ValueError(
            f"unknown subset {unknown[0]!r} of {source.name}; choose from {', '.join(source.files)}"
        )
    split = split or source.default_split
    if split not in source.splits:
        raise ValueError(f"unknown split {split!r} of {source.name}; choose from {', '.join(source.splits)}")
    return [_resolve_one(source, subset, split, data_dir) for subset in subsets]


def _resolve_one(source: NamedSource, subset: str, split: str, data_dir) -> Location:
    relative = source.files[subset].format(split=split)
    tried: list[str] = []
    env_dir = os.environ.get(DATA_DIR_ENV)
    for label, root in ((f"data_dir={data_dir}", data_dir), (f"${DATA_DIR_ENV}", env_dir)):
        if root is None or str(root) == "":
            tried.append(f"{label}: not set")
            continue
        candidates = _candidates(Path(root).expanduser(), relative)
        found = next((c for c in candidates if c.is_file()), None)
        if found is not None:
            return Location(source.name, subset, split, path=found)
        tried.append(f"{label}: no {' or '.join(str(c) for c in candidates)}")
    if source.hub_id is None:
        tried.append("Hugging Face Hub: this dataset is not loaded from the Hub")
    else:
        hub_error = _probe_hub(source.hub_id, subset)
        if hub_error is None:
            return Location(source.name, subset, split, hub_id=source.hub_id)
        tried.append(f"Hugging Face Hub {source.hub_id!r} (data_dir={subset!r}): {hub_error}")
    places = "\n".join(f"  {i}. {place}" for i, place in enumerate(tried, 1))
    raise SourceNotFoundError(
        f"could not find {source.name} subset {subset!r} split {split!r}. Looked in:\n{places}\n"
        f"Point {DATA_DIR_ENV} (or data_dir=) at a folder holding {relative} "
        "(see data/README.md for the layout)."
    )


def _candidates(root: Path, relative: str) -> list[Path]:
    """``root/relative`` (a data root) and ``root/<relative minus its first folder>``
    (the dataset's own folder)."""
    inside = relative.split("/", 1)[1]
    return [root / relative, root / inside]


def _probe_hub(hub_id: str, subset: str) -> str | None:
    """``None`` when the Hub dataset is reachable, else a one-line reason."""
    try:
        from huggingface_hub import HfApi

        HfApi().dataset_info(hub_id, timeout=10)
    except Exception as exc:  # offline mode, no network, auth, not found: all mean "not here"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"{type(exc).__name__}: {first_line}"
    return None
