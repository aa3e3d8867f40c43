"""Conversations between formats: hh-rlhf transcripts (``"\\n\\nHuman: …\\n\\nAssistant: …"``, the
format rmclean's reward models read), chat messages (``[{"role", "content"}]``, what a policy's chat
template renders) and chat-template text (ChatML, Llama 3), so a reward model and a policy never
need to share a tokenizer or a format.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .formats import HH_ASSISTANT, render_messages

HH_HUMAN = "\n\nHuman:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant|System): ?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant", "System": "system"}
_CHATML = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>|$)", re.S)
_LLAMA3 = re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)(?:<\|eot_id\|>|$)", re.S)
_SPECIAL = re.compile(r"<\|[a-z_]+\|>|</s>|<s>|\[/?INST\]")


def hh_messages(prompt: str) -> list[dict[str, str]]:
    """The turns of an hh prompt as chat messages, without the trailing empty ``Assistant:`` cue;
    a prompt without hh markers is one user message."""
    if HH_ASSISTANT not in prompt and HH_HUMAN not in prompt:
        return [{"role": "user", "content": prompt.strip()}]
    parts = _HH_TURN.split(prompt)  # [before, role, text, role, text, ...]
    messages = [{"role": _HH_ROLES[role], "content": text.strip()} for role, text in zip(parts[1::2], parts[2::2])]
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


def first_turn(prompt: str) -> str:
    """An hh prompt cut to its first human turn (``"\\n\\nHuman: …\\n\\nAssistant:"``); other
    prompts are returned as they are."""
    messages = hh_messages(prompt)
    if HH_ASSISTANT not in prompt or not messages or messages[0]["role"] != "user":
        return prompt
    return render_messages(messages[:1]) + HH_ASSISTANT


def messages_to_hh(messages: Sequence[Mapping[str, Any]]) -> str:
    """Chat messages as an hh prompt ending in the ``Assistant:`` cue."""
    return render_messages(messages) + HH_ASSISTANT


def template_messages(text: str) -> list[dict[str, str]] | None:
    """The messages of chat-template text (ChatML as SmolLM2 and Qwen write it, or Llama 3's
    headers), the last one possibly unfinished; ``None`` for text in neither format."""
    for pattern in (_CHATML, _LLAMA3):
        found = pattern.findall(text)
        if found:
            return [{"role": role, "content": content.strip()} for role, content in found]
    return None


def strip_special(text: str) -> str:
    """``text`` without chat-template control tokens (``<|im_end|>``, ``<|eot_id|>``, ``</s>``, ...)."""
    return _SPECIAL.sub("", text).strip()


def to_hh(prompt: str | Sequence[Mapping[str, Any]], response: str | Sequence[Mapping[str, Any]] | None = None
          ) -> tuple[str, str]:
    """``(hh prompt, response)`` for a reward model from whatever an RL engine holds: an hh
    prompt, chat messages, chat-template text or a plain instruction, and a response as text or
    messages (``None``: the last assistant turn of ``prompt``). The response starts with a space,
    as hh responses do."""
    if response is None:
        prompt, response = _split_last_answer(prompt)
    if not isinstance(response, str):
        response = " ".join(str(m.get("content", "")) for m in response if m.get("role", "assistant") == "assistant")
    if not isinstance(prompt, str):
        prompt_hh = messages_to_hh([m for m in prompt if m.get("role") != "system"])
    elif HH_ASSISTANT in prompt or HH_HUMAN in prompt:
        prompt_hh = prompt if prompt.rstrip().endswith(HH_ASSISTANT.strip()) else prompt.rstrip() + HH_ASSISTANT
    else:
        messages = template_messages(prompt)
        if messages is not None:
            messages = [m for m in messages if m["role"] != "system" and (m["role"] != "assistant" or m["content"])]
            prompt_hh = messages_to_hh(messages)
        else:
            prompt_hh = messages_to_hh([{"role": "user", "content": prompt.strip()}])
    return prompt_hh, " " + strip_special(response)


def _split_last_answer(text: str | Sequence[Mapping[str, Any]]) -> tuple[Any, str]:
    """A whole conversation split into what came before the last assistant turn and that turn."""
    if not isinstance(text, str):
        messages = list(text)
        if messages and messages[-1].get("role") == "assistant":
            return messages[:-1], str(messages[-1].get("content", ""))
        return messages, ""
    if HH_ASSISTANT in text:
        cut = text.rfind(HH_ASSISTANT) + len(HH_ASSISTANT)
        return text[:cut], text[cut:]
    messages = template_messages(text)
    if messages and messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]["content"]
    return text, ""


__all__ = ["first_turn", "hh_messages", "messages_to_hh", "strip_special", "template_messages", "to_hh"]
