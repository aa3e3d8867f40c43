"""Exports of denoised pairs, read back by their real consumers: ``datasets``, pandas, TRL's
``RewardTrainer``, and ``rmclean denoise`` end to end on real hh-rlhf pairs."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest

import rmclean
from rmclean.cli import main
from rmclean.denoise import DenoiseConfig, denoise_summary
from rmclean.export import MOSS_CHOSEN_SCORES, MOSS_GPT4, MOSS_MEAN, MOSS_STD, to_profile, to_turns, write_denoised
from rmclean.data.formats import pair_id
from rmclean.score import Scores


def _scores(pairs, strength_mean, members=4):
    offsets = np.linspace(-0.5, 0.5, members)
    return Scores(list(pairs["pair_id"]), np.asarray(strength_mean, float)[:, None] + offsets, "5-fold")


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _denoise_and_write(pairs, scores, folder, method="flip+margin", select="fraction:0.1", format="input"):
    config = DenoiseConfig(method=method, select=select)
    result = rmclean.denoise(pairs, scores, method=method, select=select)
    return result, write_denoised(result, denoise_summary(result, config, scores), folder, format)


def test_input_format_writes_hh_transcripts_back_and_they_reload(data_dir, tmp_path):
    pairs = rmclean.load_pairs("hh-rlhf", subset="harmless-base", limit=40, data_dir=data_dir)
    with gzip.open(data_dir / "hh-rlhf" / "harmless-base" / "test.jsonl.gz", "rt", encoding="utf-8") as handle:
        raw = [json.loads(next(handle)) for _ in range(40)]
    result, written = _denoise_and_write(pairs, _scores(pairs, np.linspace(-1, 2, 40)), tmp_path)
    cleaned = pd.read_json(written["cleaned.jsonl"], lines=True, dtype=False)
    assert list(cleaned.columns[:3]) == ["pair_id", "chosen", "rejected"]  # hh's own layout: no prompt column
    assert (cleaned["action"] == "flip").sum() == 4
    for row, original in zip(cleaned.itertuples(), raw):
        if row.action == "flip":  # written swapped, so consumers need not know
            assert (row.chosen, row.rejected) == (original["rejected"], original["chosen"])
        else:
            assert (row.chosen, row.rejected) == (original["chosen"], original["rejected"])
    reloaded = rmclean.load_pairs(written["cleaned.jsonl"])
    expected = [pair_id(p, r, c) if action == "flip" else identifier
                for p, c, r, action, identifier in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"],
                                                       result["action"], pairs["pair_id"])]
    assert reloaded["pair_id"] == expected


def test_every_file_of_the_spec_reads_back_with_datasets_and_pandas(tmp_path):
    import datasets

    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(30)]
    pairs = rmclean.load_pairs(_write_jsonl(tmp_path / "in.jsonl", rows))
    result, written = _denoise_and_write(pairs, _scores(pairs, np.linspace(-1, 2, 30)), tmp_path / "out",
                                         method="drop", select="negative")
    dropped_count = result["action"].count("drop")
    assert dropped_count == 10
    from_json = datasets.load_dataset("json", data_files=str(written["cleaned.jsonl"]), split="train")
    from_disk = datasets.load_from_disk(str(written["cleaned"]))
    from_parquet = pd.read_parquet(written["cleaned.parquet"])
    for table in (from_json.to_pandas(), from_disk.to_pandas(), from_parquet):
        assert len(table) == 20
        assert list(table.columns) == ["pair_id", "prompt", "chosen", "rejected", "margin", "soft_label",
                                       "strength_mean", "strength_std", "action", "reason"]
        assert set(table["action"]) == {"keep"}
    dropped = pd.read_json(written["dropped.jsonl"], lines=True)
    assert len(dropped) == dropped_count and set(dropped["action"]) == {"drop"}
    summary = json.loads(written["summary.json"].read_text())
    assert summary["counts"]["drop"] + summary["counts"]["keep"] == 30
    assert summary["written"] == {"cleaned": 20, "dropped_or_invalid": 10}
    assert not list((tmp_path / "out").glob("*.partial"))


def test_moss_profile_round_trips_hh_rlhf_strength_cleaned_columns(tmp_path):
    rows = [{"chosen": [f"q{i}", "a", f"q2 {i}", f"final {i}"], "rejected": [f"q{i}", "a", f"q2 {i}", f"other {i}"],
             "GPT4 label": i % 2, MOSS_MEAN: 0.0, MOSS_STD: 0.0, MOSS_CHOSEN_SCORES: [0.0], "rejected score list": [0.0]}
            for i in range(20)]
    pairs = rmclean.load_pairs(_write_jsonl(tmp_path / "moss.jsonl", rows))
    assert set(pairs["input_format"]) == {"turns"}
    scores = _scores(pairs, np.linspace(-1, 2, 20))
    result, written = _denoise_and_write(pairs, scores, tmp_path / "out", method="flip", select="fraction:0.1")
    cleaned = [json.loads(line) for line in written["cleaned.jsonl"].read_text().splitlines()]
    assert list(cleaned[0])[:7] == ["pair_id", "chosen", "rejected", MOSS_MEAN, MOSS_STD, MOSS_CHOSEN_SCORES,
                                    "rejected score list"]
    for row, original in zip(cleaned, rows):
        swapped = row["action"] == "flip"
        assert row["chosen"] == original["rejected" if swapped else "chosen"]  # the same turns, swapped on flips
        assert row[MOSS_GPT4] == (1 - original["GPT4 label"] if swapped else original["GPT4 label"])
        assert row[MOSS_MEAN] == pytest.approx(np.mean(row[MOSS_CHOSEN_SCORES]))
        assert row[MOSS_MEAN] > 0 if swapped else True
    assert sum(row["action"] == "flip" for row in cleaned) == 2
    again = rmclean.load_pairs(written["cleaned.jsonl"])  # MOSS in, MOSS out, MOSS in again
    assert set(again["input_format"]) == {"turns"} and len(again) == 20


def test_to_turns_inverts_the_moss_reader():
    assert to_turns("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: more\n\nAssistant:", " sure") == [
        "hi", "hello", "more", "sure"]
    assert to_turns("Write a poem", "Roses") == ["Write a poem", "Roses"]


def test_profiles_and_unknown_format(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(10)]
    pairs = rmclean.load_pairs(rows)
    result = rmclean.denoise(pairs, _scores(pairs, np.linspace(-1, 2, 10)), method="margin")
    assert list(to_profile(result, "openrlhf").columns[:4]) == ["pair_id", "prompt", "chosen", "rejected"]
    assert "member_margins" in to_profile(result, "canonical").columns
    with pytest.raises(ValueError, match="unknown export format 'tsv'"):
        to_profile(result, "tsv")


def test_a_failed_write_leaves_the_previous_folder_whole(tmp_path, monkeypatch):
    from rmclean import export
    from rmclean.files import verify_folder

    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(10)]
    pairs = rmclean.load_pairs(rows)
    result = rmclean.denoise(pairs, _scores(pairs, np.linspace(-1, 2, 10)), method="flip")
    write_denoised(result, {"run": "first"}, tmp_path / "out")
    before = {path.name: path.read_bytes() for path in (tmp_path / "out").iterdir() if path.is_file()}
    calls = {"n": 0}
    real_json_text = export.json_text

    def fail_halfway(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        return real_json_text(*args, **kwargs)

    monkeypatch.setattr(export, "json_text", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        write_denoised(result, {"run": "second"}, tmp_path / "out")
    after = {path.name: path.read_bytes() for path in (tmp_path / "out").iterdir() if path.is_file()}
    assert after == before  # the first run's folder, untouched: no new cleaned.jsonl next to old files
    assert verify_folder(tmp_path / "out", rerun="rerun") is not None
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]  # no staging folder left


# --- TRL reads the export, and the margin reaches its loss -----------------------------------------


def test_trl_reward_trainer_trains_on_the_export_and_uses_the_margin(tiny_backbone, tmp_path):
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    rows = [{"prompt": f"question {i}", "chosen": f" a good and helpful answer {i}",
             "rejected": f" a bad and rude answer {i}"} for i in range(24)]
    pairs = rmclean.load_pairs(rows)
    scores = _scores(pairs, np.linspace(-0.5, 3, 24))
    _, written = _denoise_and_write(pairs, scores, tmp_path / "out", method="flip+margin", format="trl")
    train = datasets.load_dataset("json", data_files=str(written["cleaned.jsonl"]), split="train")
    exported_margins = sorted(train["margin"])
    assert exported_margins[-1] == 1.0 and exported_margins[0] < exported_margins[-1]

    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    tokenizer.eos_token = tokenizer.sep_token  # TRL appends eos; BERT tokenizers have none
    model = AutoModelForSequenceClassification.from_pretrained(tiny_backbone, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(output_dir=str(tmp_path / "trl"), max_steps=3, per_device_train_batch_size=8,
                        learning_rate=1e-3, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                        max_length=64, dataloader_num_workers=0, seed=0)
    trainer = RewardTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    assert len(trainer.train_dataset) == 24  # no pair lost to the length filter

    batch = next(iter(trainer.get_train_dataloader()))
    assert "margin" in batch
    assert all(np.isclose(margin, exported_margins, atol=1e-6).any() for margin in batch["margin"].tolist())
    model.eval()
    with torch.no_grad():
        with_margin = trainer.compute_loss(model, dict(batch)).item()
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
        chosen, rejected = torch.chunk(rewards, 2)
        expected = -torch.nn.functional.logsigmoid(chosen - rejected - batch["margin"]).mean().item()
        without = dict(batch)
        without.pop("margin")
        without_margin = trainer.compute_loss(model, without).item()
    assert with_margin == pytest.approx(expected, rel=1e-5)
    assert with_margin > without_margin  # positive margins make the loss larger


# --- rmclean denoise end to end ------------------------------------------------------------------


@pytest.fixture(scope="module")
def scored_folder(data_dir, minilm_cache, tmp_path_factory):
    """A real ``rmclean score`` run on 120 harmless-base pairs (MiniLM, 3 members x 3 folds)."""
    folder = tmp_path_factory.mktemp("scored")
    cache = minilm_cache
    code = main(["score", "hh-rlhf", "--subset", "harmless-base", "--limit", "120", "--members", "3", "--folds", "3",
                 "--data-dir", str(data_dir), "--cache-dir", str(cache), "--out", str(folder), "--quiet"])
    assert code == 0
    return folder


@pytest.mark.parametrize("method", ["flip", "drop", "margin", "soft-label", "flip+margin", "soft-label+margin"])
def test_cli_denoise_every_method(scored_folder, tmp_path, capsys, method):
    out = tmp_path / method
    code = main(["denoise", str(scored_folder), "--method", method, "--out", str(out), "--examples", "2"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert sum(summary["counts"].values()) == 120
    changed = {"flip": "flip", "drop": "drop", "soft-label": "soften", "flip+margin": "flip",
               "soft-label+margin": "soften"}.get(method)
    if changed:
        assert summary["counts"][changed] == 12 and summary["select"] == "fraction:0.1"
        assert "[1] " + changed in printed and "labelled better:" in printed
    cleaned = pd.read_json(out / "cleaned.jsonl", lines=True)
    dropped = pd.read_json(out / "dropped.jsonl", lines=True) if (out / "dropped.jsonl").stat().st_size else []
    assert len(cleaned) + len(dropped) == 120
    assert (out / "plots" / "actions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "plots/actions.png" in printed
    if method.endswith("margin"):
        assert (cleaned["margin"] > 0).any() and cleaned["margin"].between(0, 1).all()


def test_cli_denoise_formats_and_bad_input(scored_folder, tmp_path, capsys, data_dir):
    assert main(["denoise", str(scored_folder), "--format", "moss", "--out", str(tmp_path / "moss")]) == 0
    moss = json.loads((tmp_path / "moss" / "cleaned.jsonl").read_text().splitlines()[0])
    assert isinstance(moss["chosen"], list) and MOSS_MEAN in moss
    capsys.readouterr()

    assert main(["denoise", str(tmp_path), "--out", str(tmp_path / "x")]) == 1
    assert "holds no scores.parquet" in capsys.readouterr().err
    assert main(["denoise", str(scored_folder), "--select", "fraction:2", "--out", str(tmp_path / "x")]) == 1
    assert "strictly between 0 and 1" in capsys.readouterr().err
    assert main(["denoise", str(scored_folder), "--method", "soft-label", "--alpha", "lots", "--out", str(tmp_path / "x")]) == 1
    assert "--alpha takes a number in [0, 1), 'members' or 'normal', not 'lots'" in capsys.readouterr().err
    # pairs the scores do not cover: an error, or with --allow-missing written as invalid and reported
    more = ["--source", str(data_dir / "hh-rlhf" / "harmless-base" / "test.jsonl.gz")]
    assert main(["denoise", str(scored_folder), *more, "--out", str(tmp_path / "x")]) == 1
    assert "have no score" in capsys.readouterr().err
    assert main(["denoise", str(scored_folder), *more, "--allow-missing", "--out", str(tmp_path / "partial")]) == 0
    assert "had no score and were written as invalid" in capsys.readouterr().out
    summary = json.loads((tmp_path / "partial" / "summary.json").read_text())
    assert summary["counts"]["invalid"] == summary["rows"] - 120
