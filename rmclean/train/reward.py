"""The bundled reward-model trainer: one reward model trained with any loss of
:mod:`rmclean.train.losses`, evaluated on named test sets.

``model_type="heads"`` (the CPU path) trains a linear or one-hidden-layer MLP head on
standardized frozen features of the scorer's feature views (:class:`~rmclean.features.views.FeatureConfig`);
``model_type="finetune"`` (the GPU path) the whole backbone with a one-logit head, through
``accelerate``. Either comes back as a reward model of :mod:`rmclean.members.reward_models`
(``reward(prompts, responses)``, ``save(folder)``), which ``rmclean score --reward-model DIR``
and the PPO trainer read back with :func:`load_reward_model`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..configs import to_record
from ..data.pairs import split_invalid
from ..features.views import FeatureConfig, feature_views
from ..files import output_folder, write_json
from ..members.reward_models import FINETUNED_FILE, HeadRewardModel, HFRewardModel, build_head, load_reward_model, pair_deltas
from .losses import LOSSES, preference_loss

MODEL_TYPES = ("heads", "finetune")


@dataclass(frozen=True)
class RewardTrainConfig:
    """How to train one reward model. Head defaults measured on hh-rlhf (README, "Training
    reward models"); ``weight_decay`` is AdamW's L2 pull, playing the role of the scorer's
    strong regularisation. With ``model_type="finetune"``, ``head``, ``hidden``, ``views`` and
    ``weight_decay`` do not apply."""

    loss: str = field(default="bt", metadata={"help": "reward-model loss: bt (Bradley-Terry), or one that reads the "
                                                      "margin and/or soft_label columns of rmclean denoise",
                                              "choices": LOSSES})
    model_type: str = field(default="heads", metadata={
        "help": "heads: a head on cached frozen features (CPU); finetune: the whole backbone (GPU)",
        "choices": MODEL_TYPES, "flag": "--mode", "record": "mode"})
    features: FeatureConfig = field(default=FeatureConfig(), metadata={"flatten": True})
    head: str = field(default="linear", metadata={"help": "linear, or mlp (one hidden layer)",
                                                  "choices": ("linear", "mlp")})
    hidden: int = field(default=128, metadata={"help": "hidden units of an mlp head"})
    epochs: int = field(default=10, metadata={"help": "passes over the training pairs"})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate", "flag": "--lr"})
    weight_decay: float = field(default=10.0, metadata={"help": "AdamW weight decay of a head"})
    batch_size: int = field(default=256, metadata={"help": "training pairs per step"})
    seed: int = field(default=0, metadata={"help": "initialisation and data order"})

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}: use one of {', '.join(LOSSES)}")
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be 'heads' (frozen features, the CPU path) or 'finetune', "
                             f"got {self.model_type!r}")
        if self.head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {self.head!r}")
        for name in ("epochs", "batch_size", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def preference_metrics(delta: np.ndarray, bins: int = 10) -> dict[str, float]:
    """Accuracy (Δ > 0), mean margin (mean Δ) and expected calibration error of σ(Δ) as the
    probability that the labelled-better response wins (confidence max(p, 1 − p), ``bins``
    equal-width bins over [0.5, 1])."""
    delta = np.asarray(delta, dtype=np.float64)
    probability = 1 / (1 + np.exp(-delta))
    confidence = np.maximum(probability, 1 - probability)
    correct = (delta > 0).astype(float)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    ece = sum(abs(correct[which == b].mean() - confidence[which == b].mean()) * np.mean(which == b)
              for b in range(bins) if np.any(which == b))
    return {"accuracy": float(correct.mean()), "mean_margin": float(delta.mean()), "calibration_error": float(ece),
            "pairs": int(delta.size)}


def train_head(chosen: np.ndarray, rejected: np.ndarray, config: RewardTrainConfig = RewardTrainConfig(), *,
               margin: np.ndarray | None = None, soft_label: np.ndarray | None = None, weight: np.ndarray | None = None,
               evals: dict[str, tuple[np.ndarray, np.ndarray]] | None = None, eval_every: int = 1,
               progress: bool = False) -> tuple[HeadRewardModel, dict[str, Any]]:
    """Train a reward head on features ``chosen``/``rejected`` ``(n_pairs, dim)`` with
    ``config.loss`` (reading ``margin`` / ``soft_label``, each ``(n_pairs,)``); ``weight``
    (``(n_pairs,)``, e.g. 0 for dropped pairs) scales each pair's loss.

    ``evals`` maps a name to test features ``(chosen, rejected)``, evaluated every
    ``eval_every`` epochs. Returns the model and the curves
    ``{"epochs": [...], "train_loss": [...], "eval": {name: [metrics, ...]}}``.
    """
    import torch
    from tqdm.auto import tqdm

    n_pairs, dim = chosen.shape
    if n_pairs == 0:
        raise ValueError("no training pairs")
    stacked = np.vstack([chosen, rejected])
    mean = stacked.mean(axis=0)
    scale = stacked.std(axis=0)
    scale = np.where(scale > 1e-8 * max(float(scale.max()), 1e-30), scale, 1.0)
    to_tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    chosen_t, rejected_t = to_tensor((chosen - mean) / scale), to_tensor((rejected - mean) / scale)
    margin_t = None if margin is None else to_tensor(margin)
    soft_t = None if soft_label is None else to_tensor(soft_label)
    weight_t = torch.ones(n_pairs) if weight is None else to_tensor(weight)
    for name, values in (("margin", margin_t), ("soft_label", soft_t), ("weight", weight_t)):
        if values is not None and (values.shape != (n_pairs,) or not torch.isfinite(values).all()):
            raise ValueError(f"{name} must hold one finite number per pair ({n_pairs}), got shape {tuple(values.shape)}")

    module = build_head(config.head, dim, hidden=config.hidden, seed=config.seed)
    optimizer = torch.optim.AdamW(module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    model = HeadRewardModel(config.features, mean, scale, module, training=to_record(config))
    curves: dict[str, Any] = {"epochs": [], "train_loss": [], "eval": {name: [] for name in (evals or {})}}
    total_weight = float(weight_t.sum()) or 1.0
    for epoch in tqdm(range(1, config.epochs + 1), desc="training reward head", disable=not progress):
        module.train()
        order = torch.randperm(n_pairs, generator=generator)
        epoch_loss = 0.0
        for start in range(0, n_pairs, config.batch_size):
            index = order[start:start + config.batch_size]
            delta = module(chosen_t[index]) - module(rejected_t[index])
            losses = preference_loss(delta, config.loss, None if margin_t is None else margin_t[index],
                                     None if soft_t is None else soft_t[index])
            batch_weight = weight_t[index]
            loss = (losses * batch_weight).sum() / batch_weight.sum().clamp_min(1e-12)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_loss += float((losses * batch_weight).sum().detach()) / total_weight
        module.eval()
        if epoch % eval_every == 0 or epoch == config.epochs:
            curves["epochs"].append(epoch)
            curves["train_loss"].append(epoch_loss)
            for name, (test_chosen, test_rejected) in (evals or {}).items():
                delta = model.reward_of_features(test_chosen) - model.reward_of_features(test_rejected)
                curves["eval"][name].append(preference_metrics(delta))
    return model, curves


def pair_matrix(pairs, config: RewardTrainConfig, *, cache_dir=None, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(chosen, rejected)``, each ``(n_pairs, dim)``, of every view of
    ``config.features`` side by side, for the rows of ``pairs`` (valid rows only: see
    :func:`usable_pairs`)."""
    views = feature_views(pairs, config.features, cache_dir=cache_dir, progress=progress)
    return np.hstack([c for c, _ in views]), np.hstack([r for _, r in views])


def usable_pairs(pairs):
    """The rows a reward model trains on: valid rows, minus rows a denoise export marks
    ``drop`` or ``invalid``."""
    valid, _ = split_invalid(pairs)
    if "action" in valid.column_names:
        valid = valid.select([i for i, action in enumerate(valid["action"]) if action not in ("drop", "invalid")])
    return valid


def train_reward_model(pairs, config: RewardTrainConfig = RewardTrainConfig(), *, evals: dict[str, Any] | None = None,
                       eval_every: int = 5, cache_dir=None, progress: bool = True) -> tuple[HeadRewardModel, dict[str, Any]]:
    """Train one reward head on ``pairs`` (from :func:`rmclean.load_pairs`; a denoise
    export read back carries the ``margin`` and ``soft_label`` columns its loss reads) and
    evaluate it on ``evals`` (name -> pairs) every ``eval_every`` epochs.

    Returns the model and the metrics: ``{"eval": {name: {"accuracy", "mean_margin",
    "calibration_error", "pairs"}}`` (final values), ``"curves"``, ``"train"``, ``"config"``.
    """
    train = usable_pairs(pairs)
    if len(train) == 0:
        raise ValueError("no usable training pairs (every row is invalid or dropped)")

    def column(name: str) -> np.ndarray | None:
        if name not in train.column_names:
            return None
        values = np.array([np.nan if v is None else v for v in train[name]], dtype=np.float64)
        if not np.all(np.isfinite(values)):
            row = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ValueError(f"column '{name}' is empty or not a number at {train['source'][row]} row {train['row'][row]}")
        return values

    reads_margin, reads_soft_label = LOSSES[config.loss]
    margin = column("margin") if reads_margin else None
    soft_label = column("soft_label") if reads_soft_label else None
    test_pairs = {}
    for name, candidate in (evals or {}).items():
        test_pairs[name] = usable_pairs(candidate)
        if len(test_pairs[name]) == 0:
            raise ValueError(f"eval set {name!r} has no valid pairs")
    if config.model_type == "finetune":
        return _finetune(train, config, test_pairs, margin, soft_label, progress)
    chosen, rejected = pair_matrix(train, config, cache_dir=cache_dir, progress=progress)
    test_sets = {name: pair_matrix(valid, config, cache_dir=cache_dir, progress=progress)
                 for name, valid in test_pairs.items()}
    model, curves = train_head(chosen, rejected, config,
                               margin=margin, soft_label=soft_label, evals=test_sets, eval_every=eval_every,
                               progress=progress)
    train_delta = model.reward_of_features(chosen) - model.reward_of_features(rejected)
    metrics = {
        "eval": {name: values[-1] for name, values in curves["eval"].items()},
        "train": {**preference_metrics(train_delta), "final_loss": curves["train_loss"][-1]},
        "curves": curves,
        "config": to_record(config),
    }
    model.metadata.update({"train_pairs": len(train), "eval": metrics["eval"]})
    return model, metrics


def _finetune(train, config: RewardTrainConfig, test_pairs: dict[str, Any], margin, soft_label, progress: bool):
    """``model_type="finetune"``: the whole backbone through ``accelerate``; returns the model
    (an :class:`~rmclean.members.reward_models.HFRewardModel` over a temporary folder until saved) and
    metrics."""
    import tempfile

    from ..features.backbones import model_folder, resolve_backbone
    from ..features.views import scoring_texts
    from ..members.finetune import FinetuneConfig, finetune_reward_model

    chosen_texts, rejected_texts = scoring_texts(train)
    tokenizer, network = finetune_reward_model(
        str(model_folder(resolve_backbone(config.features.backbone))), chosen_texts, rejected_texts,
        FinetuneConfig(epochs=config.epochs, learning_rate=config.learning_rate, batch_size=config.batch_size,
                       max_length=config.features.max_length, seed=config.seed),
        progress=progress, loss=config.loss, margin=margin, soft_label=soft_label)
    folder = Path(tempfile.mkdtemp(prefix="rmclean-reward-"))
    network.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_json(folder / FINETUNED_FILE, {"max_length": config.features.max_length, "config": to_record(config)}, indent=None)
    model = HFRewardModel(str(folder), max_length=config.features.max_length)
    final = {name: preference_metrics(pair_deltas(model, pairs)) for name, pairs in test_pairs.items()}
    metrics = {"eval": final, "train": preference_metrics(pair_deltas(model, train)),
               "curves": {"epochs": [config.epochs], "train_loss": [], "eval": {n: [m] for n, m in final.items()}},
               "config": to_record(config)}
    return model, metrics


TRAINING_OUTPUTS = ("model", "metrics.json", "plots")  # what `rmclean train-rm` writes into its folder


def write_training_report(model: HeadRewardModel | HFRewardModel, metrics: dict[str, Any],
                          folder: str | os.PathLike, data: str | None = None) -> list[Path]:
    """Write ``model/``, ``metrics.json`` (SPEC 4: final accuracy and mean margin per eval
    set, and the curves) and ``plots/curves.png`` into ``folder`` as one unit
    (:func:`rmclean.files.output_folder`)."""
    from .. import plots

    folder = Path(folder)
    with output_folder(folder, owned=TRAINING_OUTPUTS, produced_by="rmclean train-rm") as staging:
        model.save(staging / "model")
        write_json(staging / "metrics.json", {"data": data, **metrics})
        plots.save(plots.training_curves(metrics["curves"]), staging / "plots" / "curves.png")
    if isinstance(model, HFRewardModel):
        model.folder = str(folder / "model")  # it reads from its saved copy
    return [folder / "model", folder / "metrics.json", folder / "plots" / "curves.png"]


def metrics_text(config: RewardTrainConfig, metrics: dict[str, Any]) -> str:
    """The short human report of ``rmclean train-rm``."""
    lines = [f"trained a {config.model_type} reward model ({config.loss} loss) on {metrics['train']['pairs']:,} pairs: "
             f"train accuracy {metrics['train']['accuracy']:.3f}"]
    lines += [f"  {name}: accuracy {m['accuracy']:.3f}, mean margin {m['mean_margin']:.3f}, "
              f"calibration error {m['calibration_error']:.3f} ({m['pairs']:,} pairs)" for name, m in metrics["eval"].items()]
    return "\n".join(lines)


__all__ = ["RewardTrainConfig", "load_reward_model", "metrics_text", "pair_matrix", "preference_metrics", "train_head",
           "train_reward_model", "usable_pairs", "write_training_report"]
