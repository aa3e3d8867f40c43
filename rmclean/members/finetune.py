"""Fully fine-tuned ensemble members (the GPU path), through ``accelerate``.

Each member is the backbone with a one-logit sequence-classification head, fine-tuned with
the Bradley–Terry loss (or, for a single trained reward model, any loss of
:mod:`rmclean.train.losses`) on its fold's training pairs; members differ by seed (head
initialisation, data order, optional bootstrap). Dropout is off (training runs in eval
mode): on CPU, dropout in train mode pushes attention onto a path twice as slow, and it adds
noise the ensemble does not need. Data loaders go through ``Accelerator.prepare``, so
``accelerate launch --multi_gpu --num_processes N -m rmclean score ... --member-type finetune`` spreads each
member over several GPUs.
On CPU this is slow (2–8 pairs/s for MiniLM): use heads there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .heads import fold_assignment
from .reward_models import prepare, rewards


@dataclass(frozen=True)
class FinetuneConfig:
    """Training of one fine-tuned member; ``max_steps`` caps the steps per member."""

    members: int = 10
    folds: int = 5
    epochs: int = 1
    learning_rate: float = 1e-5
    batch_size: int = 8
    max_length: int = 256
    max_steps: int | None = None
    bootstrap: bool = False
    seed: int = 0


def finetune_margins(model_folder: str, chosen_texts: list[str], rejected_texts: list[str],
                     config: FinetuneConfig, progress: bool = False) -> np.ndarray:
    """Per-member margins ``(n_pairs, members)`` from fine-tuned members; with ``folds > 1``
    each pair is scored by the members of the fold that did not train on it."""
    n_pairs = len(chosen_texts)
    folds = fold_assignment(n_pairs, config.folds, config.seed)
    margins = np.zeros((n_pairs, config.members))
    for k in range(config.folds):
        train = np.flatnonzero(folds != k) if config.folds > 1 else np.arange(n_pairs)
        held_out = np.flatnonzero(folds == k) if config.folds > 1 else np.arange(n_pairs)
        for m in range(config.members):
            rng = np.random.default_rng([config.seed, 4, k, m])
            order = rng.choice(train, size=train.size) if config.bootstrap else rng.permutation(train)
            tokenizer, model = _train_member(model_folder, chosen_texts, rejected_texts, order, config,
                                             seed=int(rng.integers(2**31)), progress=progress)
            scored = rewards(tokenizer, model, [chosen_texts[i] for i in held_out] + [rejected_texts[i] for i in held_out],
                             config.max_length, config.batch_size)
            margins[held_out, m] = scored[: held_out.size] - scored[held_out.size:]
    return margins


def _load(model_folder: str, seed: int):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)  # the new reward head's initialisation
    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    model = AutoModelForSequenceClassification.from_pretrained(model_folder, num_labels=1)
    prepare(tokenizer, model)
    return tokenizer, model


def _train_member(model_folder, chosen_texts, rejected_texts, order, config: FinetuneConfig, seed: int, progress: bool,
                  loss_name: str = "bt", margin: np.ndarray | None = None, soft_label: np.ndarray | None = None):
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from ..train.losses import preference_loss

    tokenizer, model = _load(model_folder, seed)
    accelerator = Accelerator()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)

    def column(values, index):
        return None if values is None else torch.as_tensor(np.asarray(values)[index], dtype=torch.float32,
                                                           device=accelerator.device)

    loader = DataLoader(order.tolist(), batch_size=config.batch_size, shuffle=False,
                        collate_fn=lambda index: (*_encode_pairs(tokenizer, chosen_texts, rejected_texts, index, config),
                                                  index))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    model.eval()  # dropout off; gradients still flow
    steps = 0
    total = config.epochs * len(loader) if config.max_steps is None else min(config.max_steps, config.epochs * len(loader))
    with tqdm(total=total, desc="fine-tuning member", disable=not progress) as bar:
        for _ in range(config.epochs):
            for chosen, rejected, index in loader:
                if steps >= total:
                    break
                delta = model(**chosen).logits[:, 0] - model(**rejected).logits[:, 0]
                loss = preference_loss(delta, loss_name, column(margin, index), column(soft_label, index)).mean()
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
                steps += 1
                bar.update(1)
    return tokenizer, accelerator.unwrap_model(model)


def _encode_pairs(tokenizer, chosen_texts, rejected_texts, index, config: FinetuneConfig):
    def encode(texts):
        return tokenizer([texts[i] for i in index], truncation=True, max_length=config.max_length,
                         padding=True, return_tensors="pt")

    return encode(chosen_texts), encode(rejected_texts)


def finetune_reward_model(model_folder: str, chosen_texts: list[str], rejected_texts: list[str],
                       config: FinetuneConfig = FinetuneConfig(), progress: bool = False, *, loss: str = "bt",
                       margin: np.ndarray | None = None, soft_label: np.ndarray | None = None):
    """Fine-tune one reward model on all pairs with ``loss`` (see :mod:`rmclean.train.losses`;
    ``margin`` / ``soft_label`` per pair where it reads them); returns ``(tokenizer, model)``,
    which ``save_pretrained`` writes as a folder that ``--reward-model`` (and any HF code) loads."""
    order = np.random.default_rng([config.seed, 5]).permutation(len(chosen_texts))
    tokenizer, model = _train_member(model_folder, chosen_texts, rejected_texts, order, config,
                                     seed=config.seed, progress=progress, loss_name=loss, margin=margin,
                                     soft_label=soft_label)
    return tokenizer, model
