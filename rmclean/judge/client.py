"""The judge client: :class:`Judge` sends one request with retries (backoff, Retry-After) and one
reminder, every HTTP request passing the :class:`Budget` first; :func:`run_requests` answers
many requests from the cache, then from the judge (several at a time), claiming each in the
cache before it is sent (so runs sharing a cache never send one twice) and caching each answer
as it arrives.

The budget is hard: each attempt reserves an upper bound of its cost (prompt at one token per
UTF-8 byte, :func:`~.config.max_prompt_tokens`, plus ``max_tokens``) before it is sent; an
answered attempt is then charged its usage, a failed one (error, timeout, dropped connection:
the server may still have billed it) its reservation.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

from .backends import (
    Completion,
    LocalBackend,
    MalformedReply,
    OpenAIBackend,
    PromptTooLong,
    _Switched,
)
from .cache import INVALID, LEASE_S, Answer, JudgeCache, Request
from .config import (
    JudgeConfig,
    JudgeError,
    cost_usd,
    max_prompt_tokens,
    public_url,
    redact,
    resolve_api_key,
)
from .prompt import REMINDER, Template, parse_verdict

POLL_S = 0.25  # seconds between looks at requests another run is answering


class BudgetReached(Exception):
    """Raised inside a request when the next HTTP request would pass the budget."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Stopped(Exception):
    """The run is stopping (budget, fatal error or Ctrl-C): leave the request undone."""


