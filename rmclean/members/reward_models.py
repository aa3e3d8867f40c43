"""Trained reward models as ensemble members: margins r(chosen) − r(rejected) of any Hugging
Face sequence-classification reward model (one output logit), or of an rmclean-trained one
saved the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..features.backbones import BackboneError


def load_reward_model(name_or_path: str):
    """``(tokenizer, model)`` of a reward model in eval mode, left truncation, pad token set."""
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


def reward_model_margins(name_or_path: str, chosen_texts: list[str], rejected_texts: list[str],
                         max_length: int = 512, batch_size: int = 16, progress: bool = False) -> np.ndarray:
    """r(chosen) − r(rejected) of one reward model, shape ``(n_pairs,)``."""
    tokenizer, model = load_reward_model(name_or_path)
    scored = rewards(tokenizer, model, list(chosen_texts) + list(rejected_texts), max_length, batch_size, progress)
    return scored[: len(chosen_texts)] - scored[len(chosen_texts):]
