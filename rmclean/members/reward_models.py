"""Trained reward models, loaded for scoring: ``reward(prompts, responses)`` -> ``(n,)``.

Two kinds, one interface (what ``rmclean score --reward-model``, the trainer's evaluation and
the RL trainers call):

- :class:`HeadRewardModel`: a head on standardized frozen features of feature views (what
  ``rmclean train-rm`` trains by default), saved as ``reward_model.json`` + ``head.pt``;
- :class:`HFRewardModel`: any Hugging Face sequence-classification model with one output
  (a folder written by ``rmclean train-rm --mode finetune``, any reward model folder or Hub id),
  reading each response after its dialogue, left-truncated.

:func:`load_reward_model` tells them apart; :func:`pair_deltas` gives r(chosen) − r(rejected).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..features.backbones import BackboneError
from ..features.views import FeatureConfig, backbone_fingerprints, response_features, scoring_text
from ..files import MANIFEST, output_folder, verify_folder, write_json

MODEL_FILE = "reward_model.json"
FINETUNED_FILE = "rmclean_reward.json"  # settings next to a fine-tuned HF reward model
WEIGHTS_FILE = "head.pt"
FORMAT_VERSION = 1
HEAD_FORMAT = "rmclean-head-reward-model"
#: The trainer's settings a head model's record keeps that decide its features (the
#: embedding batch size does not change them).
FEATURE_KEYS = ("backbone", "views", "max_length", "precision", "prefix_reuse", "layer")


def _as_lists(prompts: list[str] | str, responses: list[str] | str) -> tuple[list[str], list[str]]:
    if isinstance(prompts, str) and isinstance(responses, str):
        prompts, responses = [prompts], [responses]
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return list(prompts), list(responses)


@dataclass
class HeadRewardModel:
    """A reward head over frozen features: ``reward(prompts, responses)`` -> ``(n,)`` rewards
    (logit scale: σ(r_a − r_b) is the modelled probability that a beats b). ``training`` is
    the trainer's settings as a flat record (saved as ``config``; its ``head``, ``hidden`` and
    ``seed`` rebuild the module on load)."""

    features: FeatureConfig
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    module: Any  # torch.nn.Module mapping standardized features (n, dim) -> (n,)
    training: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    backbones: dict[str, str] = field(default_factory=dict)  # {backbone: weights fingerprint} it was trained on

    def check_backbones(self) -> None:
        """Raise :class:`BackboneError` when an installed backbone's weights differ from those
        the head was trained on (``backbones``; a head that records none is not checked)."""
        if not self.backbones:
            return
        installed = backbone_fingerprints(self.features)
        for name, trained in self.backbones.items():
            if installed.get(name, trained) != trained:
                raise BackboneError(
                    f"this reward head was trained on features of {name} weights {trained}, but the {name} found now "
                    f"has weights {installed[name]}: retrain it with rmclean train-rm, or install the weights it was "
                    "trained with")

    def feature_matrix(self, prompts: list[str], responses: list[str], *, cache_dir=None,
                       progress: bool = False, store: bool = True) -> np.ndarray:
        """Raw (unstandardized) features of each (prompt, response), ``(n, dim)``."""
        self.check_backbones()
        return np.hstack([response_features(list(prompts), list(responses), self.features, view=view,
                                            cache_dir=cache_dir, progress=progress, store=store)
                          for view in self.features.views])

    def reward_of_features(self, features: np.ndarray) -> np.ndarray:
        import torch

        standardized = (features - self.feature_mean) / self.feature_scale
        with torch.inference_mode():
            return self.module(torch.as_tensor(standardized, dtype=torch.float32)).double().numpy()

    def reward(self, prompts: list[str] | str, responses: list[str] | str, *, cache_dir=None,
               progress: bool = False, store: bool = True) -> np.ndarray:
        """Reward of each response to its prompt, shape ``(n,)`` (a single pair of strings
        gives shape ``(1,)``); ``store=False`` keeps the texts' features out of the feature cache
        (a policy's samples are never seen again)."""
        prompts, responses = _as_lists(prompts, responses)
        return self.reward_of_features(self.feature_matrix(prompts, responses, cache_dir=cache_dir,
                                                           progress=progress, store=store))

    def fingerprint(self) -> str:
        """A digest of what the model computes: its standardization and its head's weights
        (rounded to 6 decimals), so two heads trained on different labels never share one."""
        digest = hashlib.sha256()
        for array in (self.feature_mean, self.feature_scale,
                      *(tensor.detach().cpu().numpy() for tensor in self.module.state_dict().values())):
            digest.update(np.asarray(array, dtype=np.float64).round(6).tobytes())
        return digest.hexdigest()[:16]

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``head.pt`` and ``reward_model.json`` (standardization, settings and the
        backbones' weight fingerprints) into ``folder`` as one unit
        (:func:`rmclean.files.output_folder`)."""
        import torch

        folder = Path(folder)
        description = {
            "format": HEAD_FORMAT, "version": FORMAT_VERSION, "config": self.training,
            "feature_mean": self.feature_mean.tolist(), "feature_scale": self.feature_scale.tolist(),
            "backbones": self.backbones or backbone_fingerprints(self.features), "metadata": self.metadata,
        }
        with output_folder(folder, owned=(WEIGHTS_FILE, MODEL_FILE), produced_by="rmclean train-rm") as staging:
            torch.save(self.module.state_dict(), staging / WEIGHTS_FILE)
            write_json(staging / MODEL_FILE, description, indent=None)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "HeadRewardModel":
        import torch

        folder = Path(folder)
        if not (folder / MODEL_FILE).is_file():
            raise FileNotFoundError(f"{folder} holds no {MODEL_FILE}: not a reward model saved by rmclean train-rm")
        verify_folder(folder, rerun="train it again with rmclean train-rm")
        description = json.loads((folder / MODEL_FILE).read_text())
        if description.get("format") != HEAD_FORMAT or description.get("version") != FORMAT_VERSION:
            raise ValueError(f"{folder / MODEL_FILE} is not a version-{FORMAT_VERSION} rmclean reward model")
        training = description["config"]
        features = FeatureConfig(**{key: training[key] for key in FEATURE_KEYS if key in training})
        mean = np.asarray(description["feature_mean"])
        module = build_head(training.get("head", "linear"), mean.size, hidden=training.get("hidden", 128),
                            seed=training.get("seed", 0))
        module.load_state_dict(torch.load(folder / WEIGHTS_FILE, weights_only=True))
        module.eval()
        return cls(features, mean, np.asarray(description["feature_scale"]), module, training,
                   description.get("metadata", {}), description.get("backbones", {}))


def build_head(head: str, dim: int, *, hidden: int = 128, seed: int = 0):
    """A reward head: standardized features ``(n, dim)`` -> rewards ``(n,)``; ``head`` is
    ``linear`` or ``mlp`` (one hidden layer of ``hidden`` units), initialised from ``seed``."""
    import torch

    torch.manual_seed(seed)
    if head == "linear":
        layers = torch.nn.Linear(dim, 1)
    else:
        layers = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))
    return torch.nn.Sequential(layers, torch.nn.Flatten(0))


@dataclass
class HFRewardModel:
    """A Hugging Face sequence-classification reward model (a folder or a Hub id, one output):
    ``reward(prompts, responses)`` -> ``(n,)``, reading each response after its dialogue,
    left-truncated to ``max_length`` tokens, in batches of ``batch_size`` similar lengths."""

    folder: str
    max_length: int = 256
    batch_size: int = 16

    def reward(self, prompts: list[str] | str, responses: list[str] | str, *, progress: bool = False, **_) -> np.ndarray:
        prompts, responses = _as_lists(prompts, responses)
        tokenizer, model = self._loaded
        texts = [scoring_text(p, r) for p, r in zip(prompts, responses)]
        return rewards(tokenizer, model, texts, self.max_length, self.batch_size, progress)

    def save(self, folder: str | os.PathLike) -> Path:
        """Copy the model folder to ``folder`` as one unit (:func:`rmclean.files.output_folder`:
        replacing an earlier copy); the model reads from it."""
        folder = Path(folder)
        owned = [entry.name for entry in Path(self.folder).iterdir()]
        with output_folder(folder, owned=owned, produced_by="rmclean train-rm") as staging:
            shutil.copytree(self.folder, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MANIFEST))
        self.folder = str(folder)
        return folder

    @functools.cached_property
    def _loaded(self):
        """``(tokenizer, model)``, read from ``folder`` once."""
        return load_sequence_classifier(self.folder)


def load_reward_model(name_or_path: str | os.PathLike, *, max_length: int | None = None
                      ) -> HeadRewardModel | HFRewardModel:
    """A trained reward model ready for ``reward(prompts, responses)``: a ``rmclean train-rm``
    output folder or its ``model/`` (either mode), any HF reward model folder, or a Hub id (loaded at its
    first use). ``max_length`` sets an HF model's token limit (default: what a fine-tuned
    folder records, else 256)."""
    path = Path(name_or_path).expanduser()
    if (path / "model").is_dir() and (path / "metrics.json").is_file():  # a train-rm output folder
        verify_folder(path, rerun="train it again with rmclean train-rm")
        path = path / "model"
    if is_head_reward_model(path):
        return HeadRewardModel.load(path)
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds neither {MODEL_FILE} nor a Hugging Face config.json: "
                                "not a reward model saved by rmclean train-rm")
    settings = path / FINETUNED_FILE
    recorded = json.loads(settings.read_text())["max_length"] if settings.is_file() else 256
    return HFRewardModel(str(path) if path.exists() else str(name_or_path), max_length=max_length or recorded)


def as_scorer(reward_model: Any, *, cache_dir=None):
    """``f(prompts, responses) -> rewards`` of a reward model (either kind), any object with
    ``reward(prompts, responses)``, or a callable of those arguments. A head model's scorer keeps
    the texts' features out of the feature cache: an RL engine's samples are never seen again."""
    if isinstance(reward_model, HeadRewardModel):
        return functools.partial(reward_model.reward, cache_dir=cache_dir, store=False)
    return reward_model.reward if hasattr(reward_model, "reward") else reward_model


def is_head_reward_model(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder saved by :meth:`HeadRewardModel.save`."""
    return (Path(path).expanduser() / MODEL_FILE).is_file()


def pair_deltas(model: HeadRewardModel | HFRewardModel, pairs, *, cache_dir=None,
                progress: bool = False) -> np.ndarray:
    """r(chosen) − r(rejected) of a trained reward model on ``pairs``, shape ``(n_pairs,)``,
    in one reward pass over both responses."""
    prompts = list(pairs["prompt"])
    scored = model.reward(prompts + prompts, list(pairs["chosen"]) + list(pairs["rejected"]),
                          cache_dir=cache_dir, progress=progress)
    return scored[: len(prompts)] - scored[len(prompts):]


def load_sequence_classifier(name_or_path: str):
    """``(tokenizer, model)`` of a one-output sequence classifier in eval mode, left
    truncation, pad token set."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = str(Path(name_or_path).expanduser()) if Path(name_or_path).expanduser().exists() else name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForSequenceClassification.from_pretrained(source)
    except Exception as exc:
        raise BackboneError(f"cannot load reward model {name_or_path!r}: {type(exc).__name__}: {exc}") from None
    if model.config.num_labels != 1:
        raise BackboneError(
            f"{name_or_path!r} has {model.config.num_labels} output labels; a reward model has exactly one"
        )
    prepare(tokenizer, model)
    model.eval()
    return tokenizer, model


def prepare(tokenizer, model) -> None:
    """Set what batched reward scoring needs: a pad token the model knows (decoders pool
    the last non-pad token) and left truncation, which keeps the response."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.sep_token
    model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.truncation_side = "left"
    tokenizer.padding_side = "right"


def rewards(tokenizer, model, texts: list[str], max_length: int, batch_size: int = 16, progress: bool = False) -> np.ndarray:
    """Scalar reward of each text, shape ``(len(texts),)``; batches of similar length."""
    import torch
    from tqdm.auto import tqdm

    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    result = np.zeros(len(texts))
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc="reward model", disable=not progress):
            index = order[start:start + batch_size]
            encoded = tokenizer([texts[i] for i in index], truncation=True, max_length=max_length,
                                padding=True, return_tensors="pt").to(device)
            result[index] = model(**encoded).logits[:, 0].float().cpu().numpy()
    return result


__all__ = ["HFRewardModel", "HeadRewardModel", "as_scorer", "build_head", "is_head_reward_model", "load_reward_model",
           "load_sequence_classifier", "pair_deltas", "prepare", "rewards"]
