"""load_pairs on every dataset in ../shared/data (skipped when that folder is absent).

Expected counts come from the data's own README (computed independently of rmclean) and
from reading the raw files here with the standard library.
"""

from __future__ import annotations

import gzip
import json
import zipfile
from collections import Counter
from pathlib import Path

import pytest

import rmclean
from rmclean.data.formats import pair_id
from rmclean.data.sources import HH_SUBSETS

HH_COUNTS = {"harmless-base": 2312, "helpful-base": 2354, "helpful-online": 1137, "helpful-rejection-sampled": 2749}
# data/README: chosen == rejected, and dialogue prefix before the last Assistant turn differs.
HH_IDENTICAL = {"harmless-base": 0, "helpful-base": 2, "helpful-online": 2, "helpful-rejection-sampled": 32}
HH_DIFFERENT_HISTORY = {"harmless-base": 5, "helpful-base": 9, "helpful-online": 0, "helpful-rejection-sampled": 3}


def _raw_hh(data_dir: Path, subset: str) -> list[dict]:
    with gzip.open(data_dir / "hh-rlhf" / subset / "test.jsonl.gz", "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def _per_source_flags(pairs) -> dict[str, Counter]:
    counts: dict[str, Counter] = {}
    for source, flags in zip(pairs["source"], pairs["flags"]):
        counts.setdefault(source, Counter()).update(flags)
    return counts


@pytest.fixture(scope="module")
def hh_pairs(data_dir):
    return rmclean.load_pairs("hh-rlhf", data_dir=data_dir)


def test_hh_rlhf_all_four_test_splits(hh_pairs):
    assert len(hh_pairs) == 8552
    assert Counter(hh_pairs["source"]) == {f"hh-rlhf/{s}/test": n for s, n in HH_COUNTS.items()}
    assert list(hh_pairs.column_names) == list(rmclean.CANONICAL_COLUMNS)
    assert all(error is None for error in hh_pairs["error"])
    assert len(set(hh_pairs["pair_id"])) == 8552


def test_hh_rlhf_flag_counts_match_the_data_readme(hh_pairs):
    flags = _per_source_flags(hh_pairs)
    for subset in HH_SUBSETS:
        counted = flags.get(f"hh-rlhf/{subset}/test", Counter())
        assert counted["identical_responses"] == HH_IDENTICAL[subset], subset
        assert counted["different_history"] == HH_DIFFERENT_HISTORY[subset], subset


def test_hh_rlhf_split_loses_nothing(hh_pairs, data_dir):
    """prompt + response gives back each raw transcript, and rows keep the file order."""
    by_source: dict[str, list[int]] = {}
    for index, source in enumerate(hh_pairs["source"]):
        by_source.setdefault(source, []).append(index)
    prompts, chosen, rejected, rows = (hh_pairs[c] for c in ("prompt", "chosen", "rejected", "row"))
    for subset in HH_SUBSETS:
        raw = _raw_hh(data_dir, subset)
        indices = by_source[f"hh-rlhf/{subset}/test"]
        assert [rows[i] for i in indices] == list(range(len(raw)))
        for i, record in zip(indices, raw):
            assert prompts[i] + chosen[i] == record["chosen"]
            assert prompts[i] + rejected[i] == record["rejected"]
            assert prompts[i].endswith("\n\nAssistant:")


def test_hh_rlhf_empty_final_turns_are_flagged_not_errors(hh_pairs):
    flags = _per_source_flags(hh_pairs)
    assert [flags[f"hh-rlhf/{s}/test"]["empty_response"] for s in HH_SUBSETS] == [4, 4, 3, 0]


def test_hh_rlhf_subset_selection_and_ids_are_stable(data_dir, hh_pairs):
    harmless = rmclean.load_pairs("hh-rlhf", subset="harmless-base", data_dir=data_dir)
    assert len(harmless) == 2312
    assert harmless["pair_id"] == hh_pairs["pair_id"][:2312]
    first = harmless[0]
    assert first["pair_id"] == pair_id(first["prompt"], first["chosen"], first["rejected"])


def test_hh_rlhf_from_environment_variable(real_data_env):
    pairs = rmclean.load_pairs("hh-rlhf", subset=["helpful-online"], limit=10)
    assert len(pairs) == 10
    assert set(pairs["source"]) == {"hh-rlhf/helpful-online/test"}


def test_llmbar_gold_sets(data_dir):
    pairs = rmclean.load_pairs("llmbar", data_dir=data_dir)
    assert Counter(pairs["source"]) == {
        "llmbar/Natural/test": 100,
        "llmbar/Adversarial/Neighbor/test": 134,
        "llmbar/Adversarial/GPTInst/test": 92,
        "llmbar/Adversarial/GPTOut/test": 47,
        "llmbar/Adversarial/Manual/test": 46,
    }
    raw = json.loads((data_dir / "llmbar/LLMBar/Natural/dataset.json").read_text(encoding="utf-8"))
    natural = pairs.filter(lambda s: s == "llmbar/Natural/test", input_columns="source")
    for record, pair in zip(raw, natural):
        better, worse = ("output_1", "output_2") if record["label"] == 1 else ("output_2", "output_1")
        assert (pair["prompt"], pair["chosen"], pair["rejected"]) == (record["input"], record[better], record[worse])
        assert pair["original_label"] == str(record["label"])


def test_llmbar_processed_sets_need_allow_empty_for_one_blank_answer(data_dir):
    processed = ["Processed/FairEval", "Processed/LLMEval2", "Processed/MT-Bench"]
    with pytest.raises(rmclean.PairFormatError, match=r"Processed/LLMEval2/dataset\.json, line \d+: field 'output_2' is empty"):
        rmclean.load_pairs("llmbar", subset=processed, data_dir=data_dir)
    pairs = rmclean.load_pairs("llmbar", subset=processed, data_dir=data_dir, allow_empty=True)
    assert len(pairs) == 66 + 200 + 200
    assert Counter(f for flags in pairs["flags"] for f in flags)["empty_response"] == 1


def test_llmeval2_zip_with_ties(data_dir):
    with zipfile.ZipFile(data_dir / "llmeval2/LLMEval2_benchmark.json.zip") as archive:
        raw = [json.loads(line) for line in archive.read("LLMEval2_benchmark.json").decode().splitlines() if line.strip()]
    pairs = rmclean.load_pairs("llmeval2", data_dir=data_dir, allow_empty=True)
    assert len(pairs) == len(raw) == 2553
    flags = Counter(f for row in pairs["flags"] for f in row)
    assert flags["tie"] == sum(r["human"] == "TIE" for r in raw) == 482
    assert flags["empty_response"] == 13
    assert Counter(pairs["original_label"]) == Counter(r["human"] for r in raw)
    assert Counter(pairs["dataset"])["hh-rlhf"] == 140
    for record, pair in zip(raw[:200], pairs.select(range(200))):
        better = record["response2"] if record["human"] == "model2" else record["response1"]
        assert pair["chosen"] == better and pair["prompt"] == record["query"]


def test_llmeval2_empty_answers_are_errors_by_default_or_invalid_rows(data_dir):
    with pytest.raises(rmclean.PairFormatError) as caught:
        rmclean.load_pairs("llmeval2", data_dir=data_dir)
    assert "LLMEval2_benchmark.json, line 571: field 'response1' is empty" in str(caught.value)
    pairs = rmclean.load_pairs("llmeval2", data_dir=data_dir, on_error="skip")
    valid, invalid = rmclean.split_invalid(pairs)
    assert (len(valid), len(invalid)) == (2540, 13)
    assert all("is empty" in error for error in invalid["error"])


def test_auto_j_zero_based_labels(data_dir):
    raw = [json.loads(line) for line in (data_dir / "auto-j/testdata_pairwise.jsonl").open(encoding="utf-8")]
    pairs = rmclean.load_pairs("auto-j", data_dir=data_dir, allow_empty=True)
    assert len(pairs) == 1392
    assert Counter(f for row in pairs["flags"] for f in row)["tie"] == 373
    for record, pair in zip(raw, pairs):
        better = record["response 2"] if record["label"] == 1 else record["response 1"]
        assert pair["chosen"] == better
        assert pair["scenario"] == record["scenario"]
    # the one exact repeat in the file keeps its own row, with a distinct id and the flag
    assert len(set(pairs["pair_id"])) == 1392


def test_ultrafeedback_sample_score_ties(data_dir):
    train = rmclean.load_pairs("ultrafeedback-sample", data_dir=data_dir, allow_empty=True)
    evaluation = rmclean.load_pairs("ultrafeedback-sample", split="eval", data_dir=data_dir)
    assert (len(train), len(evaluation)) == (1000, 200)
    # data README: 111 train and 25 eval pairs have a score gap of 0
    assert sum("tie" in flags for flags in train["flags"]) == 111
    assert sum("tie" in flags for flags in evaluation["flags"]) == 25
    assert train[0]["metadata"] == {"score_chosen": 9.0, "score_rejected": 8.0}
    assert train[0]["prompt"] == "how to cook t-bone in the oven"


def test_hhh_alignment_pairs_and_wrapped_eval(data_dir):
    pairs = rmclean.load_pairs("hhh-alignment", data_dir=data_dir)
    assert len(pairs) == 221
    assert Counter(pairs["subset"]) == {"harmless": 58, "helpful": 59, "honest": 61, "other": 43}
    wrapped = rmclean.load_pairs(
        data_dir / "hhh-alignment/hhh_alignment_eval.json",
        chosen_key="chosen_instruction",
        rejected_key="rejected_instruction",
    )
    assert len(wrapped) == 221
    assert Counter(wrapped["input_source"]) == Counter(pairs["subset"])


@pytest.mark.parametrize(
    "relative, expected",
    [
        ("hh-rlhf/helpful-online/test.jsonl.gz", 1137),
        ("llmbar/LLMBar/Adversarial/Manual/dataset.json", 46),
        ("hhh-alignment/hhh_alignment_pairs.jsonl", 221),
        ("ultrafeedback-sample/eval_clean.jsonl", 200),
    ],
)
def test_files_by_path_match_named_loads(data_dir, relative, expected):
    pairs = rmclean.load_pairs(data_dir / relative)
    assert len(pairs) == expected
    assert set(pairs["source"]) == {str(data_dir / relative)}


def test_hh_folder_by_path(data_dir):
    pairs = rmclean.load_pairs(data_dir / "hh-rlhf", subset=["helpful-base"], split="test")
    assert len(pairs) == 2354
    assert set(pairs["source"]) == {"hh-rlhf/helpful-base/test.jsonl.gz"}