# --- budget ------------------------------------------------------------------------------
class Budget:
    """Counts HTTP requests and their cost; :meth:`reserve` refuses the request that would pass
    ``max_requests`` or, at its reserved (upper-bound) cost in USD, ``max_cost``: the spent cost
    plus every reservation in flight never passes ``max_cost``. A request that does not fit
    while others are in flight waits for them to settle (they usually cost less than reserved)
    and is refused only when it does not fit with nothing in flight. Thread-safe."""

    def __init__(self, max_requests: int | None, max_cost: float | None, price: tuple[float, float] | None,
                 stop: threading.Event | None = None):
        self.max_requests, self.max_cost, self.price = max_requests, max_cost, price
        self.requests = 0
        self.prompt_tokens = self.completion_tokens = 0
        self.estimated_usage = 0
        self.cost = 0.0
        self.failed_attempts = 0          # attempts without a reply, charged at their reservation
        self.failed_attempts_cost = 0.0   # USD of those charges (part of ``cost``)
        self._reserved = 0.0
        self._in_flight = 0
        self._stop = stop or threading.Event()
        self._settled = threading.Condition()

    def reserve(self, estimated_cost: float) -> None:
        """Count one HTTP request and hold ``estimated_cost`` (USD, an upper bound) for it.
        Raises :class:`BudgetReached`, or :class:`_Stopped` when the run stops while it waits."""
        with self._settled:
            while True:
                if self.max_requests is not None and self.requests >= self.max_requests:
                    raise BudgetReached("max-requests")
                if self.max_cost is None or self.cost + self._reserved + estimated_cost <= self.max_cost:
                    break
                if self._in_flight == 0:
                    raise BudgetReached("max-cost")
                if self._stop.is_set():
                    raise _Stopped()
                self._settled.wait(timeout=0.5)
            self.requests += 1
            self._reserved += estimated_cost
            self._in_flight += 1

    def settle(self, estimated_cost: float, completion: Completion | None) -> None:
        """Turn a reservation into spend: the reply's usage, or for an attempt without a reply
        (``completion`` None) the whole reservation, since the server may have billed it."""
        with self._settled:
            self._reserved -= estimated_cost
            self._in_flight -= 1
            if completion is not None:
                self.prompt_tokens += completion.prompt_tokens
                self.completion_tokens += completion.completion_tokens
                self.estimated_usage += int(completion.estimated)
                self.cost += cost_usd(completion.prompt_tokens, completion.completion_tokens, self.price) or 0.0
            else:
                self.failed_attempts += 1
                self.failed_attempts_cost += estimated_cost
                self.cost += estimated_cost
            self._settled.notify_all()


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
    from_other_runs: int = 0
    retries: int = 0
    reminders: int = 0
    failed: int = 0
    not_sent: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_usage: int = 0
    failed_attempts: int = 0
    failed_attempts_cost_usd: float | None = 0.0
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
        self.stop = threading.Event()
        self.budget = Budget(config.max_requests, config.max_cost, config.unit_price(), self.stop)
        if config.max_cost is not None and self.budget.price is None:
            raise JudgeError(f"--max-cost needs the price of {config.model_name!r}, which is not in the price table: "
                             "pass --price INPUT,OUTPUT (USD per million tokens) or --prices FILE.json")
        self.backend = backend if backend is not None else (
            LocalBackend(config) if config.backend == "local" else OpenAIBackend(config, api_key))
        self._sleep = sleep or (lambda seconds: self.stop.wait(seconds))
        self._lock = threading.Lock()
        self._reached = False  # a request has been answered: the server is reachable
        self.retries = self.reminders = 0

    def ask(self, request: Request) -> Answer:
        """The judge's answer to ``request``: the verdict on the last line of its reply, else one
        reminder; ``invalid`` (with its ``reason``) after two replies without one, or at once for
        a reply cut at ``max_tokens`` (its verdict, if any, would be a guess from a partial
        reply). Raises :class:`BudgetReached`, :class:`JudgeError` (fatal) or :class:`RequestFailed`."""
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
            if completion.truncated:
                reason = (f"reply cut at --max-tokens {self.config.max_tokens} (finish_reason length): raise "
                          "--max-tokens")
                return Answer(INVALID, tuple(replies), prompt_tokens, completion_tokens, requests, reason=reason)
            verdict = parse_verdict(completion.text)
            if verdict is not None:
                return Answer(verdict, tuple(replies), prompt_tokens, completion_tokens, requests)
            if turn == 0:
                with self._lock:
                    self.reminders += 1
                messages += [{"role": "assistant", "content": completion.text}, {"role": "user", "content": REMINDER}]
        return Answer(INVALID, tuple(replies), prompt_tokens, completion_tokens, requests,
                      reason="no verdict on the last line of the reply, even after the reminder")

    def _send(self, messages: list[dict[str, str]], seed: int) -> tuple[Completion, int]:
        """One completion, retrying as needed; returns it and the HTTP requests it took. Each
        attempt reserves its upper-bound cost first (:meth:`Budget.reserve`)."""
        import openai

        estimate = cost_usd(max_prompt_tokens(messages), self.config.max_tokens, self.budget.price) or 0.0
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
                                 f"{self._describe(exc)}; check the key in ${self.config.api_key_env or '(none)'} "
                                 "and --base-url") from None
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
                 progress: bool = False, lease_s: float = LEASE_S) -> tuple[dict[str, Answer], RunStats, dict[str, str]]:
    """Answer ``requests`` from the cache, then ask the judge for the rest (``config.concurrency``
    at a time, in the order given), writing each answer to the cache as it arrives.

    Each request is claimed in the cache before it is sent (:meth:`JudgeCache.claim`, a lease of
    ``lease_s`` seconds renewed while it is in flight), so another run sharing the cache never
    sends it too: a request another run holds is left for later, then read from the cache once
    that run answers it, or taken over if that run fails it, dies or lets its lease expire.

    Returns ``(answers by key, stats, errors by key)``; requests left undone by the budget or a
    failure are absent from the answers. A fatal :class:`JudgeError` (no key, unreachable server,
    refused key, unknown model) is raised after the work in flight has finished; everything
    answered so far is in the cache.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    since = time.time()
    unique = list({request.key: request for request in requests}.values())
    answers = cache.get(request.key for request in unique)
    redo: set[str] = set()
    if config.retry_invalid:  # asked again: only an answer given from now on counts
        redo = {key for key, answer in answers.items() if answer.verdict == INVALID}
        answers = {key: answer for key, answer in answers.items() if key not in redo}
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

    queue = list(reversed(todo))  # popped from the end: the order given
    waiting: dict[str, Request] = {}  # held by another run
    workers = 1 if config.backend == "local" else config.concurrency
    bar = tqdm(total=len(todo), desc=f"judging with {config.model_name}", unit="request", disable=not progress)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rmclean-judge")
    in_flight: dict[Any, Request] = {}
    interrupted = False

    def claimed(request: Request) -> bool:
        """Claim ``request``; an answer another run gave counts as done, a live lease waits."""
        state, answer = cache.claim(request.key, lease_s=lease_s, since=since if request.key in redo else None)
        waiting.pop(request.key, None)
        if state == "busy":
            waiting[request.key] = request
        elif state == "done":
            answers[request.key] = answer
            stats.from_other_runs += 1
            bar.update(1)
        return state == "claimed"

    def fill(look_at_waiting: bool) -> None:
        candidates = list(waiting.values()) if look_at_waiting else []
        while len(in_flight) < workers and not judge.stop.is_set():
            if candidates:
                request = candidates.pop(0)
            elif queue:
                request = queue.pop()
            else:
                return
            if claimed(request):
                in_flight[pool.submit(work, request)] = request

    try:
        fill(False)
        renewed = looked = time.monotonic()
        while in_flight or (waiting and not judge.stop.is_set()):
            if in_flight:
                done, _ = wait(list(in_flight), timeout=POLL_S, return_when=FIRST_COMPLETED)
            else:  # only requests another run holds: look again shortly
                done = set()
                time.sleep(POLL_S)
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
                if request.key not in answers:
                    cache.release([request.key])  # unanswered: another run may ask it
                bar.update(1)
                if progress:
                    bar.set_postfix(requests=judge.budget.requests, cached=stats.cache_hits, refresh=False)
            now = time.monotonic()
            if in_flight and now - renewed > lease_s / 4:
                cache.renew([request.key for request in in_flight.values()], lease_s=lease_s)
                renewed = now
            look = bool(waiting) and now - looked >= POLL_S
            looked = now if look else looked
            fill(look)
    except KeyboardInterrupt:  # let the answers already paid for land in the cache (10 s at most)
        interrupted = True
        judge.stop.set()
        wait(list(in_flight), timeout=10)
        raise
    finally:
        judge.stop.set()
        pool.shutdown(wait=not interrupted, cancel_futures=True)
        with contextlib.suppress(sqlite3.Error):  # a broken cache must not hide the real error
            cache.release()  # whatever this run still holds: another run may ask it
        bar.close()
        budget = judge.budget
        stats.requests = budget.requests
        stats.prompt_tokens, stats.completion_tokens = budget.prompt_tokens, budget.completion_tokens
        stats.estimated_usage = budget.estimated_usage
        stats.failed_attempts = budget.failed_attempts
        stats.failed_attempts_cost_usd = budget.failed_attempts_cost if price is not None else None
        stats.cost_usd = budget.cost if price is not None else None
        stats.retries, stats.reminders = judge.retries, judge.reminders
        stats.not_sent = sum(request.key not in answers and request.key not in errors for request in todo)
        stats.errors = sorted(set(errors.values()))[:20]
        stats.seconds = time.perf_counter() - started
    if fatal is not None:
        raise fatal
    return answers, stats, errors
