"""Row formats and file formats accepted by ``rmclean.load_pairs``.

Every fixture is synthetic and written by the test itself into ``tmp_path``.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import zipfile
from pathlib import Path

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rmclean
from rmclean.data import formats

H, A = "\n\nHuman:", "\n\nAssistant:"


# --- helpers ---------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("hermetic")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def load_rows(tmp_path: Path, rows: list[dict], name: str = "data.jsonl", **kwargs):
    return rmclean.load_pairs(str(write_jsonl(tmp_path / name, rows)), **kwargs)


def col(ds, name: str) -> list:
    return list(ds[name])


def texts(ds) -> list[tuple[str, str, str]]:
    return list(zip(col(ds, "prompt"), col(ds, "chosen"), col(ds, "rejected")))


# --- hh transcripts (implicit prompt) -----------------------------------------------------


def test_hh_split_at_last_shared_assistant_turn(tmp_path):
    chosen = f"{H} Hi there{A} Hello! How can I help?{H} Tell me a joke{A} Why did the chicken cross the road?"
    rejected = f"{H} Hi there{A} Hello! How can I help?{H} Tell me a joke{A} No."
    ds = load_rows(tmp_path, [{"chosen": chosen, "rejected": rejected}])
    prompt = f"{H} Hi there{A} Hello! How can I help?{H} Tell me a joke{A}"
    assert texts(ds) == [(prompt, " Why did the chicken cross the road?", " No.")]
    assert ds[0]["prompt"] + ds[0]["chosen"] == chosen
    assert ds[0]["prompt"] + ds[0]["rejected"] == rejected
    assert col(ds, "flags") == [[]]
    assert col(ds, "error") == [None]
    assert ds.column_names == list(rmclean.CANONICAL_COLUMNS)


def test_hh_final_turns_starting_with_the_same_words(tmp_path):
    chosen = f"{H} Can you help me?{A} Sure, here is how you do it."
    rejected = f"{H} Can you help me?{A} Sure, but only tomorrow."
    ds = load_rows(tmp_path, [{"chosen": chosen, "rejected": rejected}])
    assert texts(ds) == [(f"{H} Can you help me?{A}", " Sure, here is how you do it.", " Sure, but only tomorrow.")]
    assert ds[0]["prompt"] + ds[0]["chosen"] == chosen
    assert col(ds, "flags") == [[]]


def test_hh_chosen_response_is_a_prefix_of_rejected(tmp_path):
    chosen = f"{H} Name a colour{A} Red"
    rejected = f"{H} Name a colour{A} Red and blue"
    ds = load_rows(tmp_path, [{"chosen": chosen, "rejected": rejected}])
    assert texts(ds) == [(f"{H} Name a colour{A}", " Red", " Red and blue")]
    assert col(ds, "flags") == [[]]


def test_hh_identical_responses_flagged(tmp_path):
    text = f"{H} hi{A} hello"
    ds = load_rows(tmp_path, [{"chosen": text, "rejected": text}])
    assert texts(ds) == [(f"{H} hi{A}", " hello", " hello")]
    assert col(ds, "flags") == [["identical_responses"]]


def test_hh_different_history_flagged(tmp_path):
    chosen = f"{H} hi{A} hello{H} one more thing{A} yes?"
    rejected = f"{H} hi{A} bye"
    ds = load_rows(tmp_path, [{"chosen": chosen, "rejected": rejected}])
    assert texts(ds) == [(f"{H} hi{A}", f" hello{H} one more thing{A} yes?", " bye")]
    assert ds[0]["prompt"] + ds[0]["chosen"] == chosen
    assert col(ds, "flags") == [["different_history"]]


def test_hh_empty_final_turn_is_flagged_not_an_error(tmp_path):
    chosen = f"{H} hi{A} "
    rejected = f"{H} hi{A} Hello, how can I help?"
    ds = load_rows(tmp_path, [{"chosen": chosen, "rejected": rejected}])  # on_error="raise"
    assert texts(ds) == [(f"{H} hi{A}", " ", " Hello, how can I help?")]
    assert col(ds, "flags") == [["empty_response"]]
    assert col(ds, "error") == [None]


def test_hh_transcripts_next_to_an_explicit_null_prompt(tmp_path):
    ds = load_rows(tmp_path, [{"prompt": None, "chosen": f"{H} q{A} a", "rejected": f"{H} q{A} b"}])
    assert texts(ds) == [(f"{H} q{A}", " a", " b")]


# --- TRL explicit / plain implicit strings --------------------------------------------------


def test_trl_explicit_prompt_kept_verbatim(tmp_path):
    rows = [{"prompt": "Translate 'chat'", "chosen": " cat", "rejected": "dog "}]
    ds = load_rows(tmp_path, rows)
    assert texts(ds) == [("Translate 'chat'", " cat", "dog ")]
    assert col(ds, "flags") == [[]]


def test_explicit_prompt_wins_over_hh_markers(tmp_path):
    rows = [{"prompt": "P", "chosen": f"{H} x{A} y", "rejected": f"{H} x{A} z"}]
    ds = load_rows(tmp_path, rows)
    assert texts(ds) == [("P", f"{H} x{A} y", f"{H} x{A} z")]


def test_plain_implicit_strings_without_markers_get_empty_prompt(tmp_path):
    ds = load_rows(tmp_path, [{"chosen": "good answer", "rejected": "bad answer"}])
    assert texts(ds) == [("", "good answer", "bad answer")]
    assert col(ds, "flags") == [[]]


# --- TRL conversational ------------------------------------------------------------------


USER = {"role": "user", "content": "What is the capital of France?"}
SYSTEM = {"role": "system", "content": "Answer briefly."}
GOOD = {"role": "assistant", "content": "Paris."}
BAD = {"role": "assistant", "content": "Lyon."}


def test_conversational_with_separate_prompt_list(tmp_path):
    ds = load_rows(tmp_path, [{"prompt": [SYSTEM, USER], "chosen": [GOOD], "rejected": [BAD]}])
    assert texts(ds) == [
        ("\n\nSystem: Answer briefly.\n\nHuman: What is the capital of France?\n\nAssistant:", " Paris.", " Lyon.")
    ]
    assert col(ds, "flags") == [[]]


def test_conversational_without_prompt_list(tmp_path):
    ds = load_rows(tmp_path, [{"chosen": [USER, GOOD], "rejected": [USER, BAD]}])
    assert texts(ds) == [("\n\nHuman: What is the capital of France?\n\nAssistant:", " Paris.", " Lyon.")]


def test_conversational_multi_turn_shares_all_but_last_answer(tmp_path):
    history = [USER, GOOD, {"role": "user", "content": "And of Italy?"}]
    chosen = history + [{"role": "assistant", "content": "Rome."}]
    rejected = history + [{"role": "assistant", "content": "Milan."}]
    ds = load_rows(tmp_path, [{"chosen": chosen, "rejected": rejected}])
    prompt = "\n\nHuman: What is the capital of France?\n\nAssistant: Paris.\n\nHuman: And of Italy?\n\nAssistant:"
    assert texts(ds) == [(prompt, " Rome.", " Milan.")]
    assert col(ds, "flags") == [[]]


def test_conversational_string_prompt_with_message_responses(tmp_path):
    ds = load_rows(tmp_path, [{"prompt": "hi", "chosen": [GOOD], "rejected": [BAD]}])
    assert texts(ds) == [("\n\nHuman: hi\n\nAssistant:", " Paris.", " Lyon.")]


def test_conversational_extra_turn_flags_different_history(tmp_path):
    chosen = [USER, GOOD, {"role": "user", "content": "sure?"}, {"role": "assistant", "content": "Yes."}]
    ds = load_rows(tmp_path, [{"chosen": chosen, "rejected": [USER, BAD]}])
    assert texts(ds) == [
        ("\n\nHuman: What is the capital of France?\n\nAssistant:", " Paris.\n\nHuman: sure?\n\nAssistant: Yes.", " Lyon.")
    ]
    assert col(ds, "flags") == [["different_history"]]


def test_render_messages_role_names():
    assert formats.ROLE_NAMES["user"] == "Human"
    assert formats.ROLE_NAMES["system"] == "System"
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
        {"role": "tool", "content": "t"},
    ]
    assert formats.render_messages(messages) == "\n\nSystem: s\n\nHuman: u\n\nAssistant: a\n\nTool: t"


class FakeTokenizer:
    """A deterministic stand-in for a tokenizer with a chat template."""

    def __init__(self):
        self.calls: list[tuple[list[str], bool, bool]] = []

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        self.calls.append(([m["role"] for m in messages], tokenize, add_generation_prompt))
        text = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)
        return text + ("<|assistant|>" if add_generation_prompt else "")


def test_conversational_uses_given_chat_template(tmp_path):
    tokenizer = FakeTokenizer()
    ds = load_rows(
        tmp_path, [{"prompt": [SYSTEM, USER], "chosen": [GOOD], "rejected": [BAD]}], chat_template=tokenizer
    )
    prompt = "<|system|>Answer briefly.<|end|><|user|>What is the capital of France?<|end|><|assistant|>"
    assert texts(ds) == [(prompt, "Paris.<|end|>", "Lyon.<|end|>")]
    # the prompt is rendered with a generation prompt, the full conversations without
    assert (["system", "user"], False, True) in tokenizer.calls
    assert (["system", "user", "assistant"], False, False) in tokenizer.calls
    assert all(tokenize is False for _, tokenize, _ in tokenizer.calls)


# --- MOSS-RLHF lists of turns -----------------------------------------------------------


def test_moss_lists_of_turns_and_strength_columns(tmp_path):
    rows = [
        {
            "chosen": ["q", "a", "q2", "final"],
            "rejected": ["q", "a", "q2", "other"],
            "GPT4 label": 1,
            "mean preference difference": 0.75,
            "std preference difference": 0.125,
            "chosen score list": [1.5, 2.25, -0.5],
            "rejected score list": [0.5, 0.25, -1.0],
        },
        {
            "chosen": ["hello", "hi!"],
            "rejected": ["hello", "go away"],
            "GPT4 label": 0,
            "mean preference difference": -1.5,
            "std preference difference": 0.0,
            "chosen score list": [0.0],
            "rejected score list": [3.0],
        },
    ]
    ds = load_rows(tmp_path, rows)
    assert texts(ds) == [
        (f"{H} q{A} a{H} q2{A}", " final", " other"),
        (f"{H} hello{A}", " hi!", " go away"),
    ]
    assert col(ds, "flags") == [[], []]
    assert ds.column_names == list(rmclean.CANONICAL_COLUMNS) + [
        "GPT4 label", "mean preference difference", "std preference difference",
        "chosen score list", "rejected score list",
    ]
    assert col(ds, "GPT4 label") == [1, 0]
    assert col(ds, "mean preference difference") == [0.75, -1.5]
    assert col(ds, "chosen score list") == [[1.5, 2.25, -0.5], [0.0]]
    assert col(ds, "rejected score list") == [[0.5, 0.25, -1.0], [3.0]]


def test_moss_different_history_flag(tmp_path):
    ds = load_rows(tmp_path, [{"chosen": ["q", "a", "q2", "x"], "rejected": ["q", "b", "q2", "y"]}])
    assert texts(ds) == [(f"{H} q{A}", f" a{H} q2{A} x", f" b{H} q2{A} y")]
    assert col(ds, "flags") == [["different_history"]]


# --- pairwise judgements ------------------------------------------------------------------


def test_response1_response2_one_based_labels(tmp_path):
    rows = [
        {"query": "q1", "response1": "A1", "response2": "B1", "label": 1},
        {"query": "q2", "response1": "A2", "response2": "B2", "label": 2},
        {"query": "q3", "response1": "A3", "response2": "B3", "label": 0},
    ]
    ds = load_rows(tmp_path, rows)
    assert texts(ds) == [("q1", "A1", "B1"), ("q2", "B2", "A2"), ("q3", "A3", "B3")]
    assert col(ds, "flags") == [[], [], ["tie"]]
    assert col(ds, "original_label") == ["1", "2", "0"]
    assert ds.column_names == list(rmclean.CANONICAL_COLUMNS) + ["original_label"]


def test_autoj_zero_based_labels(tmp_path):
    rows = [
        {"prompt": "p0", "response 1": "A", "response 2": "B", "label": 0, "source": "autoj-src"},
        {"prompt": "p1", "response 1": "A", "response 2": "B", "label": 1, "source": "autoj-src"},
        {"prompt": "p2", "response 1": "A", "response 2": "B", "label": 2, "source": "autoj-src"},
    ]
    ds = load_rows(tmp_path, rows)
    assert texts(ds) == [("p0", "A", "B"), ("p1", "B", "A"), ("p2", "A", "B")]
    assert col(ds, "flags") == [[], [], ["tie"]]
    assert col(ds, "original_label") == ["0", "1", "2"]
    # an input field named like a canonical column is kept under an input_ prefix
    assert col(ds, "source") == [str(tmp_path / "data.jsonl")] * 3
    assert col(ds, "input_source") == ["autoj-src"] * 3


def test_llmbar_output_1_output_2_with_input_prompt(tmp_path):
    rows = [
        {"input": "Write a haiku.", "output_1": "O1", "output_2": "O2", "label": 2},
        {"input": "Say hi.", "output_1": "hi", "output_2": "bye", "label": 1},
    ]
    ds = load_rows(tmp_path, rows, name="dataset.json")
    assert texts(ds) == [("Write a haiku.", "O2", "O1"), ("Say hi.", "hi", "bye")]
    assert col(ds, "original_label") == ["2", "1"]
    assert col(ds, "flags") == [[], []]


def test_llmeval2_human_model1_model2_tie(tmp_path):
    rows = [
        {"query": "q1", "response1": "r1a", "response2": "r1b", "human": "model1"},
        {"query": "q2", "response1": "r2a", "response2": "r2b", "human": "model2"},
        {"query": "q3", "response1": "r3a", "response2": "r3b", "human": "TIE"},
    ]
    ds = load_rows(tmp_path, rows)
    assert texts(ds) == [("q1", "r1a", "r1b"), ("q2", "r2b", "r2a"), ("q3", "r3a", "r3b")]
    assert col(ds, "flags") == [[], [], ["tie"]]
    assert col(ds, "original_label") == ["model1", "model2", "TIE"]


def test_pandalm_instruction_and_input_joined(tmp_path):
    rows = [
        {"idx": 7, "instruction": "Summarise the text.", "input": "Cats sleep a lot.",
         "response1": "Cats nap.", "response2": "Dogs bark.", "annotator1": 1},
        {"idx": 8, "instruction": "Name a prime.", "input": "",
         "response1": "4", "response2": "7", "annotator1": 2},
    ]
    ds = load_rows(tmp_path, rows, label_key="annotator1")
    assert texts(ds) == [
        ("Summarise the text.\n\nCats sleep a lot.", "Cats nap.", "Dogs bark."),
        ("Name a prime.", "7", "4"),
    ]
    assert col(ds, "idx") == [7, 8]
    assert col(ds, "original_label") == ["1", "2"]
    assert "instruction" not in ds.column_names and "input" not in ds.column_names


def test_label_map_response_keys_and_label_key_overrides(tmp_path):
    rows = [
        {"q": "x", "left": "L1", "right": "R1", "verdict": "LEFT"},
        {"q": "y", "left": "L2", "right": "R2", "verdict": "RIGHT"},
        {"q": "z", "left": "L3", "right": "R3", "verdict": "SAME"},
    ]
    ds = load_rows(
        tmp_path, rows, response_keys=("left", "right"), label_key="verdict", prompt_key="q",
        label_map={"LEFT": "first", "RIGHT": "second", "SAME": "tie"},
    )
    assert texts(ds) == [("x", "L1", "R1"), ("y", "R2", "L2"), ("z", "L3", "R3")]
    assert col(ds, "flags") == [[], [], ["tie"]]
    assert col(ds, "original_label") == ["LEFT", "RIGHT", "SAME"]
    assert ds.column_names == list(rmclean.CANONICAL_COLUMNS) + ["original_label"]


def test_label_map_overrides_builtin_meaning_of_numbers(tmp_path):
    rows = [{"response1": "A", "response2": "B", "label": 1}, {"response1": "C", "response2": "D", "label": 2}]
    ds = load_rows(tmp_path, rows, label_map={1: "second", 2: "first"})
    assert texts(ds) == [("", "B", "A"), ("", "C", "D")]


def test_unknown_label_raises_naming_label_field(tmp_path):
    rows = [{"response1": "A", "response2": "B", "label": 1}, {"response1": "A", "response2": "B", "label": "maybe"}]
    path = write_jsonl(tmp_path / "judged.jsonl", rows)
    with pytest.raises(rmclean.PairFormatError) as info:
        rmclean.load_pairs(str(path))
    assert info.value.field == "label"
    assert info.value.location == f"{path}, line 2"
    assert "field 'label'" in str(info.value)
    assert "'maybe'" in str(info.value)


def test_label_missing_from_label_map_raises(tmp_path):
    rows = [{"response1": "A", "response2": "B", "verdict": "other"}]
    with pytest.raises(rmclean.PairFormatError) as info:
        load_rows(tmp_path, rows, label_key="verdict", label_map={"a": "first"})
    assert info.value.field == "verdict"
    assert "label 'other' in field 'verdict' is not in label_map" in str(info.value)


def test_label_map_to_invalid_verdict_raises(tmp_path):
    rows = [{"response1": "A", "response2": "B", "label": "x"}]
    with pytest.raises(rmclean.PairFormatError) as info:
        load_rows(tmp_path, rows, label_map={"x": "left"})
    assert info.value.field == "label"
    assert "'left'" in str(info.value)


def test_missing_label_field_raises(tmp_path):
    with pytest.raises(rmclean.PairFormatError) as info:
        load_rows(tmp_path, [{"response1": "A", "response2": "B"}])
    assert info.value.field == "label"
    assert "field 'label' is missing" in str(info.value)


def test_int_keyed_label_map_matches_csv_string_labels(tmp_path):
    path = tmp_path / "judged.csv"
    path.write_text("response1,response2,label\nA,B,1\nC,D,2\n", encoding="utf-8")
    ds = rmclean.load_pairs(str(path), label_map={1: "second", 2: "first"})
    assert texts(ds) == [("", "B", "A"), ("", "C", "D")]


def test_unhashable_label_with_label_map_is_an_invalid_row(tmp_path):
    rows = [{"response1": "A", "response2": "B", "label": "L"}, {"response1": "A", "response2": "B", "label": [1]}]
    ds = load_rows(tmp_path, rows, label_map={"L": "first"}, on_error="skip")
    assert col(ds, "flags") == [[], ["invalid"]]
    assert "field 'label'" in ds[1]["error"]


# --- column mapping ------------------------------------------------------------------------


def test_column_mapping_keys(tmp_path):
    rows = [
        {"question": "Q1", "good": "G1", "bad": "B1", "meta": "m1"},
        {"question": "Q2", "good": "G2", "bad": "B2", "meta": "m2"},
    ]
    ds = load_rows(tmp_path, rows, prompt_key="question", chosen_key="good", rejected_key="bad")
    assert texts(ds) == [("Q1", "G1", "B1"), ("Q2", "G2", "B2")]
    assert ds.column_names == list(rmclean.CANONICAL_COLUMNS) + ["meta"]
    assert col(ds, "meta") == ["m1", "m2"]


def test_column_mapping_without_prompt_splits_hh(tmp_path):
    rows = [{"winner": f"{H} q{A} w", "loser": f"{H} q{A} l"}]
    ds = load_rows(tmp_path, rows, chosen_key="winner", rejected_key="loser")
    assert texts(ds) == [(f"{H} q{A}", " w", " l")]


# --- UltraFeedback scores -------------------------------------------------------------------


def test_ultrafeedback_metadata_scores(tmp_path):
    rows = [
        {"prompt": "p1", "chosen": "c1", "rejected": "r1", "metadata": {"score_chosen": 8.0, "score_rejected": 3.5}},
        {"prompt": "p2", "chosen": "c2", "rejected": "r2", "metadata": {"score_chosen": 5.0, "score_rejected": 5.0}},
        {"prompt": "p3", "chosen": "c3", "rejected": "r3", "metadata": {"score_chosen": 2.0, "score_rejected": 6.0}},
    ]
    ds = load_rows(tmp_path, rows)
    assert col(ds, "flags") == [[], ["tie"], ["score_reversed"]]
    assert col(ds, "metadata") == [
        {"score_chosen": 8.0, "score_rejected": 3.5},
        {"score_chosen": 5.0, "score_rejected": 5.0},
        {"score_chosen": 2.0, "score_rejected": 6.0},
    ]


def test_ultrafeedback_top_level_scores_with_messages(tmp_path):
    rows = [
        {"prompt": "hi", "chosen": [GOOD], "rejected": [BAD], "score_chosen": 4, "score_rejected": 4},
        {"prompt": "hi", "chosen": [BAD], "rejected": [GOOD], "score_chosen": 1, "score_rejected": 9},
    ]
    ds = load_rows(tmp_path, rows)
    assert col(ds, "flags") == [["tie"], ["score_reversed"]]
    assert texts(ds) == [("\n\nHuman: hi\n\nAssistant:", " Paris.", " Lyon."), ("\n\nHuman: hi\n\nAssistant:", " Lyon.", " Paris.")]
    assert col(ds, "score_chosen") == [4, 1]


# --- pair ids --------------------------------------------------------------------------------


HEX16 = re.compile(r"^[0-9a-f]{16}$")


def test_pair_id_stable_across_files_and_formats(tmp_path):
    pair = {"prompt": "P", "chosen": "C", "rejected": "R"}
    first = load_rows(tmp_path, [{"prompt": "other", "chosen": "x", "rejected": "y"}, pair], name="one.jsonl")
    second_path = tmp_path / "two.csv"
    with open(second_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["prompt", "chosen", "rejected"])
        writer.writeheader()
        writer.writerow(pair)
    second = rmclean.load_pairs(str(second_path))
    expected = formats.pair_id("P", "C", "R")
    assert HEX16.match(expected)
    assert first[1]["pair_id"] == expected
    assert second[0]["pair_id"] == expected
    assert first[0]["pair_id"] == formats.pair_id("other", "x", "y") != expected


def test_pair_id_of_hh_pair_uses_split_texts(tmp_path):
    ds = load_rows(tmp_path, [{"chosen": f"{H} q{A} a", "rejected": f"{H} q{A} b"}])
    assert ds[0]["pair_id"] == formats.pair_id(f"{H} q{A}", " a", " b")


def test_pair_id_changes_when_chosen_and_rejected_swap(tmp_path):
    ds = load_rows(tmp_path, [{"prompt": "P", "chosen": "C", "rejected": "R"}, {"prompt": "P", "chosen": "R", "rejected": "C"}])
    ids = col(ds, "pair_id")
    assert all(HEX16.match(i) for i in ids)
    assert ids[0] != ids[1]
    assert ids[1] == formats.pair_id("P", "R", "C")
    assert col(ds, "flags") == [[], []]


def test_repeated_rows_get_suffixed_ids_and_duplicate_flag(tmp_path):
    pair = {"prompt": "P", "chosen": "C", "rejected": "R"}
    other = {"prompt": "P", "chosen": "C", "rejected": "R2"}
    ds = load_rows(tmp_path, [pair, other, pair, pair])
    base = formats.pair_id("P", "C", "R")
    assert col(ds, "pair_id") == [base, formats.pair_id("P", "C", "R2"), f"{base}-2", f"{base}-3"]
    assert col(ds, "flags") == [[], [], ["duplicate"], ["duplicate"]]


# --- the same pairs in every container ------------------------------------------------------


PAIRS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": 'Say "hi", politely', "chosen": "Hi, there!\nHow are you?", "rejected": "hi"},
    {"prompt": "Grüße auf Deutsch", "chosen": "Hallo 👋", "rejected": "Tschüss"},
]
EXPECTED_TEXTS = [(p["prompt"], p["chosen"], p["rejected"]) for p in PAIRS]
OTHER = {"prompt": "not me", "chosen": "no", "rejected": "nope"}


def _jsonl(tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = [json.dumps(p, ensure_ascii=False) for p in PAIRS]
    # blank lines (also white-space-only ones) are skipped and do not count as records
    path.write_text("\n" + lines[0] + "\n\n   \n" + lines[1] + "\n" + lines[2], encoding="utf-8")
    return str(path), {}, [str(path)] * 3, [0, 1, 2]


def _jsonl_gz(tmp_path):
    path = tmp_path / "pairs.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(p) + "\n" for p in PAIRS).encode("utf-8")))
    return str(path), {}, [str(path)] * 3, [0, 1, 2]


def _json_array(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(PAIRS, indent=2, ensure_ascii=False), encoding="utf-8")
    return str(path), {}, [str(path)] * 3, [0, 1, 2]


def _json_holding_jsonl(tmp_path):
    path = tmp_path / "benchmark.json"
    path.write_bytes("\r\n".join(json.dumps(p, ensure_ascii=False) for p in PAIRS).encode("utf-8") + b"\r\n")
    return str(path), {}, [str(path)] * 3, [0, 1, 2]


def _parquet(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(PAIRS), path)
    return str(path), {}, [str(path)] * 3, [0, 1, 2]


def _csv(tmp_path):
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["prompt", "chosen", "rejected"])
        writer.writeheader()
        writer.writerows(PAIRS)
    return str(path), {}, [str(path)] * 3, [0, 1, 2]


def _zip(tmp_path):
    path = tmp_path / "pairs.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("pairs/data.jsonl", "".join(json.dumps(p) + "\n" for p in PAIRS))
        archive.writestr("__MACOSX/._x", b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
        archive.writestr("__MACOSX/pairs/._data.jsonl", b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    return str(path), {}, [str(path)] * 3, [0, 1, 2]


def _save_to_disk(tmp_path):
    path = tmp_path / "saved"
    datasets.Dataset.from_list(PAIRS).save_to_disk(str(path))
    return str(path), {}, [str(path)] * 3, [0, 1, 2]


def _dataset_dict(tmp_path):
    path = tmp_path / "saved_dict"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list([OTHER]), "test": datasets.Dataset.from_list(PAIRS)}
    ).save_to_disk(str(path))
    return str(path), {"split": "test"}, [f"{path}:test"] * 3, [0, 1, 2]


def _folder(tmp_path):
    root = tmp_path / "corpus"
    write_jsonl(root / "sub_a" / "test-00.jsonl", PAIRS[:2])
    write_jsonl(root / "sub_a" / "test_01.jsonl", PAIRS[2:])
    # distractors: another split, a name that only starts with the split, a hidden file, another subset
    write_jsonl(root / "sub_a" / "train.jsonl", [OTHER])
    write_jsonl(root / "sub_a" / "testing.jsonl", [OTHER])
    write_jsonl(root / "sub_a" / ".test_hidden.jsonl", [OTHER])
    write_jsonl(root / "sub_b" / "test.jsonl", [OTHER])
    (root / "sub_a" / "test_notes.txt").write_text("not data")
    sources = ["corpus/sub_a/test-00.jsonl", "corpus/sub_a/test-00.jsonl", "corpus/sub_a/test_01.jsonl"]
    return str(root), {"subset": "sub_a", "split": "test"}, sources, [0, 1, 0]


def _in_memory_dataset(tmp_path):
    return datasets.Dataset.from_list(PAIRS), {}, ["<dataset>"] * 3, [0, 1, 2]


def _in_memory_dataset_dict(tmp_path):
    rows = datasets.DatasetDict({"train": datasets.Dataset.from_list([OTHER]), "test": datasets.Dataset.from_list(PAIRS)})
    return rows, {"split": "test"}, ["<dataset:test>"] * 3, [0, 1, 2]


def _dataframe(tmp_path):
    return pd.DataFrame(PAIRS), {}, ["<dataframe>"] * 3, [0, 1, 2]


def _list_of_dicts(tmp_path):
    return [dict(p) for p in PAIRS], {}, ["<rows>"] * 3, [0, 1, 2]


CONTAINERS = {
    "jsonl": _jsonl,
    "jsonl.gz": _jsonl_gz,
    "json-array": _json_array,
    "json-holding-jsonl": _json_holding_jsonl,
    "parquet": _parquet,
    "csv": _csv,
    "zip": _zip,
    "save_to_disk": _save_to_disk,
    "dataset_dict-save_to_disk": _dataset_dict,
    "folder": _folder,
    "Dataset": _in_memory_dataset,
    "DatasetDict": _in_memory_dataset_dict,
    "DataFrame": _dataframe,
    "list-of-dicts": _list_of_dicts,
}


@pytest.mark.parametrize("container", list(CONTAINERS))
def test_every_container_gives_the_same_pairs(tmp_path, container):
    source, kwargs, expected_sources, expected_rows = CONTAINERS[container](tmp_path)
    ds = rmclean.load_pairs(source, **kwargs)
    assert texts(ds) == EXPECTED_TEXTS
    assert col(ds, "source") == expected_sources
    assert col(ds, "row") == expected_rows
    assert col(ds, "flags") == [[], [], []]
    assert col(ds, "error") == [None, None, None]
    assert ds.column_names == list(rmclean.CANONICAL_COLUMNS)
    assert col(ds, "pair_id") == [formats.pair_id(*t) for t in EXPECTED_TEXTS]


def test_pair_ids_agree_across_containers(tmp_path):
    ids = set()
    for name in ("jsonl", "parquet", "csv", "zip", "DataFrame"):
        (tmp_path / name).mkdir()
        source, kwargs, _, _ = CONTAINERS[name](tmp_path / name)
        ids.add(tuple(col(rmclean.load_pairs(source, **kwargs), "pair_id")))
    assert ids == {tuple(formats.pair_id(*t) for t in EXPECTED_TEXTS)}


def test_json_gz_holding_a_json_array(tmp_path):
    path = tmp_path / "pairs.json.gz"
    path.write_bytes(gzip.compress(json.dumps(PAIRS, indent=2, ensure_ascii=False).encode("utf-8")))
    ds = rmclean.load_pairs(str(path))
    assert texts(ds) == EXPECTED_TEXTS


def test_json_gz_array_inside_zip(tmp_path):
    path = tmp_path / "pairs.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("pairs.json.gz", gzip.compress(json.dumps(PAIRS, indent=2).encode("utf-8")))
    ds = rmclean.load_pairs(str(path))
    assert texts(ds) == EXPECTED_TEXTS
    assert col(ds, "row") == [0, 1, 2]


def test_folder_without_subset_or_split_reads_every_file_in_order(tmp_path):
    write_jsonl(tmp_path / "corpus" / "b" / "test.jsonl", PAIRS[1:])
    write_jsonl(tmp_path / "corpus" / "a" / "train.jsonl", PAIRS[:1])
    ds = rmclean.load_pairs(str(tmp_path / "corpus"))
    assert texts(ds) == EXPECTED_TEXTS
    assert col(ds, "source") == ["corpus/a/train.jsonl", "corpus/b/test.jsonl", "corpus/b/test.jsonl"]
    assert col(ds, "row") == [0, 0, 1]


def test_folder_with_several_subsets(tmp_path):
    write_jsonl(tmp_path / "corpus" / "x" / "test.jsonl", PAIRS[:1])
    write_jsonl(tmp_path / "corpus" / "y" / "test.jsonl", PAIRS[1:])
    write_jsonl(tmp_path / "corpus" / "z" / "test.jsonl", [OTHER])
    ds = rmclean.load_pairs(str(tmp_path / "corpus"), subset=["x", "y"])
    assert texts(ds) == EXPECTED_TEXTS
    assert col(ds, "source") == ["corpus/x/test.jsonl", "corpus/y/test.jsonl", "corpus/y/test.jsonl"]


def test_dataset_dict_folder_without_split_reads_all_splits(tmp_path):
    path = tmp_path / "saved_dict"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(PAIRS[:1]), "test": datasets.Dataset.from_list(PAIRS[1:])}
    ).save_to_disk(str(path))
    ds = rmclean.load_pairs(str(path))
    assert texts(ds) == EXPECTED_TEXTS
    assert col(ds, "source") == [f"{path}:train", f"{path}:test", f"{path}:test"]
    assert col(ds, "row") == [0, 0, 1]


def test_parquet_keeps_extra_columns_and_reads_null_prompt_as_implicit(tmp_path):
    path = tmp_path / "mixed.parquet"
    pq.write_table(
        pa.Table.from_pylist([
            {"prompt": "P", "chosen": "C", "rejected": "R", "id": 10},
            {"prompt": None, "chosen": f"{H} q{A} a", "rejected": f"{H} q{A} b", "id": 11},
        ]),
        path,
    )
    ds = rmclean.load_pairs(str(path))
    assert texts(ds) == [("P", "C", "R"), (f"{H} q{A}", " a", " b")]
    assert col(ds, "id") == [10, 11]


def test_dataframe_missing_prompt_is_treated_as_null(tmp_path):
    frame = pd.DataFrame([
        {"prompt": "P", "chosen": "C", "rejected": "R"},
        {"prompt": None, "chosen": f"{H} q{A} a", "rejected": f"{H} q{A} b"},
    ])
    ds = rmclean.load_pairs(frame)
    assert texts(ds) == [("P", "C", "R"), (f"{H} q{A}", " a", " b")]


# --- limit, named sources -------------------------------------------------------------------


SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")


def hh_pair(tag: str) -> dict:
    return {"chosen": f"{H} question {tag}{A} good {tag}", "rejected": f"{H} question {tag}{A} bad {tag}"}


def make_hh_root(root: Path) -> Path:
    """``root/hh-rlhf/<subset>/{test,train}.jsonl.gz``: two test pairs and one train pair per subset."""
    for subset in SUBSETS:
        folder = root / "hh-rlhf" / subset
        folder.mkdir(parents=True)
        test_rows = [hh_pair(f"{subset}-0"), hh_pair(f"{subset}-1")]
        (folder / "test.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in test_rows).encode()))
        (folder / "train.jsonl.gz").write_bytes(gzip.compress((json.dumps(hh_pair(f"{subset}-train")) + "\n").encode()))
    return root


def expected_hh(subsets=SUBSETS, split="test"):
    tags = [f"{s}-{i}" for s in subsets for i in (0, 1)] if split == "test" else [f"{s}-train" for s in subsets]
    return [(f"{H} question {t}{A}", f" good {t}", f" bad {t}") for t in tags]


def test_named_hh_rlhf_from_data_dir_root(tmp_path):
    root = make_hh_root(tmp_path / "data")
    ds = rmclean.load_pairs("hh-rlhf", data_dir=root)
    assert texts(ds) == expected_hh()
    assert col(ds, "source") == [f"hh-rlhf/{s}/test" for s in SUBSETS for _ in (0, 1)]
    assert col(ds, "row") == [0, 1] * 4
    assert col(ds, "flags") == [[]] * 8


def test_named_hh_rlhf_from_its_own_folder(tmp_path):
    root = make_hh_root(tmp_path / "data")
    ds = rmclean.load_pairs("hh-rlhf", data_dir=str(root / "hh-rlhf"))
    assert texts(ds) == expected_hh()
    assert col(ds, "source") == [f"hh-rlhf/{s}/test" for s in SUBSETS for _ in (0, 1)]


def test_named_hh_rlhf_from_env_var(tmp_path, monkeypatch):
    root = make_hh_root(tmp_path / "data")
    monkeypatch.setenv("RMCLEAN_DATA_DIR", str(root))
    ds = rmclean.load_pairs("hh-rlhf", subset="helpful-online")
    assert texts(ds) == expected_hh(["helpful-online"])
    assert col(ds, "source") == ["hh-rlhf/helpful-online/test"] * 2


def test_named_hh_rlhf_data_dir_wins_over_env_var(tmp_path, monkeypatch):
    other = tmp_path / "other" / "hh-rlhf" / "harmless-base"
    other.mkdir(parents=True)
    (other / "test.jsonl.gz").write_bytes(gzip.compress((json.dumps(hh_pair("env")) + "\n").encode()))
    monkeypatch.setenv("RMCLEAN_DATA_DIR", str(tmp_path / "other"))
    root = make_hh_root(tmp_path / "data")
    assert texts(rmclean.load_pairs("hh-rlhf", subset="harmless-base", data_dir=root)) == expected_hh(["harmless-base"])
    assert texts(rmclean.load_pairs("hh-rlhf", subset="harmless-base")) == [
        (f"{H} question env{A}", " good env", " bad env")
    ]


def test_named_hh_rlhf_subset_split_and_alias(tmp_path):
    root = make_hh_root(tmp_path / "data")
    ds = rmclean.load_pairs("hh-rlhf", subset="helpful-base", data_dir=root)
    assert texts(ds) == expected_hh(["helpful-base"])
    assert col(ds, "source") == ["hh-rlhf/helpful-base/test"] * 2
    train = rmclean.load_pairs("Anthropic/hh-rlhf", split="train", data_dir=root)
    assert texts(train) == expected_hh(split="train")
    assert col(train, "source") == [f"hh-rlhf/{s}/train" for s in SUBSETS]
    two = rmclean.load_pairs("hh", subset=["helpful-online", "harmless-base"], data_dir=root)
    assert texts(two) == expected_hh(["helpful-online", "harmless-base"])


def test_limit_counts_rows_across_files(tmp_path):
    root = make_hh_root(tmp_path / "data")
    ds = rmclean.load_pairs("hh-rlhf", data_dir=root, limit=3)
    assert texts(ds) == expected_hh()[:3]
    assert col(ds, "source") == ["hh-rlhf/harmless-base/test"] * 2 + ["hh-rlhf/helpful-base/test"]
    assert len(rmclean.load_pairs("hh-rlhf", data_dir=root, limit=0)) == 0
    assert len(rmclean.load_pairs("hh-rlhf", data_dir=root, limit=100)) == 8


def test_limit_stops_before_a_bad_row(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS[:2]) + "{broken\n", encoding="utf-8")
    ds = rmclean.load_pairs(str(path), limit=2)
    assert texts(ds) == EXPECTED_TEXTS[:2]
    with pytest.raises(rmclean.PairFormatError):
        rmclean.load_pairs(str(path), limit=3)


def test_negative_limit_rejected(tmp_path):
    with pytest.raises(ValueError, match="limit must be >= 0"):
        rmclean.load_pairs(PAIRS, limit=-1)


def test_unknown_subset_raises(tmp_path):
    root = make_hh_root(tmp_path / "data")
    with pytest.raises(ValueError) as info:
        rmclean.load_pairs("hh-rlhf", subset="harmful-base", data_dir=root)
    assert "unknown subset 'harmful-base' of hh-rlhf" in str(info.value)
    assert "helpful-rejection-sampled" in str(info.value)


def test_unknown_split_raises(tmp_path):
    root = make_hh_root(tmp_path / "data")
    with pytest.raises(ValueError) as info:
        rmclean.load_pairs("hh-rlhf", split="validation", data_dir=root)
    assert "unknown split 'validation' of hh-rlhf; choose from train, test" in str(info.value)


def test_split_on_a_single_file_raises(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", PAIRS)
    with pytest.raises(ValueError, match="not to a file"):
        rmclean.load_pairs(str(path), split="test")


def test_dataset_dict_folder_unknown_split_raises(tmp_path):
    path = tmp_path / "saved_dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(PAIRS)}).save_to_disk(str(path))
    with pytest.raises(ValueError, match="no split 'test'; choose from train"):
        rmclean.load_pairs(str(path), split="test")


# --- the input format each row had ---------------------------------------------------------


def test_input_format_records_how_each_row_held_its_pair(tmp_path):
    rows = [
        {"chosen": f"{H} hi{A} hello", "rejected": f"{H} hi{A} go away"},
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
         "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]},
        {"chosen": ["q", "a"], "rejected": ["q", "b"]},
        {"question": "q", "response1": "a", "response2": "b", "label": 1},
        {"prompt": "q", "chosen": 1, "rejected": "b"},
    ]
    ds = load_rows(tmp_path, rows, on_error="skip")
    assert col(ds, "input_format") == ["transcript", "prompt", "messages", "turns", "judgement", None]
