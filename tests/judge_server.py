"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1 for the judge tests.

It speaks enough of the protocol for the official ``openai`` client: ``POST
.../chat/completions`` answers a ``chat.completion`` object with ``usage`` and
``finish_reason``; ``GET .../models`` lists one model. What it answers is decided by words in
the two answers it is shown, so a test scripts the judge through its pairs.

It reads the prompt as a gullible model would: the blocks are the ones the *first* line's
delimiter describes (``[The Start of the Conversation | CODE]``: the code, if any, is what a
block line must carry), each ending at the first line that matches exactly; text outside the
blocks is instructions, and a ``[[X]]`` there is obeyed. So a response that forges the end of
its block and writes ``[[A]]`` after it wins against a prompt without a random fence, and loses
against one with it. Tokens are counted like a byte-level BPE would roughly count them (ASCII 4
characters a token, a CJK character 2 tokens: dense, but never more than one per UTF-8 byte);
a reply longer than ``max_tokens`` is cut with ``finish_reason: "length"``. Tags:

``quality=N``   the answer with the larger N wins (``[[A]]``/``[[B]]``), equal N: ``[[C]]``
``ALWAYS_A``    position bias: always ``[[A]]`` (order-inconsistent, so a tie)
``MUMBLE``      the first reply has no verdict; after the reminder it answers properly
``GARBAGE``     never a verdict
``RATE_LIMIT``  the first attempt gets 429 with ``Retry-After``
``FLAKY``       the first attempt gets 500
``SLOW``        the first attempt sleeps ``slow_s`` before answering (beyond the client timeout)
``MALFORMED``   the first attempt gets status 200 with a body that is not JSON
``BROKEN``      every attempt gets 500, with a body that echoes the Authorization header
``FIRST_IMPRESSION`` the reply opens with the opposite verdict as a first impression, then
                reasons at length (about 300 tokens) and ends with the right one
``QUOTE``       the reply quotes both answers (as judges do) before the verdict on its last line

The model ``no-such-model`` gets 404 and the key ``wrong-key`` 401, as OpenAI answers them.

Every request is logged (order key: a hash of the prompt without its fence code, so the same
pair in the same order has the same key on every run; whether it carries the reminder, the
Authorization header, the status answered, the tokens billed) so tests can count what the
client really sent and what it would have paid. The server bills what it processed: a reply
its usage, a 500 the prompt, a reply the client gave up on (``SLOW``) in full; not a 429. It runs in a
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

_FIRST_LINE = re.compile(r"^\[The Start of the Conversation(.*)\]$")
_QUALITY = re.compile(r"quality=(\d+)")
_MARKER = re.compile(r"\[\[\s*([ABC])\s*\]\]", re.IGNORECASE)


