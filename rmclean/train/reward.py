"""The bundled reward-model trainer: one reward head on cached frozen-backbone features,
trained with any loss of :mod:`rmclean.train.losses` (the CPU path).

A :class:`HeadRewardModel` scores a response given its prompt, ``reward(prompts,
responses)``, from the same feature views the scorer uses (``transcript``,
``response+prompt``, ...), standardized, through a linear or one-hidden-layer MLP head.
It saves to a folder (``reward_model.json`` + ``head.pt``) that :meth:`HeadRewardModel.load`,
``rmclean score --reward-model DIR`` and the PPO trainer read back.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_path, write_text
from ..score import ScoreConfig, response_features
from .losses import LOSSES, preference_loss

MODEL_FILE = "reward_model.json"
FINETUNED_FILE = "rmclean_reward.json"  # settings next to a fine-tuned HF reward model
WEIGHTS_FILE = "head.pt"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class RewardTrainConfig:
    """How to train one reward model. ``mode="heads"`` (default, CPU): a head on frozen
    features of ``views`` (the scorer's feature views, each may name its backbone,
    ``"smollm2:transcript"``), concatenated and standardized; ``weight_decay`` is AdamW's L2
    pull, playing the role of the scorer's strong regularisation (defaults measured on hh-rlhf:
