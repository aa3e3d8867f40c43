"""``rmclean.score``: preference strength of every pair from a seeded reward-model ensemble.

pairs -> texts -> cached backbone features -> M seeded heads per fold (per source) ->
per-member margins -> :class:`Scores` (strength_mean, strength_std, member_margins).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .configs import to_record
from .data.pairs import load_recorded, split_invalid
from .distributed import main_process_continues
from .features.backbones import model_folder, resolve_backbone, resolve_precision
from .features.views import FeatureConfig, feature_views, scoring_texts, split_view
from .files import atomic_path, output_folder, verify_folder, write_json
from .members.finetune import FinetuneConfig, finetune_margins
from .members.heads import HeadConfig, member_margins
from .members.reward_models import load_reward_model, pair_deltas
from .strength import aggregate, scale_members, summarize

POOLED_GROUP = "(pooled small sources)"
MEMBER_TYPES = ("heads", "finetune")


def _group_by(text: str) -> str | None:
    return None if text.lower() == "none" else text


def split_members(total: int, views: int) -> list[int]:
    """``total`` seeded members split across ``views`` feature views as evenly as possible,
    earlier views getting the extra one: 10 over 3 views -> ``[4, 3, 3]``."""
    if total < views:
        raise ValueError(
            f"members is the total over all feature views and each view needs at least one: {total} member(s) "
            f"cannot cover {views} views; use --members {views} or more, or fewer --views"
        )
    base, extra = divmod(total, views)
    return [base + (number < extra) for number in range(views)]


@dataclass(frozen=True)
class ScoreConfig:
    """Everything that decides the numbers. Defaults follow the paper where it has one
    (M = 10 members) and our CPU measurements elsewhere (README, "Scoring")."""

    features: FeatureConfig = field(default=FeatureConfig(), metadata={"flatten": True})
    members: int = field(default=10, metadata={
        "help": "ensemble members in total, split across feature views (paper: M = 10)"})
    folds: int = field(default=5, metadata={"help": "cross-fitting folds; 1 = in-sample as in the paper"})
    member_type: str = field(default="heads", metadata={
        "help": "heads on cached frozen features (CPU default) or full fine-tunes (GPU path)", "choices": MEMBER_TYPES})
    head: str = field(default="linear", metadata={"help": "linear (L2 logistic regression) or mlp (one hidden layer)",
                                                  "choices": ("linear", "mlp")})
    C: float = field(default=0.0003, metadata={"help": "inverse L2 strength of linear heads", "flag": "--C"})
    bootstrap: bool = field(default=True, metadata={
        "help": "train every member on all its fold's pairs instead of a bootstrap resample"})
    group_by: str | None = field(default="source", metadata={
        "help": "column whose values get their own members ('none': one pool)", "parse": _group_by})
    min_group_size: int = field(default=200, metadata={"help": "groups smaller than this are pooled together"})
    seed: int = field(default=0, metadata={"help": "members, folds and resamples"})
    reward_models: tuple[str, ...] = field(default=(), metadata={
        "help": "a trained reward model as an extra member (repeatable); --members 0 uses only these",
        "flag": "--reward-model", "action": "append", "metavar": "ID_OR_PATH"})
    finetune_epochs: int = field(default=1, metadata={"help": "epochs of each fine-tuned member"})
    finetune_learning_rate: float = field(default=1e-5, metadata={"help": "learning rate of fine-tuned members",
                                                                  "flag": "--finetune-lr"})
    finetune_batch_size: int = field(default=8, metadata={"help": "pairs per step of fine-tuned members"})
    finetune_max_steps: int | None = field(default=None, metadata={"help": "at most N steps per fine-tuned member",
                                                                   "metavar": "N"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "reward_models", tuple(self.reward_models))
        if self.members < 0 or self.members + len(self.reward_models) < 2:
            raise ValueError(
                f"members must be at least 2 (the strength std needs two), got {self.members} seeded members"
                + (f" and {len(self.reward_models)} reward model(s)" if self.reward_models else "")
            )
        if self.member_type not in MEMBER_TYPES:
            raise ValueError(f"member_type must be 'heads' or 'finetune', got {self.member_type!r}")
        if self.members:
            if self.member_type == "heads":  # each view needs a member of its own
                split_members(self.members, len(self.features.views))
            self.head_config()  # validates folds, head and C

    def finetune_config(self) -> FinetuneConfig:
        return FinetuneConfig(
            members=self.members, folds=self.folds, epochs=self.finetune_epochs,
            learning_rate=self.finetune_learning_rate, batch_size=self.finetune_batch_size,
            max_length=self.features.max_length, max_steps=self.finetune_max_steps, bootstrap=False, seed=self.seed,
        )

    def head_config(self) -> HeadConfig:
        return HeadConfig(
            members=self.members, folds=self.folds, head=self.head, C=self.C, bootstrap=self.bootstrap, seed=self.seed
        )

    @property
    def members_per_view(self) -> list[int]:
        """Seeded heads per feature view (``members`` is the total, see :func:`split_members`);
        empty for fine-tuned members, which use no views, and for ``members=0``."""
        if self.member_type != "heads" or not self.members:
            return []
        return split_members(self.members, len(self.features.views))

    @property
    def raw_scale(self) -> bool:
        """Whether all members share one reward scale (a single view of seeded heads, or
        fine-tuned members alone); otherwise each member is divided by its std over pairs."""
        if self.reward_models:
            return False
        return self.member_type == "finetune" or len(self.features.views) == 1

    @property
    def mode(self) -> str:
        return "in-sample" if self.folds == 1 else f"{self.folds}-fold"


@dataclass
class Scores:
    """Per-pair preference strength. ``member_margins`` has shape ``(n_pairs, members)``;
    ``strength_mean`` / ``strength_std`` are its mean and population std over members."""

    pair_id: list[str]
    member_margins: np.ndarray
    mode: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def strength_mean(self) -> np.ndarray:
        return aggregate(self.member_margins)[0]

    @property
    def strength_std(self) -> np.ndarray:
        return aggregate(self.member_margins)[1]

    def __len__(self) -> int:
        return len(self.pair_id)

    def to_pandas(self):
        """One row per pair: pair_id, strength_mean, strength_std, member_margins, mode."""
        import pandas as pd

        strength_mean, strength_std = aggregate(self.member_margins)
        return pd.DataFrame(
            {
                "pair_id": self.pair_id,
                "strength_mean": strength_mean,
                "strength_std": strength_std,
                "member_margins": list(self.member_margins),
                "mode": self.mode,
            }
        )

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``scores.parquet`` (atomically) into ``folder``; metadata goes in its schema."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(self.to_pandas(), preserve_index=False)
        table = table.replace_schema_metadata({b"rmclean": json.dumps(self.metadata, default=str).encode()})
        target = folder / "scores.parquet"
        with atomic_path(target) as partial:
            pq.write_table(table, partial)
        return target

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Scores":
        """Read a folder written by :meth:`save` (or by ``rmclean score``)."""
        import pyarrow.parquet as pq

        path = Path(folder)
        path = path / "scores.parquet" if path.is_dir() else path
        table = pq.read_table(path)
        metadata = json.loads((table.schema.metadata or {}).get(b"rmclean", b"{}"))
        frame = table.to_pandas()
        margins = np.stack(frame["member_margins"].to_numpy()) if len(frame) else np.zeros((0, 0))
        mode = str(frame["mode"].iloc[0]) if len(frame) else metadata.get("mode", "")
        return cls(list(frame["pair_id"]), margins.astype(np.float64), mode, metadata)


def score(pairs, config: ScoreConfig = ScoreConfig(), *, cache_dir: str | os.PathLike | None = None,
          progress: bool = True, main_only: bool = False) -> Scores | None:
    """Score every valid pair of ``pairs`` (a dataset from :func:`rmclean.load_pairs`).

    Rows flagged ``invalid`` are not scored (they have no texts); the result holds the
    other pairs in input order. Each source (``config.group_by``) gets its own members;
    sources smaller than ``config.min_group_size`` are pooled together.

    Under ``accelerate launch`` every process embeds its share of the texts
    (:mod:`rmclean.distributed`); with ``main_only`` the other processes then return ``None``
    and the main one alone trains the heads (without it, every process trains them).
    """
    timings: dict[str, float] = {}
    valid, invalid = split_invalid(pairs)
    if len(valid) == 0:
        raise ValueError("no valid pairs to score" + (f" ({len(invalid)} invalid rows)" if len(invalid) else ""))
    n_pairs = len(valid)
    groups = training_groups(valid, config)
    features = config.features
    backbone = resolve_backbone(features.backbone)
    columns: list[np.ndarray] = []
    collapsed = None
    if config.members and config.member_type == "heads":
        started = time.perf_counter()
        views = feature_views(valid, features, cache_dir=cache_dir, progress=progress)
        if main_only and not main_process_continues():
            return None  # a launched run: the features are in the cache, the main process goes on alone
        timings["features_s"] = time.perf_counter() - started
        started = time.perf_counter()
        columns.append(view_margins(views, groups, config.head_config(), progress=progress))
        timings["heads_s"] = time.perf_counter() - started
        collapsed = np.logical_and.reduce([np.all(chosen == rejected, axis=1) for chosen, rejected in views])
    elif config.members:
        started = time.perf_counter()
        folder = str(model_folder(backbone, Path(cache_dir) if cache_dir else None))
        chosen_texts, rejected_texts = scoring_texts(valid)
        columns.append(group_margins(
            groups, n_pairs, config.finetune_config(),
            lambda index, seeded: finetune_margins(folder, [chosen_texts[i] for i in index],
                                                   [rejected_texts[i] for i in index], seeded, progress=progress),
        ))
        timings["finetune_s"] = time.perf_counter() - started
    if config.reward_models:
        started = time.perf_counter()
        columns += [pair_deltas(load_reward_model(name, max_length=features.max_length), valid,
                                cache_dir=cache_dir, progress=progress)[:, None]
                    for name in config.reward_models]
        timings["reward_models_s"] = time.perf_counter() - started
    margins = np.hstack(columns)
    if not config.raw_scale:  # members of different models or views: one scale for all
        margins = scale_members(margins)

    identical = np.array(["identical_responses" in flags for flags in valid["flags"]])
    metadata = {
        "config": to_record(config),
        "mode": config.mode,
        "members": {"seeded": config.members, "member_type": config.member_type,
                    "views": list(features.views) if config.members_per_view else [],
                    "per_view": config.members_per_view,
                    "reward_models": list(config.reward_models),
                    "scale": "raw reward" if config.raw_scale else "per-member std"},
        "backbone": _describe_backbone(backbone),
        "precision": resolve_precision(features.precision),
        "view_backbones": {view: _describe_backbone(resolve_backbone(split_view(view, features.backbone)[0]))
                           for view in (features.views if config.member_type == "heads" and config.members else ())},
        "versions": _versions(),
        "pairs": int(len(pairs)),
        "scored": n_pairs,
        "invalid": int(len(invalid)),
        "groups": {name: int(index.size) for name, index in groups.items()},
        "collapsed_pairs": None if collapsed is None else int(collapsed.sum()),
        "collapsed_beyond_identical_responses": None if collapsed is None else int((collapsed & ~identical).sum()),
        "timings": timings,
        "summary": summarize(margins, list(valid["source"])),
    }
    return Scores(list(valid["pair_id"]), margins, config.mode, metadata)


def view_margins(views: list[tuple[np.ndarray, np.ndarray]], groups: dict[str, np.ndarray],
                 head_config: HeadConfig, progress: bool = False) -> np.ndarray:
    """Members of every feature view side by side, ``(n_pairs, head_config.members)``:
    ``head_config.members`` is the total, split across the views by :func:`split_members`
    (columns of the first view first); each view gets seed ``head_config.seed + 100 * view``.

    With one view the margins keep the raw reward scale. With several, each member's margins
    are divided by their std over pairs, so every view votes on the same scale.
    """
    split = split_members(head_config.members, len(views))
    columns = [
        ensemble_margins(chosen, rejected, groups,
                         replace(head_config, members=split[number], seed=head_config.seed + 100 * number), progress)
        for number, (chosen, rejected) in enumerate(views)
    ]
    if len(columns) == 1:
        return columns[0]
    return scale_members(np.hstack(columns))


def ensemble_margins(chosen: np.ndarray, rejected: np.ndarray, groups: dict[str, np.ndarray],
                     head_config: HeadConfig, progress: bool = False) -> np.ndarray:
    """Per-member margins ``(n_pairs, members)`` of seeded heads; every group trains its own."""
    return group_margins(
        groups, chosen.shape[0], head_config,
        lambda index, seeded: member_margins(chosen[index], rejected[index], seeded, progress=progress),
    )


def group_margins(groups: dict[str, np.ndarray], n_pairs: int, config, fit) -> np.ndarray:
    """Margins ``(n_pairs, config.members)`` where every group trains its own members:
    ``fit(index, config_for_group)`` returns the group's margins; group g uses seed
    ``config.seed + 1000 * g``. ``config`` is a HeadConfig or FinetuneConfig."""
    margins = np.zeros((n_pairs, config.members))
    for number, (name, index) in enumerate(groups.items()):
        if index.size < max(config.folds, 2):
            raise ValueError(
                f"source {name!r} has {index.size} pairs, fewer than the {config.folds} folds; "
                "use fewer folds or group sources together (group_by=None)"
            )
        margins[index] = fit(index, replace(config, seed=config.seed + 1000 * number))
    return margins


def training_groups(valid, config: ScoreConfig) -> dict[str, np.ndarray]:
    """Pair indices per training group: one per source, small sources pooled."""
    if config.group_by is None:
        return {"(all)": np.arange(len(valid))}
    if config.group_by not in valid.column_names:
        raise ValueError(f"group_by={config.group_by!r} is not a column of the pairs ({', '.join(valid.column_names)})")
    labels = np.array([str(v) for v in valid[config.group_by]], dtype=object)
    groups: dict[str, np.ndarray] = {}
    small: list[np.ndarray] = []
    for name in dict.fromkeys(labels.tolist()):
        index = np.flatnonzero(labels == name)
        (small.append(index) if index.size < config.min_group_size else groups.__setitem__(name, index))
    if small:
        pooled = np.sort(np.concatenate(small))
        if groups and pooled.size < config.min_group_size:
            # too few to train alone: fold the stragglers into the largest group
            largest = max(groups, key=lambda g: groups[g].size)
            groups[largest] = np.sort(np.concatenate([groups[largest], pooled]))
        else:
            groups[POOLED_GROUP] = pooled
    return groups


def _describe_backbone(backbone) -> dict[str, str]:
    return {"name": backbone.name, "path": backbone.path, "fingerprint": backbone.fingerprint(),
            "pooling": backbone.pooling}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("rmclean", "torch", "transformers", "numpy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def load_scored(folder: str | os.PathLike, source: str | None = None):
    """``(pairs, scores, source record)`` for a folder written by ``rmclean score``: the pairs
    are reloaded from the ``load_pairs`` call its ``summary.json`` records (or from ``source``)."""
    folder = Path(folder)
    if not (folder / "scores.parquet").is_file():
        raise ValueError(f"{folder} holds no scores.parquet: pass a folder written by `rmclean score`")
    verify_folder(folder, rerun="run `rmclean score` into it again")
    scores = Scores.load(folder)
    if source is not None:
        return load_recorded({"source": source}), scores, {"source": source}
    summary_file = folder / "summary.json"
    if not summary_file.is_file():
        raise ValueError(f"{folder} has no summary.json, so the source of its pairs is unknown: pass --source SOURCE")
    recorded = json.loads(summary_file.read_text(encoding="utf-8")).get("source")
    if not recorded:
        raise ValueError(f"{summary_file} does not record the source it scored: pass --source SOURCE")
    return load_recorded(recorded), scores, recorded


SCORE_OUTPUTS = ("scores.parquet", "summary.json", "plots")  # what `rmclean score` writes into its folder


def write_report(scores: Scores, folder: str | os.PathLike, source: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``scores.parquet``, ``summary.json`` and ``plots/*.png`` into ``folder`` as one
    unit (:func:`rmclean.files.output_folder`: the folder is replaced whole, with a manifest).

    ``source`` (the ``load_pairs`` arguments that produced the pairs) is recorded in the
    summary so that later commands need only this folder.
    """
    from . import plots

    folder = Path(folder)
    names = {"scores": "scores.parquet", "summary": "summary.json",
             "strength_hist": "plots/strength_hist.png", "strength_by_decile": "plots/strength_by_decile.png"}
    strength_mean, strength_std = aggregate(scores.member_margins)
    with output_folder(folder, owned=SCORE_OUTPUTS, produced_by="rmclean score") as staging:
        scores.save(staging)
        write_json(staging / names["summary"], {"source": source, **scores.metadata})
        (staging / "plots").mkdir()
        plots.save(plots.strength_histogram(strength_mean), staging / names["strength_hist"])
        plots.save(plots.strength_by_decile(strength_mean, strength_std), staging / names["strength_by_decile"])
    return {key: folder / name for key, name in names.items()}


