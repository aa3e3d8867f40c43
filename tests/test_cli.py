"""The ``rmclean`` command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys


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


def test_a_planned_command_says_so_and_fails(capsys, monkeypatch):
    monkeypatch.setattr("rmclean.cli.PLANNED", {**PLANNED, "fly": 99})
    code, _, err = _run(capsys, "fly")
    assert code == 1
    assert "rmclean fly: not built yet (planned in issue #99)" in err
    for command in PLANNED:
        code, _, err = _run(capsys, command)
        assert code == 1 and f"rmclean {command}: not built yet" in err


def test_every_command_runs_something_and_every_setting_is_a_flag():
    from rmclean.audit import AuditConfig
    from rmclean.check import CheckConfig
    from rmclean.cli import build_parser
    from rmclean.configs import option_fields
    from rmclean.denoise import DenoiseConfig
    from rmclean.judge import JudgeConfig
    from rmclean.score import ScoreConfig
    from rmclean.train.ppo import PPOConfig
    from rmclean.train.reward import RewardTrainConfig

    commands = build_parser()._subparsers._group_actions[0].choices
    for name, parser in commands.items():
        assert name == "data" or parser.get_default("run") is not None, name
    configs = {"score": [ScoreConfig], "audit": [ScoreConfig, AuditConfig], "denoise": [DenoiseConfig],
               "check": [JudgeConfig, CheckConfig], "train-rm": [RewardTrainConfig], "ppo": [PPOConfig]}
    for name, classes in configs.items():
        options = {option for action in commands[name]._actions for option in action.option_strings}
        for cls in classes:
            for _, field, _ in option_fields(cls):
                assert field.metadata.get("help"), f"{cls.__name__}.{field.name} has no help"
                plain = field.name.replace("_", "-")
                assert {field.metadata.get("flag"), f"--{plain}", f"--no-{plain}"} & options, \
                    f"rmclean {name}: no flag for {cls.__name__}.{field.name}"


def test_installed_entry_point(real_data_env):
    executable = shutil.which("rmclean")
    command = [executable] if executable else [sys.executable, "-m", "rmclean"]
    result = subprocess.run(
        [*command, "data", "inspect", "hh-rlhf", "--subset", "harmless-base", "--json"],
        capture_output=True, text=True, env={**os.environ}, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pairs"] == 2312


# --- the mission's commands exactly as users type them --------------------------------------------


def test_each_command_reads_the_previous_commands_default_output(capsys, real_data_env, tmp_path, monkeypatch):
    """``rmclean score hh-rlhf`` then ``rmclean denoise --method flip`` then ``rmclean train-rm
    denoised/`` then ``rmclean check --dry-run`` in one folder, with no further arguments (score on
    a small subset, the one concession to CI time)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RMCLEAN_CACHE_DIR", str(tmp_path / "cache"))
    code, _, err = _run(capsys, "denoise", "--method", "flip")
    assert code == 1 and "no scores/ folder" in err and "`rmclean score SOURCE` writes it" in err
    code, _, err = _run(capsys, "train-rm")
    assert code == 1 and "no denoised/ folder" in err and "`rmclean denoise" in err

    code, out, err = _run(capsys, "score", "hh-rlhf", "--subset", "harmless-base", "--limit", "40", "--quiet")
    assert code == 0, err
    assert "scored 40 pairs" in out and (tmp_path / "scores" / "scores.parquet").is_file()
    code, out, err = _run(capsys, "denoise", "--method", "flip")
    assert code == 0, err
    assert "flip 4" in out
    summary = json.loads((tmp_path / "denoised" / "summary.json").read_text())
    assert summary["counts"]["flip"] == 4 and summary["scores_dir"] == str((tmp_path / "scores").resolve())
    code, out, err = _run(capsys, "train-rm", "denoised/", "--quiet")
    assert code == 0, err
    assert "on 40 pairs" in out and (tmp_path / "reward-model" / "model").is_dir()
    code, out, err = _run(capsys, "check", "--dry-run")
    assert code == 0, err
    assert "dry run: 40 pairs, 80 requests" in out
    # ppo's reward model defaults to train-rm's output folder: without one, the error names train-rm
    (tmp_path / "reward-model").rename(tmp_path / "elsewhere")
    code, _, err = _run(capsys, "ppo", "hh-rlhf")
    assert code == 1 and "no reward-model/ folder" in err and "`rmclean train-rm" in err
