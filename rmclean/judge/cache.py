"""What the judge remembers: the identity of a request (:class:`Request`, built by
:func:`make_request`, whose key hashes the judge model, the rendered messages and the generation
settings) and the SQLite cache of :class:`Answer` under that key.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .config import JudgeConfig, JudgeError
from .prompt import Template

INVALID = "invalid"  # the verdict of a request whose replies held no verdict, even after the reminder
CACHE_FILE = "judge.sqlite"


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
    from ..features.backbones import default_cache_dir

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
    from ..features.backbones import BackboneError, resolve_backbone

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