def summary_text(metadata: dict[str, Any], written: dict[str, Path]) -> str:
    """The short human report of ``rmclean score``."""
    summary = metadata["summary"]
    config = metadata["config"]
    members = f"{config['members']} {config['head'] if config['member_type'] == 'heads' else 'fine-tuned'} members per fold"
    per_view = metadata.get("members", {}).get("per_view") or []
    if len(per_view) > 1:
        members += (f" ({per_view[0]} per view x {len(per_view)} views)" if len(set(per_view)) == 1
                    else f" ({' + '.join(map(str, per_view))} over {len(per_view)} views)")
    if config["reward_models"]:
        members += f" + {len(config['reward_models'])} reward model(s)"
    lines = [
        f"scored {metadata['scored']:,} pairs ({metadata['invalid']:,} invalid rows not scored) with "
        f"{members}, {metadata['mode']}, backbone {metadata['backbone']['name']}",
        f"  ensemble accuracy vs dataset labels: {summary['ensemble_accuracy']:.3f} "
        f"(members {min(summary['member_accuracy']):.3f}-{max(summary['member_accuracy']):.3f})",
        f"  pairs with strength_mean < 0: {summary['fraction_negative']:.1%}",
    ]
    if metadata["collapsed_pairs"] is not None:
        lines.append(
            f"  pairs whose two inputs are identical after truncation: {metadata['collapsed_pairs']:,} "
            f"({metadata['collapsed_beyond_identical_responses']:,} beyond identical responses)"
        )
    for name, entry in summary.get("by_source", {}).items():
        lines.append(f"  {name}: {entry['pairs']:,} pairs, accuracy {entry['ensemble_accuracy']:.3f}, "
                     f"below 0 {entry['fraction_negative']:.1%}")
    timings = metadata["timings"]
    lines.append("  time: " + ", ".join(f"{name.removesuffix('_s')} {seconds:.1f}s" for name, seconds in timings.items()))
    lines.append("wrote " + ", ".join(str(path) for path in written.values()))
    return "\n".join(lines)
