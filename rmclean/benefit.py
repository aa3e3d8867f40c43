"""End-to-end comparisons from a config file: the denoising-benefit experiment
(``rmclean compare --stage rm CONFIG``).

For each seed the valid pairs are split into a train part and a clean test part,
stratified by source; labels in the train part are flipped at each rate, either at random
or targeted at low-strength pairs (drawn from the 2 × rate fraction with the smallest
|strength| under an ensemble trained on the clean labels: the hard-to-detect kind); the
corrupted train part is scored by the ensemble (cross-fitted, per source; the test part
never informs a choice); each denoiser (:func:`rmclean.denoise.plan`) is applied and a reward
model is trained with the matching loss, next to no denoising and an oracle trained on the
uncorrupted labels. Reward models are heads on the scorer's features, one per training
group (source), so each test pair is scored by its source's head.

With ``judgements`` (a ``rmclean check`` folder, or any table of ``pair_id`` and
``judge_verdict``: a judge's or gold labels) every reward model is also measured on the
paper's three test sets: the ``original`` test labels, the ``agreeing`` test pairs (where the
independent label is the dataset's), and the ``independent`` labels themselves (the test
pairs it decides, relabelled by it). With ``test_noise`` instead, that share of the test
labels is flipped too, so the test labels are noisy the way real ones are and the data's
own labels play the independent (gold) ones: the three test sets measured on any data.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .configs import from_record, to_record
from .data.pairs import split_invalid
from .denoise import DenoiseConfig, DenoiseError, plan
from .features.views import FeatureConfig, feature_views
from .noise import plant_flips, swap_where
from .score import ScoreConfig, training_groups, view_margins
from .train.losses import LOSSES
from .train.reward import RewardTrainConfig, preference_metrics, train_head

#: Denoisers compared by default: the paper's fractions (10%, 20%) and the ``negative`` rule.
DEFAULT_DENOISERS: dict[str, DenoiseConfig] = {
    "flip 10%": DenoiseConfig("flip", "fraction:0.1"),
    "flip 20%": DenoiseConfig("flip", "fraction:0.2"),
    "flip negative": DenoiseConfig("flip", "negative"),
    "drop 10%": DenoiseConfig("drop", "fraction:0.1"),
    "drop 20%": DenoiseConfig("drop", "fraction:0.2"),
    "drop negative": DenoiseConfig("drop", "negative"),
    "margin": DenoiseConfig("margin"),
    "soft-label 10%": DenoiseConfig("soft-label", "fraction:0.1"),
    "soft-label 20%": DenoiseConfig("soft-label", "fraction:0.2"),
    "soft-label negative (α from members)": DenoiseConfig("soft-label", "negative", alpha="members"),
    "flip+margin 10%": DenoiseConfig("flip+margin", "fraction:0.1"),
    "flip+margin 20%": DenoiseConfig("flip+margin", "fraction:0.2"),
    "flip+margin negative": DenoiseConfig("flip+margin", "negative"),
    "soft-label+margin 10%": DenoiseConfig("soft-label+margin", "fraction:0.1"),
    "soft-label+margin 20%": DenoiseConfig("soft-label+margin", "fraction:0.2"),
}
NOISE_KINDS = ("random", "targeted")
#: The paper's three test sets, measured with independent ``judgements`` or ``test_noise``
#: (``independent`` is the set ``rmclean check`` writes as ``testsets/judge.jsonl``).
TESTSETS = ("original", "agreeing", "independent")
#: Sections of an experiment file that ``--stage rm`` leaves to the policy stages
#: (:mod:`rmclean.downstream`).
POLICY_SECTIONS = ("gold", "downstream", "bon", "ppo")
#: Independent verdicts a judgements table may hold; ``tie`` (and anything else) decides nothing.
VERDICTS = ("chosen", "rejected", "tie", "invalid", "error", "pending")


@dataclass(frozen=True)
class BenefitConfig:
    """The denoising-benefit experiment: what a ``rmclean compare --stage rm`` config file
    holds, one key per field (see :meth:`from_dict`)."""

    source: str | list[str | dict[str, Any]] = field(default="hh-rlhf", metadata={
        "help": "what load_pairs reads; a list of sources, each a name or {\"source\": ..., **its own loading "
                "options}, is pooled (see load_benefit_pairs)"})
    loading: dict[str, Any] = field(default_factory=dict, metadata={"help": "load_pairs keyword arguments"})
    seeds: int = field(default=3, metadata={"help": "train/test splits (and planted flips), each its own seed"})
    rates: tuple[float, ...] = field(default=(0.0, 0.1, 0.2, 0.3, 0.4), metadata={
        "help": "shares of the train labels to flip, each in [0, 0.5)"})
    noise: tuple[str, ...] = field(default=NOISE_KINDS, metadata={
        "help": "random flips, and/or targeted ones among the weakest pairs of an ensemble trained on the clean "
                "labels (the hard-to-detect kind)"})
    test_fraction: float = field(default=0.3, metadata={"help": "share of each source's pairs held out for testing"})
    min_score_gap: float | None = field(default=None, metadata={
        "help": "keep only pairs whose rated scores (score_chosen - score_rejected, as UltraFeedback rows carry) "
                "differ by at least this much: a cleaner set"})
    score: ScoreConfig = field(default=ScoreConfig(), metadata={
        "help": "the scorer's settings, features included (a ScoreConfig record)"})
    reward: RewardTrainConfig = field(default=RewardTrainConfig(), metadata={
        "help": "the reward heads' settings (a RewardTrainConfig record without feature settings: the heads "
                "read the scorer's features)"})
    denoisers: dict[str, DenoiseConfig] = field(default_factory=lambda: dict(DEFAULT_DENOISERS), metadata={
        "help": "the denoisers compared, by name (DenoiseConfig records)"})
    judgements: str | None = field(default=None, metadata={
        "help": "independent labels of the test pairs (a rmclean check folder, or a table of pair_id and "
                "judge_verdict; see read_judgements): adds the paper's three test sets"})
    test_noise: float = field(default=0.0, metadata={
        "help": "share of the test labels to flip too, the unflipped ones serving as the independent labels: "
                "the three test sets on any data"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "rates", tuple(float(r) for r in self.rates))
        object.__setattr__(self, "noise", tuple(self.noise))
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {self.seeds}")
        if not self.rates or any(not 0 <= r < 0.5 for r in self.rates):
            raise ValueError(f"rates must lie in [0, 0.5), got {self.rates}")
        if unknown := [n for n in self.noise if n not in NOISE_KINDS]:
            raise ValueError(f"noise kinds are {', '.join(NOISE_KINDS)}, got {unknown}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must lie in (0, 1), got {self.test_fraction}")
        if not 0 <= self.test_noise < 0.5:
            raise ValueError(f"test_noise must lie in [0, 0.5), got {self.test_noise}")
        if self.test_noise and self.judgements is not None:
            raise ValueError("give judgements (independent labels) or test_noise (planted test flips), not both")
        if self.reward.model_type != "heads":
            raise ValueError("the benefit experiment trains reward heads on the scorer's features "
                             "(reward.model_type 'heads')")
        if self.reward.features not in (FeatureConfig(), self.score.features):
            raise ValueError("the benefit experiment's reward heads read the scorer's features: set them in score")
        object.__setattr__(self, "reward", replace(self.reward, features=self.score.features))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "BenefitConfig":
        """A config from plain values (a JSON file): ``score`` and ``reward`` are records of
        :class:`ScoreConfig` / :class:`RewardTrainConfig` settings (the feature settings,
        ``backbone``, ``views``, ..., go in ``score``: the reward heads read the scorer's
        features), ``denoisers`` maps names to :class:`DenoiseConfig` settings. Unknown keys are
        errors, except the sections the policy stages read (:data:`POLICY_SECTIONS`)."""
        values = {key: value for key, value in values.items() if key not in POLICY_SECTIONS}
        known = set(cls.__dataclass_fields__)
        if unknown := sorted(set(values) - known):
            raise ValueError(f"unknown keys {unknown} in the benefit config; known: {sorted(known)}")
        score = from_record(ScoreConfig, values.pop("score", {}))
        reward_values = values.pop("reward", {})
        if misplaced := sorted(set(reward_values) & (set(FeatureConfig.__dataclass_fields__) - {"batch_size"})):
            raise ValueError(f"reward settings {misplaced}: the reward heads read the scorer's features, so these "
                             "go in score")
        reward = from_record(RewardTrainConfig, reward_values, features=score.features)
        denoisers = values.pop("denoisers", None)
        if denoisers is not None:
            denoisers = {name: from_record(DenoiseConfig, options) for name, options in denoisers.items()}
        return cls(score=score, reward=reward, **({"denoisers": denoisers} if denoisers is not None else {}), **values)


def read_config(path: str | os.PathLike) -> BenefitConfig:
    """A :class:`BenefitConfig` from a JSON file; errors name the file."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        return BenefitConfig.from_dict(values)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such config file") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    except TypeError as exc:
        raise ValueError(f"{path}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def read_judgements(path: str | os.PathLike) -> dict[str, str]:
    """Independent labels: ``{pair_id: verdict}`` with verdicts ``chosen`` (the dataset's
    label is right), ``rejected`` (it is reversed) or ``tie`` (no preference), read from a
    ``rmclean check`` output folder (its ``judgements.parquet``) or any file the loader reads
    (``.jsonl``, ``.json``, ``.parquet``, ``.csv``, …) with ``pair_id`` and ``judge_verdict``
    per row (gold labels written that way too). Errors name the file and row."""
    from .data.readers import SUPPORTED_SUFFIXES, read_file, suffix_of
    from .files import verify_folder

    path = Path(path)
    if path.is_dir():
        verify_folder(path, rerun="run `rmclean check` into it again")
        path = path / "judgements.parquet"
    if not path.is_file():
        raise ValueError(f"{path}: no such judgements file (run rmclean check, or write pair_id and judge_verdict)")
    if suffix_of(path) not in SUPPORTED_SUFFIXES:
        raise ValueError(f"{path}: judgements must be a rmclean check folder or a {', '.join(SUPPORTED_SUFFIXES)} file")
    verdicts: dict[str, str] = {}
    for record in read_file(path):
        if record.data is None:
            raise ValueError(f"{record.location}: {record.error}")
        if missing := [c for c in ("pair_id", "judge_verdict") if c not in record.data]:
            raise ValueError(f"{record.location}: judgements need the fields pair_id and judge_verdict; missing {missing}")
        verdict = record.data["judge_verdict"]
        if verdict not in VERDICTS:
            raise ValueError(f"{record.location}, field judge_verdict: {verdict!r} is not one of {', '.join(VERDICTS)}")
        verdicts[str(record.data["pair_id"])] = verdict
    return verdicts


def testset_metrics(delta: np.ndarray, independent: np.ndarray) -> dict[str, dict[str, float] | None]:
    """Metrics of test margins ``delta`` ``(n_test,)`` (reward of the dataset's chosen minus
    rejected) on the three test sets, given each pair's independent verdict ``(n_test,)``
    (``chosen``, ``rejected``, or anything else for undecided): ``None`` for an empty set."""
    agreeing = independent == "chosen"
    decided = agreeing | (independent == "rejected")
    relabelled = np.where(agreeing, delta, -delta)
    return {
        "original": preference_metrics(delta),
        "agreeing": preference_metrics(delta[agreeing]) if agreeing.any() else None,
        "independent": preference_metrics(relabelled[decided]) if decided.any() else None,
    }


def load_benefit_pairs(config: BenefitConfig):
    """The pairs of ``config.source`` through :func:`rmclean.load_pairs` with
    ``config.loading``; a list of sources is loaded one by one (an entry's own options
    override ``loading``) and pooled, each pair keeping its ``source``."""
    from datasets import concatenate_datasets

    from .data.pairs import load_pairs

    entries = config.source if isinstance(config.source, list) else [config.source]
    if not entries:
        raise ValueError("source lists no dataset")
    parts = []
    for entry in entries:
        options = dict(config.loading)
        if isinstance(entry, dict):
            if "source" not in entry:
                raise ValueError(f"a source entry needs a 'source' key: {entry}")
            options.update({key: value for key, value in entry.items() if key != "source"})
            entry = entry["source"]
        parts.append(load_pairs(entry, **options))
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def source_label(config: BenefitConfig) -> str:
    """The source(s) of the experiment in words."""
    entries = config.source if isinstance(config.source, list) else [config.source]
    return " + ".join(str(entry["source"] if isinstance(entry, dict) else entry) for entry in entries)


def score_gaps(pairs) -> np.ndarray:
    """``score_chosen − score_rejected`` of each pair, ``(n_pairs,)``, from top-level columns or
    a ``metadata`` dict (UltraFeedback); an error when the pairs carry no such scores."""
    columns = set(pairs.column_names)
    if {"score_chosen", "score_rejected"} <= columns:
        chosen, rejected = pairs["score_chosen"], pairs["score_rejected"]
    elif "metadata" in columns:
        metadata = [m if isinstance(m, dict) else {} for m in pairs["metadata"]]
        chosen = [m.get("score_chosen") for m in metadata]
        rejected = [m.get("score_rejected") for m in metadata]
    else:
        raise ValueError("min_score_gap needs score_chosen / score_rejected per pair (top level or in metadata)")
    gaps = np.array([np.nan if c is None or r is None else float(c) - float(r) for c, r in zip(chosen, rejected)])
    if np.isnan(gaps).all():
        raise ValueError("min_score_gap needs score_chosen / score_rejected per pair; none has them")
    return gaps


def benefit_pairs(pairs, config: BenefitConfig):
    """The pairs the experiment uses: the valid ones, with a score gap of at least
    ``config.min_score_gap`` when one is set."""
    valid, _ = split_invalid(pairs)
    if config.min_score_gap is not None:
        valid = valid.select(np.flatnonzero(score_gaps(valid) >= config.min_score_gap))
        if len(valid) == 0:
            raise ValueError(f"no pair has a score gap of at least {config.min_score_gap}")
    return valid


def split(sources: np.ndarray, seed: int, test_fraction: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices, stratified by source."""
    rng = np.random.default_rng([seed, 11])
    test = np.zeros(sources.size, dtype=bool)
    for name in np.unique(sources):
        index = rng.permutation(np.flatnonzero(sources == name))
        test[index[: int(round(test_fraction * index.size))]] = True
    return np.flatnonzero(~test), np.flatnonzero(test)


def train_and_test(train_views, test_views, train_groups: dict[str, np.ndarray], test_groups: dict[str, np.ndarray],
                   config: RewardTrainConfig, *, flip=None, weight=None, margin=None, soft_label=None,
                   independent: np.ndarray | None = None) -> dict[str, Any]:
    """One reward head per group on the (possibly denoised) train features; test metrics,
    and with ``independent`` (a verdict per test pair) ``"testsets"``: the three test sets'."""
    chosen, rejected = np.hstack([c for c, _ in train_views]), np.hstack([r for _, r in train_views])
    if flip is not None:
        chosen, rejected = swap_where(flip, chosen, rejected)
    test_chosen, test_rejected = np.hstack([c for c, _ in test_views]), np.hstack([r for _, r in test_views])
    delta = np.zeros(test_chosen.shape[0])
    for name, index in train_groups.items():
        def pick(values):
            return None if values is None else values[index]

        model, _ = train_head(chosen[index], rejected[index], config, margin=pick(margin),
                              soft_label=pick(soft_label), weight=pick(weight))
        test_index = test_groups[name]
        delta[test_index] = (model.reward_of_features(test_chosen[test_index])
                             - model.reward_of_features(test_rejected[test_index]))
    if independent is None:
        return preference_metrics(delta)
    return {**preference_metrics(delta), "testsets": testset_metrics(delta, independent)}


def denoise_benefit(pairs, config: BenefitConfig = BenefitConfig(), *, cache_dir=None, progress: bool = True,
                    report: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run the experiment on the valid pairs of ``pairs``. Returns one record per (seed,
    noise, rate): ``{"seed", "noise", "rate", "oracle": metrics, "none": metrics, NAME:
    metrics (+ "found_flips": the share of selected pairs that were planted flips) or
    {"skipped": reason}}``; ``report`` is called with each record as it is done."""
    valid = benefit_pairs(pairs, config)
    views = feature_views(valid, config.score.features, cache_dir=cache_dir, progress=progress)
    sources = np.array(valid["source"])
    verdicts = independent_verdicts(valid, config.judgements)
    records = []
    for seed in range(config.seeds):
        train, test = split(sources, seed, config.test_fraction)
        independent = None if verdicts is None else verdicts[test]
        test_flipped = plant_flips(test.size, config.test_noise,  # none without test_noise
                                   [1000 + seed, 13, int(round(config.test_noise * 1000))])
        if config.test_noise:
            independent = np.where(test_flipped, "rejected", "chosen").astype(object)
        score_config = replace(config.score, seed=seed)
        reward_config = replace(config.reward, seed=seed)
        train_groups = training_groups(valid.select(train), score_config)
        test_groups = {name: np.flatnonzero(np.isin(sources[test], np.unique(sources[train][index])))
                       for name, index in train_groups.items()}
        train_views = [(c[train], r[train]) for c, r in views]
        test_views = [swap_where(test_flipped, c[test], r[test]) for c, r in views]
        clean_strength = view_margins(train_views, train_groups, score_config.head_config()).mean(axis=1)
        oracle = train_and_test(train_views, test_views, train_groups, test_groups, reward_config,
                                independent=independent)
        for noise in config.noise:
            for rate in config.rates:
                flipped = plant_flips(train.size, rate, [seed, 13, int(round(rate * 1000))],
                                      weakest=clean_strength if noise == "targeted" else None)
                noisy = [swap_where(flipped, c, r) for c, r in train_views]
                record: dict[str, Any] = {
                    "seed": seed, "noise": noise, "rate": rate, "oracle": oracle,
                    "none": train_and_test(noisy, test_views, train_groups, test_groups, reward_config,
                                           independent=independent),
                }
                member_margins = view_margins(noisy, train_groups, score_config.head_config())
                for name, denoiser in config.denoisers.items():
                    try:
                        planned = plan(member_margins, denoiser)
                    except DenoiseError as exc:  # a rule that selects no pair or every pair
                        record[name] = {"skipped": str(exc)}
                        continue
                    reads_margin, reads_soft_label = LOSSES[denoiser.loss]
                    record[name] = train_and_test(
                        noisy, test_views, train_groups, test_groups,
                        replace(reward_config, loss=denoiser.loss),
                        flip=planned.flip, weight=np.where(planned.drop, 0.0, 1.0),
                        margin=planned.margin if reads_margin else None,
                        soft_label=planned.soft_label if reads_soft_label else None,
                        independent=independent)
                    record[name]["found_flips"] = (float(flipped[planned.selected].mean())
                                                   if planned.selected.any() else None)
                records.append(record)
                if report is not None:
                    report(record)
    return records


def independent_verdicts(valid, judgements: str | None) -> np.ndarray | None:
    """The independent verdict of each valid pair, ``(n_pairs,)`` (``""`` where it has none),
    from :func:`read_judgements`; ``None`` without judgements. An error when no pair has one."""
    if judgements is None:
        return None
    by_pair = read_judgements(judgements)
    verdicts = np.array([by_pair.get(pair, "") for pair in valid["pair_id"]], dtype=object)
    if not np.isin(verdicts, ("chosen", "rejected")).any():
        raise ValueError(f"{judgements}: no pair of the benefit set has a chosen/rejected verdict there "
                         f"({len(by_pair):,} judged pairs; were they judged on the same data?)")
    return verdicts


def benefit_markdown(records: list[dict[str, Any]], config: BenefitConfig, n_pairs: int) -> str:
    """Tables of clean-test accuracy (mean ± sd over seeds) per method and rate, and the
    share of the lost accuracy each method recovers, per noise kind."""
    methods = ["oracle", "none", *config.denoisers]
    gap = f" with a score gap of at least {config.min_score_gap:g}" if config.min_score_gap is not None else ""
    test = (f"{config.test_fraction:.0%} test with {config.test_noise:.0%} of its labels flipped too"
            if config.test_noise else f"{config.test_fraction:.0%} clean test")
    lines = [f"Denoising benefit on {n_pairs:,} pairs of {source_label(config)}{gap} ({1 - config.test_fraction:.0%} train "
             f"with planted flips, {test}), {config.seeds} seed(s), reward heads per source on the "
             f"scorer's features; test accuracy against the test labels, mean ± sd over seeds.", ""]
    rates = config.rates
    for noise in config.noise:
        accuracy = {(rate, method): [row[method]["accuracy"] for row in records
                                     if row["noise"] == noise and row["rate"] == rate and "accuracy" in row[method]]
                    for rate in rates for method in methods}
        lines += [f"**{noise} flips**", "", "| method | " + " | ".join(f"{r:.0%}" for r in rates) + " |",
                  "|---|" + "---:|" * len(rates)]
        for method in methods:
            cells = [f"{np.mean(accuracy[(r, method)]):.3f} ± {np.std(accuracy[(r, method)]):.3f}"
                     if accuracy[(r, method)] else "n/a" for r in rates]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        noisy_rates = [r for r in rates if r > 0]
        lines += ["", "Share of the clean-test accuracy lost to the noise that each method recovers over the seeds: "
                  "(mean method − mean none) / (mean oracle − mean none). Every method is fixed in advance; "
                  "picking the best row is itself a choice made on the test part.",
                  "", "| method | " + " | ".join(f"{r:.0%}" for r in noisy_rates) + " |",
                  "|---|" + "---:|" * len(noisy_rates)]
        for method in methods[2:]:
            cells = []
            for rate in noisy_rates:
                mean = {m: np.mean(accuracy[(rate, m)]) if accuracy[(rate, m)] else np.nan
                        for m in ("oracle", "none", method)}
                lost = mean["oracle"] - mean["none"]
                cells.append(f"{(mean[method] - mean['none']) / lost:.2f}" if lost > 0.005 else f"n/a (lost {lost:.3f})")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
        if config.judgements is not None or config.test_noise:
            lines += testsets_markdown([row for row in records if row["noise"] == noise], methods, rates)
    return "\n".join(lines)


def testsets_markdown(records: list[dict[str, Any]], methods: list[str], rates: tuple[float, ...]) -> list[str]:
    """The three test sets' accuracy (mean over seeds) per method and rate, as Markdown lines."""
    def mean_accuracy(method: str, rate: float, testset: str) -> str:
        values = [row[method]["testsets"][testset]["accuracy"] for row in records
                  if row["rate"] == rate and "testsets" in row[method] and row[method]["testsets"][testset]]
        return f"{np.mean(values):.3f}" if values else "n/a"

    sizes = next(row["oracle"]["testsets"] for row in records)
    counts = ", ".join(f"{name} {sizes[name]['pairs'] if sizes[name] else 0:,}" for name in TESTSETS)
    lines = [f"Accuracy on the three test sets (original / agreeing / independent labels; first seed's test pairs: "
             f"{counts}), mean over seeds:", "",
             "| method | " + " | ".join(f"{r:.0%}" for r in rates) + " |", "|---|" + "---:|" * len(rates)]
    for method in methods:
        cells = [" / ".join(mean_accuracy(method, rate, name) for name in TESTSETS) for rate in rates]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines + [""]


def write_benefit(records: list[dict[str, Any]], config: BenefitConfig, folder: str | os.PathLike,
                  n_pairs: int, stem: str = "denoise_benefit") -> list[Path]:
    """Write ``<stem>.json`` (config and records), ``<stem>.md`` and ``<stem>.png`` into ``folder``."""
    from . import plots
    from .files import write_results

    folder = Path(folder)
    written = write_results(folder / stem, {"config": to_record(config), "records": records},
                            benefit_markdown(records, config, n_pairs))
    plots.save(plots.benefit_curves(records, config.rates, config.noise), folder / f"{stem}.png")
    written.append(folder / f"{stem}.png")
    return written


def record_text(record: dict[str, Any]) -> str:
    """One progress line of ``rmclean compare --stage rm``: a (seed, noise, rate) done."""
    return (f"seed {record['seed']} {record['noise']} flips {record['rate']:.0%}: oracle "
            f"{record['oracle']['accuracy']:.3f}, no denoising {record['none']['accuracy']:.3f}")


__all__ = ["DEFAULT_DENOISERS", "TESTSETS", "BenefitConfig", "benefit_markdown", "benefit_pairs", "denoise_benefit",
           "independent_verdicts", "load_benefit_pairs", "read_config", "read_judgements", "record_text", "score_gaps",
           "split", "testset_metrics", "testsets_markdown", "train_and_test", "write_benefit"]