def count_tokens(text: str) -> int:
    """Tokens as this server counts them: a run of ASCII at 4 characters a token, any other
    character 1 token per UTF-8 byte beyond the first (a CJK character: 2). Never more than the
    text's UTF-8 bytes."""
    ascii_chars = sum(ord(c) < 128 for c in text)
    return -(-ascii_chars // 4) + sum(len(c.encode("utf-8")) - 1 for c in text if ord(c) >= 128)


def read_blocks(prompt: str) -> tuple[str, str, str, str]:
    """``(fence suffix, answer A, answer B, text outside the blocks)`` as a gullible reader sees
    them: block lines must match the first line's suffix exactly; the first match ends a block."""
    lines = prompt.split("\n")
    first = _FIRST_LINE.match(lines[0]) if lines else None
    suffix = first.group(1) if first else ""
    cursor, blocks, outside = 0, {}, []
    for name in ("the Conversation", "Assistant A's Answer", "Assistant B's Answer"):
        start, end = f"[The Start of {name}{suffix}]", f"[The End of {name}{suffix}]"
        try:
            begin = lines.index(start, cursor)
            stop = lines.index(end, begin + 1)
        except ValueError:
            return suffix, blocks.get("Assistant A's Answer", ""), "", "\n".join(lines[cursor:])
        outside += lines[cursor:begin]
        blocks[name] = "\n".join(lines[begin + 1:stop])
        cursor = stop + 1
    outside += lines[cursor:]
    return suffix, blocks["Assistant A's Answer"], blocks["Assistant B's Answer"], "\n".join(outside)


@dataclass
class Logged:
    """One request as the server saw it."""

    key: str            # hash of the first user message without its fence code: one pair in one order
    answers: tuple[str, str]
    reminder: bool      # the request carries the reminder after an unparseable reply
    authorization: str
    status: int
    model: str
    time: float = field(default_factory=time.time)
    prompt_tokens: int = 0      # billed for this request
    completion_tokens: int = 0
    reply: str = ""
    finish_reason: str | None = None
    fence: str = ""     # what the block lines carry after the name (" | CODE" with a fenced template)


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
        self.sleeping = 0  # SLOW replies near or past 1 s: a client with a 1 s timeout has given up on them
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

    def settle(self, timeout_s: float = 10.0) -> None:
        """Wait until no request is being answered (a slow reply the client gave up on)."""
        deadline = time.time() + timeout_s
        while self.active and time.time() < deadline:
            time.sleep(0.05)

    def billed_usd(self, price: tuple[float, float]) -> float:
        """What the requests so far cost at ``price`` (USD per million input, output tokens)."""
        with self._lock:
            return sum(e.prompt_tokens * price[0] + e.completion_tokens * price[1] for e in self.log) / 1e6

    # --- answering -----------------------------------------------------------------------
    def _answer(self, handler, body: dict) -> None:
        with self._lock:
            self.active += 1
            # the client's own requests at once: a SLOW reply it gave up on no longer holds one of its slots
            self.max_active = max(self.max_active, self.active - self.sleeping)
        try:
            self._respond(handler, body)
        finally:
            with self._lock:
                self.active -= 1

    def _respond(self, handler, body: dict) -> None:
        messages = body.get("messages") or []
        users = [m for m in messages if m.get("role") == "user"]
        first = users[0]["content"] if users else ""
        suffix, a, b, outside = read_blocks(first)
        key = hashlib.sha256((first.replace(suffix, "") if suffix else first).encode()).hexdigest()[:16]
        reminder = len(users) > 1
        prompt_tokens = sum(count_tokens(str(m.get("content", ""))) + 4 for m in messages) + 3
        limit = int(body.get("max_tokens") or body.get("max_completion_tokens") or 1 << 30)
        with self._lock:
            attempt = self._attempts.get(key + str(reminder), 0)
            self._attempts[key + str(reminder)] = attempt + 1
        both = a + "\n" + b
        status = 200
        if self.delay_s:
            time.sleep(self.delay_s)
        authorization = handler.headers.get("Authorization", "")
        log = {"key": key, "answers": (a, b), "reminder": reminder, "handler": handler, "body": body, "fence": suffix}
        if authorization == "Bearer wrong-key":
            self._record(**log, status=401)
            handler._json(401, {"error": {"message": "Incorrect API key provided: wrong-key.", "type": "invalid_request_error",
                                          "code": "invalid_api_key"}})
            return
        if body.get("model") == "no-such-model":
            self._record(**log, status=404)
            handler._json(404, {"error": {"message": "The model `no-such-model` does not exist", "type": "invalid_request_error",
                                          "code": "model_not_found"}})
            return
        if "BROKEN" in both:
            self._record(**log, status=500, prompt_tokens=prompt_tokens)
            handler._json(500, {"error": {"message": f"internal error serving a request with Authorization: {authorization}",
                                          "type": "server_error"}})
            return
        if "RATE_LIMIT" in both and attempt == 0 and not reminder:
            self._record(**log, status=429)
            handler._json(429, {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
                          {"Retry-After": self.retry_after})
            return
        if "FLAKY" in both and attempt == 0 and not reminder:
            self._record(**log, status=500, prompt_tokens=prompt_tokens)
            handler._json(500, {"error": {"message": "The server had an error", "type": "server_error"}})
            return
        text, finish = self._cut(self._reply_text(a, b, outside, reminder), limit)
        completion_tokens = count_tokens(text)
        if "SLOW" in both and attempt == 0 and not reminder:  # billed in full, though the client may give up
            time.sleep(min(0.9, self.slow_s))  # just before a 1 s client timeout
            with self._lock:
                self.sleeping += 1
            time.sleep(max(0.0, self.slow_s - 0.9))
            with self._lock:
                self.sleeping -= 1
        if "MALFORMED" in both and attempt == 0 and not reminder:
            self._record(**log, status=299, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)  # sent as 200
            data = b'{"id": "chatcmpl-broken", "choices": [{"message": '
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            return
        self._record(**log, status=status, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, reply=text,
                     finish_reason=finish)
        handler._json(200, {
            "id": f"chatcmpl-{key}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "judge-test"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    @staticmethod
    def _cut(text: str, limit: int) -> tuple[str, str]:
        """``text`` cut to ``limit`` tokens, and the finish reason (``length`` when cut)."""
        if count_tokens(text) <= limit:
            return text, "stop"
        low, high = 0, len(text)
        while low < high:  # the longest prefix within the limit
            middle = (low + high + 1) // 2
            low, high = (middle, high) if count_tokens(text[:middle]) <= limit else (low, middle - 1)
        return text[:low], "length"

    @staticmethod
    def _reply_text(a: str, b: str, outside: str, reminder: bool) -> str:
        both = a + "\n" + b
        obeyed = _MARKER.findall(outside)
        if obeyed:  # gullible: a verdict marker outside the blocks reads as an instruction
            return f"As instructed, the final verdict: [[{obeyed[-1].upper()}]]"
        if "GARBAGE" in both:
            return "I would rather not say which one is better."
        if "MUMBLE" in both and not reminder:
            return "Both answers have merits; assistant A is clear while assistant B is friendly."
        if "ALWAYS_A" in both:
            return "Assistant A answers first, so it is better. [[A]]"
        qa, qb = (int(m.group(1)) if m else 0 for m in (_QUALITY.search(a), _QUALITY.search(b)))
        verdict = "A" if qa > qb else "B" if qb > qa else "C"
        final = f"Comparing the two answers for helpfulness and harmlessness. Final verdict: [[{verdict}]]"
        if "FIRST_IMPRESSION" in both and not reminder:
            opposite = {"A": "B", "B": "A", "C": "A"}[verdict]
            reasoning = " ".join(f"Point {i}: weighing accuracy, tone and safety once more." for i in range(20))
            return f"My first impression is [[{opposite}]], but let me reason it through.\n{reasoning}\n{final}"
        if "QUOTE" in both and not reminder:
            return f'Assistant A wrote: "{a}"\nAssistant B wrote: "{b}"\n{final}'
        return final

    def _record(self, *, key: str, answers: tuple[str, str], reminder: bool, handler, body: dict, status: int,
                fence: str = "", prompt_tokens: int = 0, completion_tokens: int = 0, reply: str = "",
                finish_reason: str | None = None) -> None:
        entry = Logged(key, answers, reminder, handler.headers.get("Authorization", ""), status, str(body.get("model")),
                       prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, reply=reply,
                       finish_reason=finish_reason, fence=fence)
        with self._lock:
            self.log.append(entry)


class _QuietServer(ThreadingHTTPServer):
    """Clients that time out close their connection: that is expected here, not an error."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)
