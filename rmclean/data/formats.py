"""Row formats: turn one raw input row into a canonical preference pair.

Detected per row (see README, "Input formats"):

- **hh transcripts** (implicit prompt): ``chosen``/``rejected`` are whole dialogues
  ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``. Both are split at the last
  ``"\\n\\nAssistant:"`` they share, so ``prompt + chosen`` is the original chosen text.
- **TRL explicit prompt**: ``prompt``, ``chosen``, ``rejected`` strings.
- **TRL conversational**: message lists ``[{"role", "content"}, ...]`` (with or without a
  ``prompt`` list), rendered with :data:`ROLE_NAMES` as hh-style turns, or with a
  tokenizer's chat template when one is given.
- **MOSS-RLHF** lists of turns (``chosen: [human, assistant, ..., response]``), as in
  hh-rlhf-strength-cleaned; its strength columns are kept as extra columns.
- **Pairwise judgements**: two responses and a label (LLMEval², LLMBar, Auto-J,
  PandaLM style); ties become chosen = first response with the ``tie`` flag.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

HH_ASSISTANT = "\n\nAssistant:"

#: Speaker names used to render message lists as hh-style text ("\n\nHuman: ...").
ROLE_NAMES = {"user": "Human", "human": "Human", "assistant": "Assistant", "system": "System"}

#: Auto-detected field names, in order of preference.
PROMPT_KEYS = ("prompt", "query", "question", "instruction", "input")
RESPONSE_KEY_PAIRS = (
    ("response1", "response2"),
    ("response 1", "response 2"),
    ("response_1", "response_2"),
    ("output_1", "output_2"),
    ("response_a", "response_b"),
)
LABEL_KEYS = ("label", "human", "winner", "preference")

#: Input fields rmclean computes with (score flags and ``min_score_gap`` read the scores, top level or
#: in ``metadata``; reward-model losses read ``margin`` and ``soft_label``): when present and not
#: null they must be finite. Python's JSON reader accepts ``NaN`` and ``Infinity``, which are not JSON.
FINITE_FIELDS = ("score_chosen", "score_rejected", "margin", "soft_label")

FIRST, SECOND, TIE = "first", "second", "tie"

#: Label values understood without a ``label_map`` (compared as lower-case strings).
#: Integer labels follow the 1-based convention (1, 2; 0 = tie) except for Auto-J's
#: ``"response 1"/"response 2"`` files, which use 0, 1 and 2 = tie.
LABELS_ONE_BASED = {"1": FIRST, "2": SECOND, "0": TIE}
LABELS_ZERO_BASED = {"0": FIRST, "1": SECOND, "2": TIE}
LABEL_WORDS = {
    "a": FIRST, "b": SECOND, "c": TIE,
    "model1": FIRST, "model2": SECOND, "model_a": FIRST, "model_b": SECOND,
    "response1": FIRST, "response2": SECOND, "response 1": FIRST, "response 2": SECOND,
    "output_1": FIRST, "output_2": SECOND,
    "tie": TIE, "equal": TIE, "draw": TIE, "tie (bothbad)": TIE,
}

# Flags: reasons a pair is suspicious by construction (kept, never dropped).
FLAG_IDENTICAL = "identical_responses"
FLAG_DIFFERENT_HISTORY = "different_history"
FLAG_EMPTY_RESPONSE = "empty_response"
FLAG_TIE = "tie"
FLAG_SCORE_REVERSED = "score_reversed"
FLAG_DUPLICATE = "duplicate"
FLAG_INVALID = "invalid"


class RowError(ValueError):
    """A row that cannot become a pair; ``field`` names the offending field."""

    def __init__(self, field_name: str | None, message: str):
        super().__init__(message)
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class KeyMap:
    """Which input fields hold what. ``None`` means detect automatically."""

    prompt_key: str | None = None
    chosen_key: str = "chosen"
    rejected_key: str = "rejected"
    label_key: str | None = None
    response_keys: tuple[str, str] | None = None
    label_map: Mapping[Any, str] | None = None


#: How a row held its pair (the ``input_format`` column); exports can write it back that way.
INPUT_FORMATS = {
    "transcript": "chosen/rejected hold whole texts, the prompt implicit (hh-rlhf)",
    "prompt": "explicit prompt, chosen and rejected texts (TRL explicit prompt)",
    "messages": "lists of role/content messages (TRL conversational)",
    "turns": "lists of alternating turns (MOSS-RLHF)",
    "judgement": "two responses and a label",
}


@dataclass
class Pair:
    """A canonical pair before it gets its id (see :func:`pair_id`)."""

    prompt: str
    chosen: str
    rejected: str
    flags: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    input_format: str = "prompt"


def pair_id(prompt: str, chosen: str, rejected: str) -> str:
    """Stable 16-hex-digit id of a pair: SHA-256 of its three texts (order matters)."""
    payload = json.dumps([prompt, chosen, rejected], ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()[:16]


def convert_row(
    row: Mapping[str, Any], keys: KeyMap = KeyMap(), chat_template: Any = None, allow_empty: bool = False
) -> Pair:
    """Convert one raw row to a :class:`Pair`; raise :class:`RowError` when it cannot.

    A response field that is empty (or only white space) is an error unless
    ``allow_empty``, which keeps the pair flagged ``empty_response``. An empty final turn
    inside a transcript (hh-rlhf has a few) is always kept and flagged.
    """
    if keys.chosen_key in row or keys.rejected_key in row:
        pair, used = _from_preference(row, keys, chat_template, allow_empty)
    else:
        response_keys = keys.response_keys or _find_response_keys(row)
        if response_keys is None:
            raise RowError(
                keys.chosen_key,
                f"field '{keys.chosen_key}' is missing, and no pair of responses "
                f"({', '.join('/'.join(p) for p in RESPONSE_KEY_PAIRS)}) was found "
                f"(fields present: {_field_list(row)}); map your columns with "
                "chosen_key=/rejected_key= or response_keys=",
            )
        pair, used = _from_judgement(row, keys, response_keys, allow_empty)
    pair.extras = {**{key: value for key, value in row.items() if key not in used}, **pair.extras}
    _check_finite(pair.extras)
    _flag_scores(pair)
    if pair.chosen.strip() == pair.rejected.strip():
        pair.flags.append(FLAG_IDENTICAL)
    if not pair.chosen.strip() or not pair.rejected.strip():
        pair.flags.append(FLAG_EMPTY_RESPONSE)
    return pair


def split_hh(chosen: str, rejected: str) -> tuple[str, str, str, bool]:
    """Split two hh transcripts at the last ``"\\n\\nAssistant:"`` both share.

    Returns ``(prompt, chosen_response, rejected_response, different_history)``;
    ``different_history`` is true when the dialogues before each transcript's own last
    Assistant turn differ. Nothing is cut away: ``prompt + response`` is the input.
    """
    shared = _common_prefix(chosen, rejected)
    cut = shared.rfind(HH_ASSISTANT)
    if cut < 0:
        return "", chosen, rejected, True
    cut += len(HH_ASSISTANT)
    own_chosen = chosen[: chosen.rfind(HH_ASSISTANT)]
    own_rejected = rejected[: rejected.rfind(HH_ASSISTANT)]
    return chosen[:cut], chosen[cut:], rejected[cut:], own_chosen != own_rejected


def render_messages(messages: Sequence[Mapping[str, Any]]) -> str:
    """Render messages as hh-style turns: ``"\\n\\nHuman: hi\\n\\nAssistant: hello"``."""
    return "".join(
        f"\n\n{ROLE_NAMES.get(str(m['role']).lower(), str(m['role']).capitalize())}: {m['content']}"
        for m in messages
    )


# --- preference rows (chosen / rejected) ---------------------------------------------


def _from_preference(
    row: Mapping[str, Any], keys: KeyMap, chat_template: Any, allow_empty: bool
) -> tuple[Pair, set[str]]:
    chosen = _require(row, keys.chosen_key, allow_empty)
    rejected = _require(row, keys.rejected_key, allow_empty)
    prompt_key = keys.prompt_key or ("prompt" if row.get("prompt") is not None else None)
    if keys.prompt_key is not None:
        _require(row, keys.prompt_key, allow_empty=True)
    prompt = row.get(prompt_key) if prompt_key else None
    used = {keys.chosen_key, keys.rejected_key} | ({prompt_key} if prompt_key else set())

    kind_chosen, kind_rejected = _kind(chosen, keys.chosen_key), _kind(rejected, keys.rejected_key)
    if kind_chosen != kind_rejected:
        raise RowError(
            keys.rejected_key,
            f"field '{keys.rejected_key}' is {_describe(kind_rejected)} but "
            f"'{keys.chosen_key}' is {_describe(kind_chosen)}; both must have the same form",
        )
    if kind_chosen == "text":
        return _from_text(prompt, chosen, rejected, prompt_key), used
    if kind_chosen == "turns":
        if prompt is not None:
            raise RowError(prompt_key, f"field '{prompt_key}' is not expected with MOSS-style lists of turns")
        return _from_turns(chosen, rejected), used
    return _from_messages(prompt, chosen, rejected, keys, prompt_key, chat_template), used


def _from_text(prompt: Any, chosen: str, rejected: str, prompt_key: str | None) -> Pair:
    if prompt is not None:
        if not isinstance(prompt, str):
            raise RowError(prompt_key, f"field '{prompt_key}' must be text, got {_type_name(prompt)}")
        return Pair(prompt, chosen, rejected)
    if HH_ASSISTANT in chosen and HH_ASSISTANT in rejected:
        prompt, chosen_response, rejected_response, different = split_hh(chosen, rejected)
        return Pair(prompt, chosen_response, rejected_response, [FLAG_DIFFERENT_HISTORY] if different else [],
                    input_format="transcript")
    return Pair("", chosen, rejected, input_format="transcript")


def _from_turns(chosen: list[str], rejected: list[str]) -> Pair:
    """MOSS-RLHF: alternating Human / Assistant turns, the last one the response."""

    def transcript(turns: list[str]) -> str:
        return "".join(
            f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {turn}" for i, turn in enumerate(turns[:-1])
        ) + f"{HH_ASSISTANT} {turns[-1]}"

    prompt, chosen_response, rejected_response, _ = split_hh(transcript(chosen), transcript(rejected))
    pair = Pair(prompt, chosen_response, rejected_response, input_format="turns")
    if chosen[:-1] != rejected[:-1]:
        pair.flags.append(FLAG_DIFFERENT_HISTORY)
    return pair


def _from_messages(
    prompt: Any, chosen: list, rejected: list, keys: KeyMap, prompt_key: str | None, chat_template: Any
) -> Pair:
    if prompt is not None and not isinstance(prompt, (str, list)):
        raise RowError(prompt_key, f"field '{prompt_key}' must be text or a list of messages, got {_type_name(prompt)}")
    if isinstance(prompt, list):
        _check_messages(prompt, prompt_key)
    prompt_messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else (prompt or [])
    full_chosen = prompt_messages + chosen
    full_rejected = prompt_messages + rejected
    for messages, name in ((full_chosen, keys.chosen_key), (full_rejected, keys.rejected_key)):
        if str(messages[-1]["role"]).lower() != "assistant":
            raise RowError(name, f"field '{name}' must end with an assistant message, got role '{messages[-1]['role']}'")
    shared = 0
    while (
        shared < min(len(full_chosen), len(full_rejected)) - 1
        and full_chosen[shared] == full_rejected[shared]
    ):
        shared += 1

    def answers_at(index: int) -> bool:
        return all(str(m[index]["role"]).lower() == "assistant" for m in (full_chosen, full_rejected))

    while shared > 0 and not answers_at(shared):
        shared -= 1  # the prompt ends right before an assistant turn on both sides
    history = full_chosen[:shared]
    different = full_chosen[:-1] != full_rejected[:-1]
    if not answers_at(shared):  # no shared dialogue at all: keep both conversations whole
        return Pair("", render_messages(full_chosen), render_messages(full_rejected), [FLAG_DIFFERENT_HISTORY],
                    input_format="messages")
    if chat_template is None:
        text_prompt = render_messages(history) + HH_ASSISTANT
        chosen_text = f" {full_chosen[shared]['content']}" + render_messages(full_chosen[shared + 1:])
        rejected_text = f" {full_rejected[shared]['content']}" + render_messages(full_rejected[shared + 1:])
    else:
        text_prompt = chat_template.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        chosen_text = _template_tail(chat_template, full_chosen, text_prompt, shared)
        rejected_text = _template_tail(chat_template, full_rejected, text_prompt, shared)
    return Pair(text_prompt, chosen_text, rejected_text, [FLAG_DIFFERENT_HISTORY] if different else [],
                input_format="messages")


def _template_tail(tokenizer: Any, messages: list, prompt: str, shared: int) -> str:
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if full.startswith(prompt):
        return full[len(prompt):]
    return "\n".join(str(m["content"]) for m in messages[shared:])


# --- pairwise judgements (two responses and a label) ----------------------------------


def _from_judgement(
    row: Mapping[str, Any], keys: KeyMap, response_keys: tuple[str, str], allow_empty: bool
) -> tuple[Pair, set[str]]:
    first_key, second_key = response_keys
    first = _require_text(row, first_key, allow_empty)
    second = _require_text(row, second_key, allow_empty)
    label_key = keys.label_key or next((k for k in LABEL_KEYS if k in row), None)
    if label_key is None or label_key not in row:
        raise RowError(
            keys.label_key or "label",
            f"field '{keys.label_key or 'label'}' is missing: a pair of responses needs a label saying "
            f"which is better (looked for {', '.join(LABEL_KEYS)}; fields present: {_field_list(row)})",
        )
    raw_label = row[label_key]
    verdict = _parse_label(raw_label, label_key, keys.label_map, zero_based=first_key == "response 1")
    prompt, prompt_keys = _judgement_prompt(row, keys)
    chosen, rejected = (second, first) if verdict == SECOND else (first, second)
    pair = Pair(prompt, chosen, rejected, [FLAG_TIE] if verdict == TIE else [], input_format="judgement")
    pair.extras = {"original_label": str(raw_label)}
    return pair, {first_key, second_key, label_key} | prompt_keys


def _judgement_prompt(row: Mapping[str, Any], keys: KeyMap) -> tuple[str, set[str]]:
    if keys.prompt_key is not None:
        return _require_text(row, keys.prompt_key, allow_empty=True), {keys.prompt_key}
    if isinstance(row.get("instruction"), str) and isinstance(row.get("input"), str):
        # PandaLM / Alpaca style: instruction plus an optional input.
        parts = [row["instruction"], row["input"]]
        return "\n\n".join(p for p in parts if p.strip()), {"instruction", "input"}
    for key in PROMPT_KEYS:
        if key in row and row[key] is not None:
            return _require_text(row, key, allow_empty=True), {key}
    return "", set()


def _parse_label(value: Any, key: str, label_map: Mapping[Any, str] | None, zero_based: bool) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)) or (
        isinstance(value, float) and not math.isfinite(value)
    ):
        raise RowError(key, f"field '{key}' must be a label such as 1/2, 'A'/'B' or 'tie', got {_type_name(value)}")
    text = _label_text(value)
    if label_map is not None:
        by_text = {_label_text(k): v for k, v in label_map.items()}
        if text not in by_text:
            raise RowError(key, f"label {value!r} in field '{key}' is not in label_map (keys: {list(label_map)})")
        if by_text[text] not in (FIRST, SECOND, TIE):
            raise RowError(key, f"label_map must map to 'first', 'second' or 'tie', got {by_text[text]!r}")
        return by_text[text]
    numeric = LABELS_ZERO_BASED if zero_based else LABELS_ONE_BASED
    verdict = numeric.get(text) or LABEL_WORDS.get(text)
    if verdict is None:
        raise RowError(
            key, f"unrecognised label {value!r} in field '{key}'; pass label_map= to say what it means"
        )
    return verdict


def _label_text(value: Any) -> str:
    """A label compared as text: ``1``, ``1.0`` and ``"1"`` are the same label."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip().lower()


