"""The ``rmclean`` command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from rmclean.cli import PLANNED, main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_inspect_hh_rlhf_json(capsys, real_data_env):
    code, out, _ = _run(capsys, "data", "inspect", "hh-rlhf", "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["pairs"] == 8552 and summary["invalid"] == 0
    assert len(summary["sources"]) == 4
    assert summary["sources"]["hh-rlhf/helpful-rejection-sampled/test"]["pairs"] == 2749
    assert summary["flags"] == {"different_history": 17, "empty_response": 11, "identical_responses": 36}
    assert len(summary["examples"]) == 3
    lengths = summary["lengths"]["prompt"]["characters"]
    assert lengths["p5"] <= lengths["p50"] <= lengths["p95"] <= lengths["max"]


def test_inspect_hh_rlhf_human_report(capsys, real_data_env):
    code, out, _ = _run(capsys, "data", "inspect", "hh-rlhf", "--examples", "1")
    assert code == 0
    assert out.startswith("hh-rlhf: 8,552 pairs (8,552 valid, 0 invalid) from 4 source(s)")
    assert "hh-rlhf/harmless-base/test                2,312  different_history 5, empty_response 4" in out
    assert "identical_responses         36" in out
    assert out.count("  [") == 1  # one example


def test_source_options_reach_the_loader(capsys, data_dir):
    code, out, _ = _run(
        capsys, "data", "inspect", "hh-rlhf", "--data-dir", str(data_dir),
        "--subset", "helpful-base,helpful-online", "--split", "test", "--limit", "3000", "--json",
    )
    assert code == 0
    summary = json.loads(out)
    assert summary["pairs"] == 3000
    assert {k: v["pairs"] for k, v in summary["sources"].items()} == {
        "hh-rlhf/helpful-base/test": 2354,
        "hh-rlhf/helpful-online/test": 646,
    }


def test_key_mapping_and_on_error_skip(capsys, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        '{"q": "hi", "good": "hello", "bad": "go away"}\n'
        '{"q": "hi", "good": true, "bad": "go away"}\n',
        encoding="utf-8",
    )
    keys = ["--prompt-key", "q", "--chosen-key", "good", "--rejected-key", "bad"]
    code, _, err = _run(capsys, "data", "inspect", str(data), *keys)
    assert code == 1
    assert f"{data}, line 2: field 'good' must be text" in err
    code, out, _ = _run(capsys, "data", "inspect", str(data), *keys, "--on-error", "skip", "--json")
    summary = json.loads(out)
    assert (summary["pairs"], summary["valid"], summary["invalid"]) == (2, 1, 1)
    assert summary["errors"][0].startswith(f"{data}, line 2: field 'good'")


def test_missing_source_is_a_clear_error(capsys, tmp_path):
    code, _, err = _run(capsys, "data", "inspect", str(tmp_path / "nope.jsonl"))
    assert code == 1
    assert "nope.jsonl: no such file or folder" in err


@pytest.mark.parametrize("command", sorted(PLANNED))
def test_planned_commands_say_so_and_fail(capsys, command):
    args = {
        "score": ["hh-rlhf"], "audit": ["hh-rlhf"], "denoise": ["scores/"], "check": ["scores/"],
        "train-rm": ["data/"], "compare": ["config.yaml"], "ppo": [],
    }[command]
    code, _, err = _run(capsys, command, *args)
    assert code == 1
    assert f"rmclean {command}: not built yet" in err


def test_installed_entry_point(real_data_env):
    executable = shutil.which("rmclean")
    command = [executable] if executable else [sys.executable, "-m", "rmclean"]
    result = subprocess.run(
        [*command, "data", "inspect", "hh-rlhf", "--subset", "harmless-base", "--json"],
        capture_output=True, text=True, env={**os.environ}, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pairs"] == 2312
