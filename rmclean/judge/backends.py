"""Where a reply comes from: an OpenAI-compatible server through the official ``openai`` client
(its own retries off) or a causal LM run here through ``transformers``; both give a
:class:`Completion`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from .config import (
    JudgeConfig,
    JudgeError,
    check_key_transport,
    max_completion_tokens,
    max_prompt_tokens,
)


@dataclass(frozen=True)
class Completion:
    """One reply with its token usage (``estimated``: upper bounds, when the server sent none)
    and why it ended: ``finish_reason`` ``"length"`` when it was cut at ``max_tokens``."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False
    finish_reason: str | None = None

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


class OpenAIBackend:
    """One chat-completions request through the official ``openai`` client (its own retries
    off: :class:`Judge` retries, so it can count, back off and honour Retry-After)."""

    def __init__(self, config: JudgeConfig, api_key: str | None):
        import openai

        check_key_transport(config.effective_base_url, api_key)  # never build a client that leaks the key
        self.config = config
        self.client = openai.OpenAI(api_key=api_key or "not-needed", base_url=config.effective_base_url,
                                    max_retries=0, timeout=config.timeout_s)
        self._use_max_completion_tokens = False

    def complete(self, messages: Sequence[dict[str, str]], seed: int) -> Completion:
        import openai

        limit = ({"max_completion_tokens": self.config.max_tokens} if self._use_max_completion_tokens
                 else {"max_tokens": self.config.max_tokens})
        try:
            response = self.client.chat.completions.create(
                model=self.config.model_name, messages=list(messages),
                temperature=self.config.sampling_temperature, **limit)
        except openai.BadRequestError as exc:  # newer OpenAI models take only max_completion_tokens
            if not self._use_max_completion_tokens and "max_completion_tokens" in str(exc):
                self._use_max_completion_tokens = True
                raise _Switched() from None
            raise
        choices = getattr(response, "choices", None)
        if not choices or getattr(choices[0], "message", None) is None:
            raise MalformedReply(f"the server answered without a choice: {str(response)[:200]}")
        text = choices[0].message.content or ""
        finish = getattr(choices[0], "finish_reason", None)
        usage = getattr(response, "usage", None)
        if usage is None or usage.prompt_tokens is None:
            return Completion(text, max_prompt_tokens(messages), max_completion_tokens(text, self.config.max_tokens),
                              estimated=True, finish_reason=finish)
        return Completion(text, int(usage.prompt_tokens), int(usage.completion_tokens or 0), finish_reason=finish)


class MalformedReply(ValueError):
    """A 200 answer that is not a chat completion."""


CHOICE_OPENING = "[["  # what a choice verdict's reply opens with: the letter is the next token


class _Switched(Exception):
    """The server asked for ``max_completion_tokens``: send the request again with it."""


class LocalBackend:
    """A causal LM from ``transformers`` answering through its chat template; sampling is
    seeded per request, so the same request gives the same reply."""

    def __init__(self, config: JudgeConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..features.backbones import BackboneError, model_folder, resolve_backbone

        try:
            backbone = resolve_backbone(config.model_name)
            if not backbone.is_decoder:
                raise JudgeError(f"local judge model {config.model_name!r} is not a causal language model")
            folder = str(model_folder(backbone))
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.model = AutoModelForCausalLM.from_pretrained(folder)
        except BackboneError as exc:
            raise JudgeError(f"local judge model: {exc}") from None
        except OSError as exc:
            raise JudgeError(f"local judge model {config.model_name!r} cannot be loaded: {exc}") from None
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise JudgeError(f"local judge model {config.model_name!r} has no chat template: use an instruct model")
        self.model.eval()
        pad = self.tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else self.tokenizer.eos_token_id
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        self._eos_ids = {int(i) for i in ([eos] if isinstance(eos, int) else list(eos or []))
                         + [self.tokenizer.eos_token_id] if i is not None}
        self.config = config
        self.positions = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)
        if config.verdict == "choice":
            self._opening = self.tokenizer.encode(CHOICE_OPENING, add_special_tokens=False)
            after = [self.tokenizer.encode(CHOICE_OPENING + letter, add_special_tokens=False) for letter in "ABC"]
            if any(ids[:-1] != self._opening for ids in after):
                raise JudgeError(f"local judge model {config.model_name!r}: its tokenizer does not write A, B and C "
                                 f"as one token each after {CHOICE_OPENING!r}, so verdict='choice' cannot read "
                                 "them; use verdict='reply'")
            self._choice_ids = [ids[-1] for ids in after]
        self._torch = torch
        self._lock = threading.Lock()

    def complete(self, messages: Sequence[dict[str, str]], seed: int) -> Completion:
        torch = self._torch
        encoded = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True,
                                                     return_tensors="pt", return_dict=True)
        input_ids = encoded["input_ids"]
        length = int(input_ids.shape[1])
        if self.config.verdict == "choice":
            return self._choose(input_ids)
        if self.positions and length + self.config.max_tokens > self.positions:
            raise PromptTooLong(f"the prompt has {length} tokens; with {self.config.max_tokens} new tokens it passes "
                                f"the model's {self.positions} positions")
        temperature = self.config.sampling_temperature
        sampling = {"do_sample": True, "temperature": temperature, "top_p": 0.95} if temperature > 0 else {"do_sample": False}
        with self._lock, torch.no_grad():
            torch.manual_seed(seed)
            output = self.model.generate(input_ids=input_ids, attention_mask=encoded.get("attention_mask"),
                                         max_new_tokens=self.config.max_tokens,
                                         pad_token_id=self._pad_id,
                                         **sampling)
        new = output[0, length:]
        ended = new.numel() > 0 and int(new[-1]) in self._eos_ids
        finish = "length" if int(new.shape[0]) >= self.config.max_tokens and not ended else "stop"
        return Completion(self.tokenizer.decode(new, skip_special_tokens=True).strip(), length, int(new.shape[0]),
                          finish_reason=finish)

    def _choose(self, input_ids) -> Completion:
        """The verdict as the likeliest of A, B, C after the reply opens with ``[[``: one forward
        pass; the reply written is the three probabilities (renormalised over A, B, C) and the verdict."""
        torch = self._torch
        opening = torch.tensor([self._opening], dtype=input_ids.dtype)
        ids = torch.cat([input_ids, opening], dim=1)
        if self.positions and ids.shape[1] > self.positions:
            raise PromptTooLong(f"the prompt has {ids.shape[1]} tokens with the verdict's opening; the model reads "
                                f"{self.positions} positions")
        with self._lock, torch.no_grad():
            logits = self.model(input_ids=ids).logits[0, -1]
        probabilities = torch.softmax(logits[self._choice_ids].double(), dim=0).tolist()
        shown = ", ".join(f"P({letter}) {p:.3f}" for letter, p in zip("ABC", probabilities))
        letter = "ABC"[max(range(3), key=probabilities.__getitem__)]
        return Completion(f"next-token choice after {CHOICE_OPENING!r}: {shown}\n[[{letter}]]",
                          int(input_ids.shape[1]), 1, finish_reason="stop")


class PromptTooLong(ValueError):
    """A prompt the local model cannot read whole."""