def _find_response_keys(row: Mapping[str, Any]) -> tuple[str, str] | None:
    return next((pair for pair in RESPONSE_KEY_PAIRS if pair[0] in row and pair[1] in row), None)


# --- strength / score metadata ------------------------------------------------------


def _flag_scores(pair: Pair) -> None:
    """Flag ties and reversals when the row carries per-response scores
    (UltraFeedback's ``score_chosen``/``score_rejected``, top level or in ``metadata``)."""
    holders = [pair.extras]
    if isinstance(pair.extras.get("metadata"), Mapping):
        holders.append(pair.extras["metadata"])
    for holder in holders:
        score_chosen, score_rejected = holder.get("score_chosen"), holder.get("score_rejected")
        if _is_number(score_chosen) and _is_number(score_rejected):
            if score_chosen == score_rejected and FLAG_TIE not in pair.flags:
                pair.flags.append(FLAG_TIE)
            elif score_chosen < score_rejected:
                pair.flags.append(FLAG_SCORE_REVERSED)
            return


# --- field checks ---------------------------------------------------------------------


def _check_finite(extras: Mapping[str, Any]) -> None:
    """Raise when a :data:`FINITE_FIELDS` field holds ``NaN`` or an infinity (as a number, or as
    text such as ``"nan"`` from a CSV cell)."""
    metadata = extras.get("metadata")
    holders = [("", extras)] + ([("metadata.", metadata)] if isinstance(metadata, Mapping) else [])
    for prefix, holder in holders:
        for key in FINITE_FIELDS:
            value = holder.get(key)
            if (_is_number(value) and not math.isfinite(value)) or (isinstance(value, str) and _non_finite_text(value)):
                name = prefix + key
                raise RowError(name, f"field '{name}' must be a finite number or null, got {_type_name(value)}")


