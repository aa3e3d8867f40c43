"""rmclean reward models for other RL engines, the scale-out path: a Python reward function with
TRL's signature (``GRPOTrainer`` / ``RLOOTrainer``), and an HTTP server speaking OpenRLHF's remote
reward protocol (``POST /get_reward``).

Both re-render what the engine holds (hh text, chat messages, ChatML or Llama-3 template text)
into the hh format the reward model was trained on (:func:`rmclean.data.chat.to_hh`), so the
policy's tokenizer and chat template never have to match the reward model's.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from .data.chat import strip_special, to_hh
from .members.reward_models import as_scorer, load_reward_model

MAX_BODY = 64 * 1024 * 1024  # bytes: a request larger than this is refused (413)


def reward_function(reward_model: Any, *, batch_size: int = 64) -> Callable[..., list[float]]:
    """A reward function for TRL: ``f(prompts, completions, **kwargs) -> list[float]``, the
    reward model's reward of each completion (text or messages) to its prompt (text or
    messages). ``reward_model`` is a folder or Hub id (:func:`load_reward_model`) or a loaded
    model with ``reward(prompts, responses)``."""
    model = load_reward_model(reward_model) if isinstance(reward_model, str) or hasattr(reward_model, "__fspath__") \
        else reward_model

    def rmclean_reward(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        return score_texts(model, [to_hh(p, c) for p, c in zip(prompts, completions)], batch_size)

    rmclean_reward.__name__ = "rmclean_reward"  # TRL names the reward column after the function
    return rmclean_reward


def score_texts(model: Any, pairs: list[tuple[str, str]], batch_size: int = 64) -> list[float]:
    """Rewards of ``(hh prompt, response)`` pairs, in batches of ``batch_size``."""
    score = as_scorer(model)
    rewards: list[float] = []
    for start in range(0, len(pairs), batch_size):
        part = pairs[start:start + batch_size]
        scored = score([p for p, _ in part], [r for _, r in part])
        rewards.extend(float(value) for value in np.asarray(scored, dtype=np.float64).reshape(-1))
    return rewards


class RequestError(ValueError):
    """A request the server refuses, with the HTTP status to answer."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


def parse_request(body: bytes) -> list[tuple[str, str]]:
    """The ``(hh prompt, response)`` pairs of an OpenRLHF ``/get_reward`` body: ``query`` (each
    prompt and response as one text) and optionally ``prompts`` (each query's prompt, which the
    query starts with) and ``labels`` (ignored). Bad bodies raise :class:`RequestError` (400)."""
    try:
        data = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict) or "query" not in data:
        raise RequestError(400, 'the body must be a JSON object with "query": a list of texts')
    queries, prompts = data["query"], data.get("prompts")
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise RequestError(400, '"query" must be a list of texts')
    if prompts is not None and (not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts)):
        raise RequestError(400, '"prompts" must be a list of texts')
    if prompts is not None and len(prompts) != len(queries):
        raise RequestError(400, f'{len(queries)} queries but {len(prompts)} prompts')
    pairs = []
    for number, query in enumerate(queries):
        if prompts is None:
            pairs.append(to_hh(query))
            continue
        prompt = prompts[number]
        if not query.startswith(prompt) and not strip_special(query).startswith(strip_special(prompt)):
            raise RequestError(400, f"query {number} does not start with its prompt")
        response = query[len(prompt):] if query.startswith(prompt) else strip_special(query)[len(strip_special(prompt)):]
        pairs.append(to_hh(prompt, response))
    return pairs


class RewardServer:
    """An HTTP server for one reward model: ``POST /get_reward`` (OpenRLHF's remote reward
    protocol) answers ``{"rewards": [...], "scores": [...]}``; ``GET /health`` answers
    ``{"status": "ok"}``. Requests are scored one at a time (the model is not thread-safe);
    bad requests get a 4xx with the reason, a failing model a 500, and the server keeps running."""

    def __init__(self, reward_model: Any, host: str = "127.0.0.1", port: int = 5000, batch_size: int = 64):
        self.model = load_reward_model(reward_model) if isinstance(reward_model, str) else reward_model
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet; the CLI reports what it serves
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/health":
                    self._answer(200, {"status": "ok"})
                else:
                    self._answer(404, {"error": f"no route GET {self.path}; POST /get_reward"})

            def do_POST(self) -> None:
                if self.path.rstrip("/") != "/get_reward":
                    self._answer(404, {"error": f"no route POST {self.path}; POST /get_reward"})
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    if length > MAX_BODY:
                        raise RequestError(413, f"the body is {length:,} bytes; at most {MAX_BODY:,}")
                    pairs = parse_request(self.rfile.read(length))
                    with server._lock:
                        rewards = score_texts(server.model, pairs, server.batch_size)
                        server.requests += 1
                except RequestError as exc:
                    self._answer(exc.status, {"error": str(exc)})
                except Exception as exc:  # the model failed on this request; the server goes on
                    self._answer(500, {"error": f"{type(exc).__name__}: {exc}"})
                else:
                    self._answer(200, {"rewards": rewards, "scores": rewards})

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def start(self) -> "RewardServer":
        """Serve from a background thread (tests, notebooks); :meth:`stop` ends it."""
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


__all__ = ["RequestError", "RewardServer", "parse_request", "reward_function", "score_texts"]