README, "Training reward models"). ``mode="finetune"`` (GPU):
    the whole ``backbone`` with a one-logit head, through ``accelerate``, for ``epochs`` with
    ``learning_rate`` and ``batch_size`` (``head``, ``hidden``, ``views`` and
    ``weight_decay`` do not apply)."""

    loss: str = "bt"
    mode: str = "heads"
    backbone: str = "minilm"
    views: tuple[str, ...] = ("transcript", "response+prompt")
    head: str = "linear"
    hidden: int = 128
    epochs: int = 10
    learning_rate: float = 1e-3
    weight_decay: float = 10.0
    batch_size: int = 256
    max_length: int = 256
    precision: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "views", tuple(self.views))
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}: use one of {', '.join(LOSSES)}")
        if self.mode not in ("heads", "finetune"):
            raise ValueError(f"mode must be 'heads' (frozen features, the CPU path) or 'finetune', got {self.mode!r}")
        if self.head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {self.head!r}")
        for name in ("epochs", "batch_size", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        self.score_config()  # validates views, backbone names and precision

    def score_config(self) -> ScoreConfig:
        """The feature settings, as the scorer reads them."""
        return ScoreConfig(backbone=self.backbone, views=self.views, max_length=self.max_length,
                           precision=self.precision)


@dataclass
class HeadRewardModel:
    """A reward head over frozen features: ``reward(prompts, responses)`` -> ``(n,)`` rewards
    (logit scale: σ(r_a − r_b) is the modelled probability that a beats b)."""

    config: RewardTrainConfig
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    module: Any  # torch.nn.Module mapping standardized features (n, dim) -> (n,)
    metadata: dict[str, Any] = field(default_factory=dict)

    def features(self, prompts: list[str], responses: list[str], *, cache_dir=None, progress: bool = False) -> np.ndarray:
        """Raw (unstandardized) features of each (prompt, response), ``(n, dim)``."""
        return np.hstack([
            response_features(list(prompts), list(responses), self.config.score_config(), view=view,
                              cache_dir=cache_dir, progress=progress)[0]
            for view in self.config.views
        ])

    def reward_of_features(self, features: np.ndarray) -> np.ndarray:
        import torch

        standardized = (features - self.feature_mean) / self.feature_scale
        with torch.inference_mode():
            return self.module(torch.as_tensor(standardized, dtype=torch.float32)).double().numpy()

    def reward(self, prompts: list[str] | str, responses: list[str] | str, *, cache_dir=None,
               progress: bool = False) -> np.ndarray:
        """Reward of each response to its prompt, shape ``(n,)`` (a single pair of strings
        gives shape ``(1,)``)."""
        if isinstance(prompts, str) and isinstance(responses, str):
            prompts, responses = [prompts], [responses]
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return self.reward_of_features(self.features(prompts, responses, cache_dir=cache_dir, progress=progress))

    def save(self, folder: str | os.PathLike) -> Path:
        import torch

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / WEIGHTS_FILE) as partial:
            torch.save(self.module.state_dict(), partial)
        description = {
            "format": "rmclean-head-reward-model", "version": FORMAT_VERSION, "config": asdict(self.config),
            "feature_mean": self.feature_mean.tolist(), "feature_scale": self.feature_scale.tolist(),
            "metadata": self.metadata,
        }
        write_text(folder / MODEL_FILE, json.dumps(description) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "HeadRewardModel":
        import torch

        folder = Path(folder)
        if not (folder / MODEL_FILE).is_file():
            raise FileNotFoundError(f"{folder} holds no {MODEL_FILE}: not a reward model saved by rmclean train-rm")
        description = json.loads((folder / MODEL_FILE).read_text())
        if description.get("format") != "rmclean-head-reward-model" or description.get("version") != FORMAT_VERSION:
            raise ValueError(f"{folder / MODEL_FILE} is not a version-{FORMAT_VERSION} rmclean reward model")
        config = RewardTrainConfig(**description["config"])
        mean = np.asarray(description["feature_mean"])
        module = build_head(config, mean.size)
        module.load_state_dict(torch.load(folder / WEIGHTS_FILE, weights_only=True))
        module.eval()
        return cls(config, mean, np.asarray(description["feature_scale"]), module, description.get("metadata", {}))


@dataclass
class FinetunedRewardModel:
    """A fine-tuned sequence-classification reward model (an HF folder): ``reward(prompts,
    responses)`` -> ``(n,)``, reading each response after its dialogue, left-truncated."""

    folder: str
    max_length: int = 256
    batch_size: int = 16

    def reward(self, prompts: list[str] | str, responses: list[str] | str, *, progress: bool = False, **_) -> np.ndarray:
        from ..members.reward_models import rewards
        from ..score import scoring_text

        if isinstance(prompts, str) and isinstance(responses, str):
            prompts, responses = [prompts], [responses]
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        tokenizer, model = self._loaded
        texts = [scoring_text(p, r) for p, r in zip(prompts, responses)]
        return rewards(tokenizer, model, texts, self.max_length, self.batch_size, progress)

    @functools.cached_property
    def _loaded(self):
        """``(tokenizer, model)``, read from ``folder`` once."""
        from ..members.reward_models import load_reward_model

        return load_reward_model(self.folder)


def pair_deltas(model: "HeadRewardModel | FinetunedRewardModel", pairs, *, cache_dir=None,
                progress: bool = False) -> np.ndarray:
    """r(chosen) − r(rejected) of a trained reward model on ``pairs``, shape ``(n_pairs,)``,
    in one reward pass over both responses."""
    prompts = list(pairs["prompt"])
    rewards = model.reward(prompts + prompts, list(pairs["chosen"]) + list(pairs["rejected"]),
                           cache_dir=cache_dir, progress=progress)
    return rewards[: len(prompts)] - rewards[len(prompts):]


def load_reward_model(folder: str | os.PathLike) -> "HeadRewardModel | FinetunedRewardModel":
    """A reward model saved by ``rmclean train-rm`` (either mode), ready for ``reward(prompts,
    responses)``."""
    folder = Path(folder).expanduser()
    if is_head_reward_model(folder):
        return HeadRewardModel.load(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds neither {MODEL_FILE} nor a Hugging Face config.json: "
                                "not a reward model saved by rmclean train-rm")
    settings = folder / FINETUNED_FILE
    max_length = json.loads(settings.read_text())["max_length"] if settings.is_file() else 256
    return FinetunedRewardModel(str(folder), max_length=max_length)


def is_head_reward_model(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder saved by :meth:`HeadRewardModel.save`."""
    return (Path(path).expanduser() / MODEL_FILE).is_file()


