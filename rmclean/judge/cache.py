"""What the judge remembers: the identity of a request (:class:`Request`, built by
:func:`make_request`, whose key hashes the judge model, the template's fingerprint, the pair's
texts in their order and the generation settings: not the random fence of the rendered
messages, so a rerun finds its answers) and the SQLite cache of :class:`Answer` under that key.

Several runs may share one cache file (two ``rmclean check`` at once, a PPO stage beside a
check). Before a request is sent its key is *claimed*: a row in ``leases`` (owner, expiry),
taken in a write transaction, so no other run sends it while it is in flight. Another run that
meets a live lease waits for the answer; it takes the request over when the lease expires
(:data:`LEASE_S` without renewal) or at once when the owner is a process of this machine that
no longer exists (a killed run).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..files import pid_alive
from .config import JudgeConfig, JudgeError
from .prompt import Template

INVALID = "invalid"  # the verdict of a request whose replies held no verdict, even after the reminder
CACHE_FILE = "judge.sqlite"
#: Part of every request key: bump when what a key stands for changes, so answers cached under
#: the old meaning are never read as answers to the new requests (2: the key hashes the pair's
#: texts and the template fingerprint instead of the rendered messages, which now carry a
#: random fence).
KEY_VERSION = 2
LEASE_S = 60.0  # seconds a claim on a request lives without renewal (a running run renews it)


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
    reason: str | None = None  # why the verdict is invalid (no verdict on the last line, a reply cut short)

    @property
    def reply(self) -> str:
        return "\n\n--- after the reminder ---\n\n".join(self.replies)


class JudgeCache:
    """Answers on disk (SQLite), keyed by :func:`make_request`'s key; each :meth:`put` commits.
    Safe to share between threads of one run and between runs (WAL, busy timeout, leases:
    :meth:`claim`). ``owner`` names this opening of the cache in its leases."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._lock = threading.Lock()
        try:  # autocommit; transactions are explicit (BEGIN IMMEDIATE takes the write lock at once)
            self._db = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
                "template TEXT NOT NULL, content TEXT NOT NULL, verdict TEXT NOT NULL, replies TEXT NOT NULL, "
                "prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, requests INTEGER NOT NULL, "
                "created REAL NOT NULL)"
            )
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(answers)")}
            if "reason" not in columns:  # caches written before reasons were recorded
                try:
                    self._db.execute("ALTER TABLE answers ADD COLUMN reason TEXT")
                except sqlite3.OperationalError as exc:  # another run opening the cache added it first
                    if "duplicate column" not in str(exc):
                        raise
            self._db.execute("CREATE TABLE IF NOT EXISTS leases (key TEXT PRIMARY KEY, owner TEXT NOT NULL, "
                             "expires REAL NOT NULL)")
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
                    f"SELECT key, verdict, replies, prompt_tokens, completion_tokens, requests, reason FROM answers "
                    f"WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
                for key, *row in rows:
                    found[key] = _answer(row)
        return found

    def put(self, key: str, answer: Answer, *, model: str, template: str, content: str) -> None:
        """Store ``answer`` under ``key`` and drop this owner's lease on it, in one transaction."""
        with self._lock, self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO answers (key, model, template, content, verdict, replies, prompt_tokens, "
                "completion_tokens, requests, created, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, model, template, content, answer.verdict, json.dumps(list(answer.replies)),
                 answer.prompt_tokens, answer.completion_tokens, answer.requests, time.time(), answer.reason))
            self._db.execute("DELETE FROM leases WHERE key = ? AND owner = ?", (key, self.owner))

    # --- leases: one run at a time sends a request -------------------------------------------
    def claim(self, key: str, *, lease_s: float = LEASE_S, since: float | None = None) -> tuple[str, Answer | None]:
        """Try to take ``key`` for this owner, in one write transaction. Returns ``("done",
        answer)`` when it is answered (at or after ``since``, a time.time(), when given),
        ``("busy", None)`` while another owner's lease is live, else ``("claimed", None)``: the
        lease is this owner's for ``lease_s`` seconds."""
        now = time.time()
        with self._lock, self._transaction():
            row = self._db.execute("SELECT verdict, replies, prompt_tokens, completion_tokens, requests, reason, "
                                   "created FROM answers WHERE key = ?", (key,)).fetchone()
            if row is not None and (since is None or row[-1] >= since):
                return "done", _answer(row[:-1])
            lease = self._db.execute("SELECT owner, expires FROM leases WHERE key = ?", (key,)).fetchone()
            if lease is not None and lease[0] != self.owner and lease[1] > now and _owner_alive(lease[0]):
                return "busy", None
            self._db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (key, self.owner, now + lease_s))
        return "claimed", None

    def renew(self, keys: Iterable[str], *, lease_s: float = LEASE_S) -> None:
        """Extend this owner's leases on ``keys`` to ``lease_s`` seconds from now."""
        keys = list(keys)
        if not keys:
            return
        with self._lock, self._transaction():
            self._db.executemany("UPDATE leases SET expires = ? WHERE key = ? AND owner = ?",
                                 [(time.time() + lease_s, key, self.owner) for key in keys])

    def release(self, keys: Iterable[str] | None = None) -> None:
        """Drop this owner's leases on ``keys`` (all of them when None): another run may ask."""
        with self._lock, self._transaction():
            if keys is None:
                self._db.execute("DELETE FROM leases WHERE owner = ?", (self.owner,))
            else:
                self._db.executemany("DELETE FROM leases WHERE key = ? AND owner = ?",
                                     [(key, self.owner) for key in keys])

    def leases(self) -> dict[str, tuple[str, float]]:
        """Every live or stale lease: key -> (owner, expiry as time.time())."""
        with self._lock:
            return {key: (owner, expires) for key, owner, expires in self._db.execute("SELECT * FROM leases")}

    def _transaction(self):
        return _Transaction(self._db)

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


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, *_) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def _answer(row) -> Answer:
    verdict, replies, prompt_tokens, completion_tokens, requests, reason = row
    return Answer(verdict, tuple(json.loads(replies)), prompt_tokens, completion_tokens, requests, cached=True,
                  reason=reason)


def _owner_alive(owner: str) -> bool:
    """False when ``owner`` (``host:pid:token``) is a process of this machine that has ended."""
    parts = owner.rsplit(":", 2)
    try:
        host, pid = parts[0], int(parts[1])
    except (IndexError, ValueError):
        return True
    return host != socket.gethostname() or pid == os.getpid() or pid_alive(pid)


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
                 answer_b: str, *, fence: str | None = None) -> Request:
    """The :class:`Request` for one pair in one order (A shown first). Its messages carry
    ``fence`` (default a new random one) in their block lines; its key does not: it hashes
    :data:`KEY_VERSION`, the model, the template's fingerprint, the three texts and the
    generation settings (or the choice verdict), so the same pair asks the same question of the
    cache on every run."""
    messages = tuple(template.render(question, answer_a, answer_b, fence))
    if config.verdict == "choice":  # no generation: another question of the model, never a reply's cache entry
        settings = {"verdict": config.verdict}
    else:
        settings = {"temperature": config.sampling_temperature, "max_tokens": config.max_tokens}
        if config.backend == "local":
            settings["seed"] = config.seed
    identity = [KEY_VERSION, model, template.fingerprint, [question, answer_a, answer_b], settings]
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    content = hashlib.sha256(json.dumps([question, answer_a, answer_b]).encode()).hexdigest()[:16]
    return Request(key, messages, content)
