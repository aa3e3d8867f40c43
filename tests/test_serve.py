"""Reward models for other RL engines: TRL's reward-function signature (run by TRL's RLOOTrainer)
and OpenRLHF's remote reward protocol over real HTTP, including from the ``rmclean serve-rm``
command in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

import rmclean
from rmclean.data.chat import to_hh
from rmclean.members.reward_models import load_reward_model
from rmclean.serve import RewardServer, parse_request

CHATML_PROMPT = "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nIs it safe?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(autouse=True)
def private_feature_cache(tmp_path, monkeypatch):
    """Reward models here embed into a cache of the test's own, not the user's."""
    monkeypatch.setenv("RMCLEAN_CACHE_DIR", str(tmp_path / "feature-cache"))


def _post(url: str, body: bytes | dict, *, content_type: str = "application/json") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_texts_in_any_chat_format_reach_the_reward_model_as_hh():
    hh = "\n\nHuman: Is it safe?\n\nAssistant:"
    assert to_hh(CHATML_PROMPT, "Yes.<|im_end|>") == (hh, " Yes.")
    assert to_hh([{"role": "user", "content": "Is it safe?"}], [{"role": "assistant", "content": "Yes."}]) == (hh, " Yes.")
    assert to_hh(hh + " Yes.") == (hh, " Yes.")
    assert to_hh("Is it safe?", "Yes.") == (hh, " Yes.")
    llama3 = ("<|start_header_id|>user<|end_header_id|>\n\nIs it safe?<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nYes.<|eot_id|>")
    assert to_hh(llama3) == (hh, " Yes.")


def test_trl_rloo_trainer_runs_with_an_rmclean_reward_function(tiny_reward_model, tiny_policy, tmp_path):
    import datasets
    from trl import RLOOConfig, RLOOTrainer

    reward = rmclean.reward_function(tiny_reward_model)
    model = load_reward_model(tiny_reward_model)
    prompts = [[{"role": "user", "content": "question 3"}]] * 2
    completions = [[{"role": "assistant", "content": "a good answer"}], [{"role": "assistant", "content": "a bad answer"}]]
    direct = model.reward(["\n\nHuman: question 3\n\nAssistant:"] * 2, [" a good answer", " a bad answer"])
    np.testing.assert_allclose(reward(prompts, completions), direct)
    assert direct[0] > direct[1] and reward.__name__ == "rmclean_reward"

    dataset = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": f"question {i}?"}]} for i in range(16)])
    args = RLOOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, gradient_checkpointing=False,
                      per_device_train_batch_size=4, num_generations=4, max_completion_length=8, max_steps=3,
                      logging_steps=1, report_to=[], save_strategy="no", learning_rate=1e-3)
    trainer = RLOOTrainer(model=tiny_policy, reward_funcs=reward, args=args, train_dataset=dataset)
    trainer.train()
    logged = [row["rewards/rmclean_reward/mean"] for row in trainer.state.log_history
              if "rewards/rmclean_reward/mean" in row]
    assert len(logged) == 3 and all(np.isfinite(logged))


def test_openrlhf_remote_reward_protocol_over_http(tiny_reward_model):
    model = load_reward_model(tiny_reward_model)
    server = RewardServer(model, port=0).start()
    try:
        url = f"{server.url}/get_reward"
        queries = [CHATML_PROMPT + "a good answer<|im_end|>", CHATML_PROMPT + "a bad answer<|im_end|>"]
        status, answer = _post(url, {"query": queries, "prompts": [CHATML_PROMPT] * 2, "labels": ["", ""]})
        expected = model.reward(["\n\nHuman: Is it safe?\n\nAssistant:"] * 2, [" a good answer", " a bad answer"])
        assert status == 200 and answer["rewards"] == pytest.approx(expected.tolist())
        status, answer = _post(url, {"query": ["\n\nHuman: Is it safe?\n\nAssistant: a good answer"]})  # no prompts
        assert status == 200 and answer["rewards"] == pytest.approx(expected[:1].tolist())
        bad = [
            (b"{not json", "not JSON"), ({"prompts": ["a"]}, '"query"'), ({"query": "text"}, '"query" must be a list'),
            ({"query": ["a", "b"], "prompts": ["a"]}, "2 queries but 1 prompts"),
            ({"query": ["hello"], "prompts": ["bye"]}, "does not start with its prompt"),
            ({"query": [1, 2]}, '"query" must be a list of texts'),
        ]
        for body, reason in bad:
            status, answer = _post(url, body)
            assert status == 400 and reason in answer["error"], (body, answer)
        assert _post(f"{server.url}/elsewhere", {"query": []})[0] == 404
        with urllib.request.urlopen(f"{server.url}/health", timeout=10) as response:
            assert json.loads(response.read()) == {"status": "ok"}
        assert _post(url, {"query": queries, "prompts": [CHATML_PROMPT] * 2})[0] == 200  # still serving
    finally:
        server.stop()


def test_a_failing_model_answers_500_and_the_server_goes_on():
    class Fragile:
        def reward(self, prompts, responses):
            if any("boom" in r for r in responses):
                raise RuntimeError("cannot score this")
            return np.ones(len(responses))

    server = RewardServer(Fragile(), port=0).start()
    try:
        status, answer = _post(f"{server.url}/get_reward", {"query": ["\n\nHuman: hi\n\nAssistant: boom"]})
        assert status == 500 and "cannot score this" in answer["error"]
        assert _post(f"{server.url}/get_reward", {"query": ["\n\nHuman: hi\n\nAssistant: fine"]}) == (
            200, {"rewards": [1.0], "scores": [1.0]})
    finally:
        server.stop()
    assert parse_request(b'{"query": ["\\n\\nHuman: hi\\n\\nAssistant: ok"], "labels": [1]}') == [
        ("\n\nHuman: hi\n\nAssistant:", " ok")]


def test_serve_rm_command_serves_until_interrupted(tiny_reward_model):
    command = [sys.executable, "-m", "rmclean", "serve-rm", tiny_reward_model, "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ}, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = process.stdout.readline()
        assert "/get_reward" in line, line + process.stderr.read()
        url = line.split(" at ")[1].split(" ")[0]
        status, answer = _post(url, {"query": ["\n\nHuman: Is it safe?\n\nAssistant: a good answer"]})
        assert status == 200 and len(answer["rewards"]) == 1
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "served 1 request(s)" in out
