"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1 for the judge tests.

It speaks enough of the protocol for the official ``openai`` client: ``POST
.../chat/completions`` answers a ``chat.completion`` object with ``usage``; ``GET .../models``
lists one model. What it answers is decided by words in the two answers it is shown (the
default judge template marks them off), so a test scripts the judge through its pairs:

``quality=N``   the answer with the larger N wins (``[[A]]``/``[[B]]``), equal N: ``[[C]]``
``ALWAYS_A``    position bias: always ``[[A]]`` (order-inconsistent, so a tie)
``MUMBLE``      the first reply has no verdict; after the reminder it answers properly
``GARBAGE``     never a verdict
``RATE_LIMIT``  the first attempt gets 429 with ``Retry-After``
``FLAKY``       the first attempt gets 500
``SLOW``        the first attempt sleeps ``slow_s`` before answering (beyond the client timeout)
``MALFORMED``   the first attempt gets status 200 with a body that is not JSON
``BROKEN``      every attempt gets 500, with a body that echoes the Authorization header

The model ``no-such-model`` gets 404 and the key ``wrong-key`` 401, as OpenAI answers them.

Every request is logged (order key, whether it carries the reminder, the Authorization
header, the status answered) so tests can count what the client really sent. It runs in a
thread of the test process (``with JudgeServer() as server``); a CLI run in a subprocess can
talk to it, so a test can kill the client and still count every request on the server.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ANSWER = re.compile(r"\[The Start of Assistant ([AB])'s Answer\]\n(.*?)\n\[The End of Assistant \1's Answer\]", re.S)
_QUALITY = re.compile(r"quality=(\d+)")


@dataclass
class Logged:
    """One request as the server saw it."""

    key: str            # hash of the first user message: one pair in one order
    answers: tuple[str, str]
    reminder: bool      # the request carries the reminder after an unparseable reply
    authorization: str
    status: int
    model: str
    time: float = field(default_factory=time.time)


class JudgeServer:
    """A threaded chat-completions server; ``url`` is the base URL to give the client."""

    def __init__(self, *, delay_s: float = 0.0, slow_s: float = 3.0, retry_after: str = "1"):
        self.delay_s = delay_s
        self.slow_s = slow_s
        self.retry_after = retry_after
        self.log: list[Logged] = []
        self._lock = threading.Lock()
        self._attempts: dict[str, int] = {}
        self.active = self.max_active = 0  # requests being answered now, and the most at once
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._json(200, {"object": "list", "data": [{"id": "judge-test", "object": "model",
                                                                  "created": 0, "owned_by": "tests"}]})
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                server._answer(self, body)

            def _json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self._handler = Handler
        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread: threading.Thread | None = None

    # --- running -------------------------------------------------------------------------
    def start(self) -> "JudgeServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "JudgeServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- what tests read -----------------------------------------------------------------
    def completed(self) -> list[Logged]:
        """Requests answered with status 200 and a well-formed completion (first asks only)."""
        with self._lock:
            return [entry for entry in self.log if entry.status == 200 and not entry.reminder]

    def reset_log(self) -> None:
        with self._lock:
            self.log.clear()

    # --- answering -----------------------------------------------------------------------
    def _answer(self, handler, body: dict) -> None:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self._respond(handler, body)
        finally:
            with self._lock:
                self.active -= 1

    def _respond(self, handler, body: dict) -> None:
        messages = body.get("messages") or []
        users = [m for m in messages if m.get("role") == "user"]
        first = users[0]["content"] if users else ""
        key = hashlib.sha256(first.encode()).hexdigest()[:16]
        answers = dict(_ANSWER.findall(first))
        a, b = answers.get("A", ""), answers.get("B", "")
        reminder = len(users) > 1
        with self._lock:
            attempt = self._attempts.get(key + str(reminder), 0)
            self._attempts[key + str(reminder)] = attempt + 1
        both = a + "\n" + b
        status = 200
        if self.delay_s:
            time.sleep(self.delay_s)
        authorization = handler.headers.get("Authorization", "")
        if authorization == "Bearer wrong-key":
            self._record(key, (a, b), reminder, handler, body, 401)
            handler._json(401, {"error": {"message": "Incorrect API key provided: wrong-key.", "type": "invalid_request_error",
                                          "code": "invalid_api_key"}})
            return
        if body.get("model") == "no-such-model":
            self._record(key, (a, b), reminder, handler, body, 404)
            handler._json(404, {"error": {"message": "The model `no-such-model` does not exist", "type": "invalid_request_error",
                                          "code": "model_not_found"}})
            return
        if "BROKEN" in both:
            self._record(key, (a, b), reminder, handler, body, 500)
            handler._json(500, {"error": {"message": f"internal error serving a request with Authorization: {authorization}",
                                          "type": "server_error"}})
            return
        if "RATE_LIMIT" in both and attempt == 0 and not reminder:
            status = 429
            self._record(key, (a, b), reminder, handler, body, status)
            handler._json(429, {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
                          {"Retry-After": self.retry_after})
            return
        if "FLAKY" in both and attempt == 0 and not reminder:
            status = 500
            self._record(key, (a, b), reminder, handler, body, status)
            handler._json(500, {"error": {"message": "The server had an error", "type": "server_error"}})
            return
        if "SLOW" in both and attempt == 0 and not reminder:
            time.sleep(self.slow_s)
        if "MALFORMED" in both and attempt == 0 and not reminder:
            status = 299  # logged as malformed; sent as 200
            self._record(key, (a, b), reminder, handler, body, status)
            data = b'{"id": "chatcmpl-broken", "choices": [{"message": '
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            return
        text = self._reply_text(a, b, reminder)
        self._record(key, (a, b), reminder, handler, body, status)
        prompt_tokens = sum(len(str(m.get("content", ""))) for m in messages) // 4 + 1
        completion_tokens = len(text) // 4 + 1
        handler._json(200, {
            "id": f"chatcmpl-{key}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "judge-test"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    @staticmethod
    def _reply_text(a: str, b: str, reminder: bool) -> str:
        both = a + "\n" + b
        if "GARBAGE" in both:
            return "I would rather not say which one is better."
        if "MUMBLE" in both and not reminder:
            return "Both answers have merits; assistant A is clear while assistant B is friendly."
        if "ALWAYS_A" in both:
            return "Assistant A answers first, so it is better. [[A]]"
        qa, qb = (int(m.group(1)) if m else 0 for m in (_QUALITY.search(a), _QUALITY.search(b)))
        verdict = "A" if qa > qb else "B" if qb > qa else "C"
        return f"Comparing the two answers for helpfulness and harmlessness. Final verdict: [[{verdict}]]"

    def _record(self, key: str, answers: tuple[str, str], reminder: bool, handler, body: dict, status: int) -> None:
        entry = Logged(key, answers, reminder, handler.headers.get("Authorization", ""), status, str(body.get("model")))
        with self._lock:
            self.log.append(entry)


class _QuietServer(ThreadingHTTPServer):
    """Clients that time out close their connection: that is expected here, not an error."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)