def build_head(config: RewardTrainConfig, dim: int):
    """The head: standardized features ``(n, dim)`` -> rewards ``(n,)``."""
    import torch

    torch.manual_seed(config.seed)
    if config.head == "linear":
        layers = torch.nn.Linear(dim, 1)
    else:
        layers = torch.nn.Sequential(torch.nn.Linear(dim, config.hidden), torch.nn.GELU(),
                                     torch.nn.Linear(config.hidden, 1))
    return torch.nn.Sequential(layers, torch.nn.Flatten(0))


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

    module = build_head(config, dim)
    optimizer = torch.optim.AdamW(module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    model = HeadRewardModel(config, mean, scale, module)
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
    """Features ``(chosen, rejected)``, each ``(n_pairs, dim)``, of every view of ``config``
    side by side, for the rows of ``pairs`` (valid rows only: see :func:`usable_pairs`)."""
    from ..score import pair_features

    views = [pair_features(pairs, config.score_config(), view=view, cache_dir=cache_dir, progress=progress)[:2]
             for view in config.views]
    return np.hstack([c for c, _ in views]), np.hstack([r for _, r in views])


def usable_pairs(pairs):
    """The rows a reward model trains on: valid rows, minus rows a denoise export marks
    ``drop`` or ``invalid``."""
    from ..data.pairs import split_invalid

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

    margin = column("margin") if "margin" in config.loss else None
    soft_label = column("soft_label") if config.loss.startswith("soft-label") else None
    test_pairs = {}
    for name, candidate in (evals or {}).items():
        test_pairs[name] = usable_pairs(candidate)
        if len(test_pairs[name]) == 0:
            raise ValueError(f"eval set {name!r} has no valid pairs")
    if config.mode == "finetune":
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
        "config": asdict(config),
    }
    model.metadata.update({"train_pairs": len(train), "eval": metrics["eval"]})
    return model, metrics


def _finetune(train, config: RewardTrainConfig, test_pairs: dict[str, Any], margin, soft_label, progress: bool):
    """``mode="finetune"``: the whole backbone through ``accelerate``; returns the model
    (a :class:`FinetunedRewardModel` over a temporary folder until saved) and metrics."""
    import tempfile

    from ..features.backbones import model_folder, resolve_backbone
    from ..members.finetune import FinetuneConfig
    from ..members.finetune import train_reward_model as finetune_reward_model
    from ..score import scoring_texts

    chosen_texts, rejected_texts = scoring_texts(train)
    tokenizer, network = finetune_reward_model(
        str(model_folder(resolve_backbone(config.backbone))), chosen_texts, rejected_texts,
        FinetuneConfig(epochs=config.epochs, learning_rate=config.learning_rate, batch_size=config.batch_size,
                       max_length=config.max_length, seed=config.seed),
        progress=progress, loss=config.loss, margin=margin, soft_label=soft_label)
    folder = Path(tempfile.mkdtemp(prefix="rmclean-reward-"))
    network.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_text(folder / FINETUNED_FILE, json.dumps({"max_length": config.max_length, "config": asdict(config)}) + "\n")
    model = FinetunedRewardModel(str(folder), max_length=config.max_length)
    final = {name: preference_metrics(pair_deltas(model, pairs)) for name, pairs in test_pairs.items()}
    metrics = {"eval": final, "train": preference_metrics(pair_deltas(model, train)),
               "curves": {"epochs": [config.epochs], "train_loss": [], "eval": {n: [m] for n, m in final.items()}},
               "config": asdict(config)}
    return model, metrics


def save_reward_model(model: "HeadRewardModel | FinetunedRewardModel", folder: str | os.PathLike) -> Path:
    """Save either kind of trained reward model to ``folder`` (replacing what is there)."""
    import shutil

    folder = Path(folder)
    if isinstance(model, HeadRewardModel):
        return model.save(folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(model.folder, partial)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    model.folder = str(folder)
    return folder


def write_training_report(model: "HeadRewardModel | FinetunedRewardModel", metrics: dict[str, Any],
                          folder: str | os.PathLike, data: str | None = None) -> list[Path]:
    """Write ``model/``, ``metrics.json`` (SPEC 4: final accuracy and mean margin per eval
    set, and the curves) and ``plots/curves.png`` into ``folder``."""
    from .. import plots

    folder = Path(folder)
    (folder / "plots").mkdir(parents=True, exist_ok=True)
    written = [save_reward_model(model, folder / "model")]
    written.append(write_text(folder / "metrics.json", json.dumps({"data": data, **metrics}, indent=2) + "\n"))
    plots.save(plots.training_curves(metrics["curves"]), folder / "plots" / "curves.png")
    written.append(folder / "plots" / "curves.png")
    return written


__all__ = ["FinetunedRewardModel", "HeadRewardModel", "RewardTrainConfig", "build_head", "is_head_reward_model",
           "load_reward_model", "pair_deltas", "pair_matrix", "preference_metrics", "save_reward_model", "train_head",
           "train_reward_model", "usable_pairs", "write_training_report"]