def _non_finite_text(text: str) -> bool:
    try:
        return not math.isfinite(float(text))
    except ValueError:
        return False


def _require(row: Mapping[str, Any], key: str, allow_empty: bool = False) -> Any:
    if key not in row:
        raise RowError(key, f"field '{key}' is missing (fields present: {_field_list(row)})")
    value = row[key]
    if value is None:
        raise RowError(key, f"field '{key}' is null")
    if isinstance(value, list) and not value:
        raise RowError(key, f"field '{key}' is an empty list")
    if isinstance(value, str) and not value.strip() and not allow_empty:
        raise RowError(
            key,
            f"field '{key}' is empty; pass allow_empty=True (--allow-empty) to keep such pairs "
            "flagged 'empty_response'",
        )
    return value


def _require_text(row: Mapping[str, Any], key: str, allow_empty: bool = False) -> str:
    value = _require(row, key, allow_empty=allow_empty)
    if not isinstance(value, str):
        raise RowError(key, f"field '{key}' must be text, got {_type_name(value)}")
    return value


def _kind(value: Any, key: str) -> str:
    """``text``, ``turns`` (list of strings) or ``messages`` (list of role/content dicts)."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        if all(isinstance(item, str) for item in value):
            return "turns"
        if all(isinstance(item, Mapping) for item in value):
            _check_messages(value, key)
            return "messages"
        raise RowError(key, f"field '{key}' mixes types in its list; expected all strings or all messages")
    raise RowError(
        key,
        f"field '{key}' must be text, a list of messages or a list of turns, got {_type_name(value)}",
    )


def _check_messages(messages: list, key: str | None) -> None:
    if not messages:
        raise RowError(key, f"field '{key}' is empty")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise RowError(f"{key}[{i}]", f"field '{key}[{i}]' must be a message with 'role' and 'content'")
        if not isinstance(message["content"], str):
            raise RowError(
                f"{key}[{i}].content",
                f"field '{key}[{i}].content' must be text, got {_type_name(message['content'])}",
            )


def _describe(kind: str) -> str:
    return {"text": "text", "turns": "a list of turns", "messages": "a list of messages"}[kind]


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):
        return f"a number ({json.dumps(value)})"  # NaN, Infinity, -Infinity: as the input spelled them
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"text ({value!r})"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _field_list(row: Mapping[str, Any]) -> str:
    return ", ".join(repr(k) for k in row) or "none"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _common_prefix(a: str, b: str) -> str:
    """Longest common prefix, by bisection on C-speed slice comparisons."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return a[:low]
