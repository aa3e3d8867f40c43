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


# the row; the (prompt, chosen, rejected) it splits into; its flags
HH_TRANSCRIPTS = [
    pytest.param(
        {"chosen": f"{H} Hi there{A} Hello! How can I help?{H} Tell me a joke{A} Why did the chicken cross the road?",
         "rejected": f"{H} Hi there{A} Hello! How can I help?{H} Tell me a joke{A} No."},
        (f"{H} Hi there{A} Hello! How can I help?{H} Tell me a joke{A}", " Why did the chicken cross the road?", " No."),
        [], id="split-at-last-shared-assistant-turn"),
    pytest.param(
        {"chosen": f"{H} Can you help me?{A} Sure, here is how you do it.",
         "rejected": f"{H} Can you help me?{A} Sure, but only tomorrow."},
        (f"{H} Can you help me?{A}", " Sure, here is how you do it.", " Sure, but only tomorrow."),
        [], id="final-turns-starting-with-the-same-words"),
    pytest.param(
        {"chosen": f"{H} Name a colour{A} Red", "rejected": f"{H} Name a colour{A} Red and blue"},
        (f"{H} Name a colour{A}", " Red", " Red and blue"),
        [], id="chosen-response-is-a-prefix-of-rejected"),
    pytest.param(
        {"chosen": f"{H} hi{A} hello", "rejected": f"{H} hi{A} hello"},
        (f"{H} hi{A}", " hello", " hello"),
        ["identical_responses"], id="identical-responses-flagged"),
    pytest.param(
        {"chosen": f"{H} hi{A} hello{H} one more thing{A} yes?", "rejected": f"{H} hi{A} bye"},
        (f"{H} hi{A}", f" hello{H} one more thing{A} yes?", " bye"),
        ["different_history"], id="different-history-flagged"),
    pytest.param(  # flagged, not an error (on_error="raise")
        {"chosen": f"{H} hi{A} ", "rejected": f"{H} hi{A} Hello, how can I help?"},
        (f"{H} hi{A}", " ", " Hello, how can I help?"),
        ["empty_response"], id="empty-final-turn-is-flagged-not-an-error"),
    pytest.param(
        {"prompt": None, "chosen": f"{H} q{A} a", "rejected": f"{H} q{A} b"},
        (f"{H} q{A}", " a", " b"),
        [], id="next-to-an-explicit-null-prompt"),
]


@pytest.mark.parametrize(("row", "expected", "flags"), HH_TRANSCRIPTS)
def test_hh_transcript_split(tmp_path, row, expected, flags):
    ds = load_rows(tmp_path, [row])
    assert texts(ds) == [expected]
    assert ds[0]["prompt"] + ds[0]["chosen"] == row["chosen"]
    assert ds[0]["prompt"] + ds[0]["rejected"] == row["rejected"]
    assert col(ds, "flags") == [flags]
    assert col(ds, "error") == [None]
    # a prompt field (here null) is kept as input_prompt
    assert ds.column_names == list(rmclean.CANONICAL_COLUMNS) + (["input_prompt"] if "prompt" in row else [])


# --- one row, one pair: TRL explicit / implicit, conversational, MOSS turns, renamed keys -----------


USER = {"role": "user", "content": "What is the capital of France?"}
SYSTEM = {"role": "system", "content": "Answer briefly."}
GOOD = {"role": "assistant", "content": "Paris."}
BAD = {"role": "assistant", "content": "Lyon."}
FRANCE = "\n\nHuman: What is the capital of France?\n\nAssistant:"
ITALY = [USER, GOOD, {"role": "user", "content": "And of Italy?"}]

# the row; load options; the (prompt, chosen, rejected) it gives; its flags
ONE_ROW_FORMATS = [
    pytest.param({"prompt": "Translate 'chat'", "chosen": " cat", "rejected": "dog "}, {},
                 ("Translate 'chat'", " cat", "dog "), [], id="trl-explicit-prompt-kept-verbatim"),
    pytest.param({"prompt": "P", "chosen": f"{H} x{A} y", "rejected": f"{H} x{A} z"}, {},
                 ("P", f"{H} x{A} y", f"{H} x{A} z"), [], id="explicit-prompt-wins-over-hh-markers"),
    pytest.param({"chosen": "good answer", "rejected": "bad answer"}, {},
                 ("", "good answer", "bad answer"), [], id="plain-strings-without-markers-get-empty-prompt"),
    pytest.param({"prompt": [SYSTEM, USER], "chosen": [GOOD], "rejected": [BAD]}, {},
                 ("\n\nSystem: Answer briefly." + FRANCE, " Paris.", " Lyon."), [],
                 id="conversational-with-separate-prompt-list"),
    pytest.param({"chosen": [USER, GOOD], "rejected": [USER, BAD]}, {},
                 (FRANCE, " Paris.", " Lyon."), [], id="conversational-without-prompt-list"),
    pytest.param({"chosen": ITALY + [{"role": "assistant", "content": "Rome."}],
                  "rejected": ITALY + [{"role": "assistant", "content": "Milan."}]}, {},
                 (FRANCE + " Paris.\n\nHuman: And of Italy?\n\nAssistant:", " Rome.", " Milan."), [],
                 id="conversational-multi-turn-shares-all-but-last-answer"),
    pytest.param({"prompt": "hi", "chosen": [GOOD], "rejected": [BAD]}, {},
                 ("\n\nHuman: hi\n\nAssistant:", " Paris.", " Lyon."), [],
                 id="conversational-string-prompt-with-message-responses"),
    pytest.param({"chosen": [USER, GOOD, {"role": "user", "content": "sure?"}, {"role": "assistant", "content": "Yes."}],
                  "rejected": [USER, BAD]}, {},
                 (FRANCE, " Paris.\n\nHuman: sure?\n\nAssistant: Yes.", " Lyon."), ["different_history"],
                 id="conversational-extra-turn-flags-different-history"),
    pytest.param({"chosen": ["q", "a", "q2", "x"], "rejected": ["q", "b", "q2", "y"]}, {},
                 (f"{H} q{A}", f" a{H} q2{A} x", f" b{H} q2{A} y"), ["different_history"],
                 id="moss-turns-different-history"),
    pytest.param({"winner": f"{H} q{A} w", "loser": f"{H} q{A} l"}, {"chosen_key": "winner", "rejected_key": "loser"},
                 (f"{H} q{A}", " w", " l"), [], id="renamed-keys-without-prompt-split-hh"),
]


@pytest.mark.parametrize(("row", "options", "expected", "flags"), ONE_ROW_FORMATS)
def test_one_row_format(tmp_path, row, options, expected, flags):
    ds = load_rows(tmp_path, [row], **options)
    assert texts(ds) == [expected]
    assert col(ds, "flags") == [flags]


# --- chat rendering -------------------------------------------------------------------------


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


# --- pairwise judgements ------------------------------------------------------------------


# rows; load options (name: the file they are written to); the (prompt, chosen, rejected) they give;
# flags; original_label; other columns kept from the input (in column order, before original_label)
JUDGEMENTS = [
    pytest.param(
        [{"query": "q1", "response1": "A1", "response2": "B1", "label": 1},
         {"query": "q2", "response1": "A2", "response2": "B2", "label": 2},
         {"query": "q3", "response1": "A3", "response2": "B3", "label": 0}],
        {},
        [("q1", "A1", "B1"), ("q2", "B2", "A2"), ("q3", "A3", "B3")], [[], [], ["tie"]], ["1", "2", "0"], {},
        id="response1-response2-one-based-labels"),
    pytest.param(  # an input field named like a canonical column is kept under an input_ prefix
        [{"prompt": "p0", "response 1": "A", "response 2": "B", "label": 0, "source": "autoj-src"},
         {"prompt": "p1", "response 1": "A", "response 2": "B", "label": 1, "source": "autoj-src"},
         {"prompt": "p2", "response 1": "A", "response 2": "B", "label": 2, "source": "autoj-src"}],
        {},
        [("p0", "A", "B"), ("p1", "B", "A"), ("p2", "A", "B")], [[], [], ["tie"]], ["0", "1", "2"],
        {"input_source": ["autoj-src"] * 3},
        id="autoj-zero-based-labels"),
    pytest.param(
        [{"input": "Write a haiku.", "output_1": "O1", "output_2": "O2", "label": 2},
         {"input": "Say hi.", "output_1": "hi", "output_2": "bye", "label": 1}],
        {"name": "dataset.json"},
        [("Write a haiku.", "O2", "O1"), ("Say hi.", "hi", "bye")], [[], []], ["2", "1"], {},
        id="llmbar-output_1-output_2-with-input-prompt"),
    pytest.param(
        [{"query": "q1", "response1": "r1a", "response2": "r1b", "human": "model1"},
         {"query": "q2", "response1": "r2a", "response2": "r2b", "human": "model2"},
         {"query": "q3", "response1": "r3a", "response2": "r3b", "human": "TIE"}],
        {},
        [("q1", "r1a", "r1b"), ("q2", "r2b", "r2a"), ("q3", "r3a", "r3b")], [[], [], ["tie"]],
        ["model1", "model2", "TIE"], {},
        id="llmeval2-human-model1-model2-tie"),
    pytest.param(  # instruction and input are joined into the prompt, not kept as columns
        [{"idx": 7, "instruction": "Summarise the text.", "input": "Cats sleep a lot.",
          "response1": "Cats nap.", "response2": "Dogs bark.", "annotator1": 1},
         {"idx": 8, "instruction": "Name a prime.", "input": "", "response1": "4", "response2": "7", "annotator1": 2}],
        {"label_key": "annotator1"},
        [("Summarise the text.\n\nCats sleep a lot.", "Cats nap.", "Dogs bark."), ("Name a prime.", "7", "4")],
        [[], []], ["1", "2"], {"idx": [7, 8]},
        id="pandalm-instruction-and-input-joined"),
    pytest.param(
        [{"q": "x", "left": "L1", "right": "R1", "verdict": "LEFT"},
         {"q": "y", "left": "L2", "right": "R2", "verdict": "RIGHT"},
         {"q": "z", "left": "L3", "right": "R3", "verdict": "SAME"}],
        {"response_keys": ("left", "right"), "label_key": "verdict", "prompt_key": "q",
         "label_map": {"LEFT": "first", "RIGHT": "second", "SAME": "tie"}},
        [("x", "L1", "R1"), ("y", "R2", "L2"), ("z", "L3", "R3")], [[], [], ["tie"]], ["LEFT", "RIGHT", "SAME"], {},
        id="label_map-response_keys-and-label_key-overrides"),
    pytest.param(
        [{"response1": "A", "response2": "B", "label": 1}, {"response1": "C", "response2": "D", "label": 2}],
        {"label_map": {1: "second", 2: "first"}},
        [("", "B", "A"), ("", "C", "D")], [[], []], ["1", "2"], {},
        id="label_map-overrides-builtin-meaning-of-numbers"),
]


@pytest.mark.parametrize(("rows", "options", "expected", "flags", "labels", "kept"), JUDGEMENTS)
def test_pairwise_judgement(tmp_path, rows, options, expected, flags, labels, kept):
    ds = load_rows(tmp_path, rows, **options)
    assert texts(ds) == expected
    assert col(ds, "flags") == flags
    assert col(ds, "original_label") == labels
    assert col(ds, "source") == [str(tmp_path / options.get("name", "data.jsonl"))] * len(rows)
    for name, values in kept.items():
        assert col(ds, name) == values
    assert ds.column_names == list(rmclean.CANONICAL_COLUMNS) + list(kept) + ["original_label"]


# rows written to judged.jsonl; load options; the line and field the error names; fragments of its message
LABEL_ERRORS = [
    pytest.param([{"response1": "A", "response2": "B", "label": 1}, {"response1": "A", "response2": "B", "label": "maybe"}],
                 {}, 2, "label", ["field 'label'", "'maybe'"], id="unknown-label"),
    pytest.param([{"response1": "A", "response2": "B", "verdict": "other"}],
                 {"label_key": "verdict", "label_map": {"a": "first"}},
                 1, "verdict", ["label 'other' in field 'verdict' is not in label_map"], id="label-missing-from-label_map"),
    pytest.param([{"response1": "A", "response2": "B", "label": "x"}],
                 {"label_map": {"x": "left"}}, 1, "label", ["'left'"], id="label_map-to-invalid-verdict"),
    pytest.param([{"response1": "A", "response2": "B"}],
                 {}, 1, "label", ["field 'label' is missing"], id="missing-label-field"),
]


@pytest.mark.parametrize(("rows", "options", "line", "field", "fragments"), LABEL_ERRORS)
def test_bad_label_raises_naming_line_and_field(tmp_path, rows, options, line, field, fragments):
    path = write_jsonl(tmp_path / "judged.jsonl", rows)
    with pytest.raises(rmclean.PairFormatError) as info:
        rmclean.load_pairs(str(path), **options)
    assert info.value.field == field
    assert info.value.location == f"{path}, line {line}"
    for fragment in fragments:
        assert fragment in str(info.value)


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


PID = formats.pair_id

# rows; the pair_id and flags of each row
PAIR_IDS = [
    pytest.param([{"chosen": f"{H} q{A} a", "rejected": f"{H} q{A} b"}],
                 [PID(f"{H} q{A}", " a", " b")], [[]], id="hh-pair-uses-split-texts"),
    pytest.param([{"prompt": "P", "chosen": "C", "rejected": "R"}, {"prompt": "P", "chosen": "R", "rejected": "C"}],
                 [PID("P", "C", "R"), PID("P", "R", "C")], [[], []], id="changes-when-chosen-and-rejected-swap"),
    pytest.param([{"prompt": "P", "chosen": "C", "rejected": "R"}, {"prompt": "P", "chosen": "C", "rejected": "R2"},
                  {"prompt": "P", "chosen": "C", "rejected": "R"}, {"prompt": "P", "chosen": "C", "rejected": "R"}],
                 [PID("P", "C", "R"), PID("P", "C", "R2"), PID("P", "C", "R") + "-2", PID("P", "C", "R") + "-3"],
                 [[], [], ["duplicate"], ["duplicate"]], id="repeated-rows-get-suffixed-ids-and-duplicate-flag"),
]


@pytest.mark.parametrize(("rows", "ids", "flags"), PAIR_IDS)
def test_pair_ids(tmp_path, rows, ids, flags):
    ds = load_rows(tmp_path, rows)
    assert col(ds, "pair_id") == ids
    assert col(ds, "flags") == flags
    # 16 hex digits, a -n suffix on repeats: every row's id differs
    assert all(HEX16.match(i.partition("-")[0]) for i in col(ds, "pair_id"))
    assert len(set(col(ds, "pair_id"))) == len(ds)


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


def _json_gz_array(tmp_path):
    path = tmp_path / "pairs.json.gz"
    path.write_bytes(gzip.compress(json.dumps(PAIRS, indent=2, ensure_ascii=False).encode("utf-8")))
    return str(path), {}, [str(path)] * 3, [0, 1, 2]


def _json_gz_array_in_zip(tmp_path):
    path = tmp_path / "pairs.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("pairs.json.gz", gzip.compress(json.dumps(PAIRS, indent=2).encode("utf-8")))
    return str(path), {}, [str(path)] * 3, [0, 1, 2]


def _folder_every_file(tmp_path):
    """No subset or split: every file, in order of the paths."""
    write_jsonl(tmp_path / "corpus" / "b" / "test.jsonl", PAIRS[1:])
    write_jsonl(tmp_path / "corpus" / "a" / "train.jsonl", PAIRS[:1])
    sources = ["corpus/a/train.jsonl", "corpus/b/test.jsonl", "corpus/b/test.jsonl"]
    return str(tmp_path / "corpus"), {}, sources, [0, 0, 1]


def _folder_several_subsets(tmp_path):
    write_jsonl(tmp_path / "corpus" / "x" / "test.jsonl", PAIRS[:1])
    write_jsonl(tmp_path / "corpus" / "y" / "test.jsonl", PAIRS[1:])
    write_jsonl(tmp_path / "corpus" / "z" / "test.jsonl", [OTHER])
    sources = ["corpus/x/test.jsonl", "corpus/y/test.jsonl", "corpus/y/test.jsonl"]
    return str(tmp_path / "corpus"), {"subset": ["x", "y"]}, sources, [0, 0, 1]


def _dataset_dict_all_splits(tmp_path):
    path = tmp_path / "saved_dict"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(PAIRS[:1]), "test": datasets.Dataset.from_list(PAIRS[1:])}
    ).save_to_disk(str(path))
    return str(path), {}, [f"{path}:train", f"{path}:test", f"{path}:test"], [0, 0, 1]


CONTAINERS = {
    "jsonl": _jsonl,
    "jsonl.gz": _jsonl_gz,
    "json-array": _json_array,
    "json-holding-jsonl": _json_holding_jsonl,
    "json.gz-array": _json_gz_array,
    "json.gz-array-in-zip": _json_gz_array_in_zip,
    "parquet": _parquet,
    "csv": _csv,
    "zip": _zip,
    "save_to_disk": _save_to_disk,
    "dataset_dict-save_to_disk": _dataset_dict,
    "dataset_dict-without-split-reads-all-splits": _dataset_dict_all_splits,
    "folder": _folder,
    "folder-without-subset-or-split-reads-every-file": _folder_every_file,
    "folder-several-subsets": _folder_several_subsets,
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


def expected_hh(subsets=SUBSETS, split="test") -> list[tuple]:
    """((prompt, chosen, rejected), source, row) of each pair make_hh_root wrote for these subsets and split."""
    rows = (0, 1) if split == "test" else (0,)
    tags = [(s, i, f"{s}-{i}" if split == "test" else f"{s}-train") for s in subsets for i in rows]
    return [((f"{H} question {t}{A}", f" good {t}", f" bad {t}"), f"hh-rlhf/{s}/{split}", i) for s, i, t in tags]


DATA = Path("data")  # make_hh_root(tmp_path / "data")

# name; load options (data_dir relative to tmp_path, as a Path or a str; without data_dir the data is
# found through $RMCLEAN_DATA_DIR); the subsets and split whose pairs come back (the first `limit` of them)
NAMED_HH = [
    pytest.param("hh-rlhf", {"data_dir": DATA}, SUBSETS, "test", id="from-data_dir-root"),
    pytest.param("hh-rlhf", {"data_dir": "data/hh-rlhf"}, SUBSETS, "test", id="from-its-own-folder"),
    pytest.param("hh-rlhf", {"subset": "helpful-online"}, ["helpful-online"], "test", id="from-env-var"),
    pytest.param("hh-rlhf", {"subset": "helpful-base", "data_dir": DATA}, ["helpful-base"], "test", id="subset"),
    pytest.param("Anthropic/hh-rlhf", {"split": "train", "data_dir": DATA}, SUBSETS, "train",
                 id="alias-Anthropic-hh-rlhf-split-train"),
    pytest.param("hh", {"subset": ["helpful-online", "harmless-base"], "data_dir": DATA},
                 ["helpful-online", "harmless-base"], "test", id="alias-hh-two-subsets-in-the-order-given"),
    pytest.param("hh-rlhf", {"data_dir": DATA, "limit": 3}, SUBSETS, "test", id="limit-counts-rows-across-files"),
    pytest.param("hh-rlhf", {"data_dir": DATA, "limit": 0}, SUBSETS, "test", id="limit-0"),
    pytest.param("hh-rlhf", {"data_dir": DATA, "limit": 100}, SUBSETS, "test", id="limit-above-the-number-of-rows"),
]


@pytest.mark.parametrize(("name", "options", "subsets", "split"), NAMED_HH)
def test_named_hh_rlhf(tmp_path, monkeypatch, name, options, subsets, split):
    make_hh_root(tmp_path / DATA)
    options = dict(options)
    if "data_dir" in options:
        options["data_dir"] = type(options["data_dir"])(tmp_path / options["data_dir"])  # Path stays Path, str str
    else:
        monkeypatch.setenv("RMCLEAN_DATA_DIR", str(tmp_path / DATA))
    ds = rmclean.load_pairs(name, **options)
    expected = expected_hh(subsets, split)[: options.get("limit")]
    assert list(zip(texts(ds), col(ds, "source"), col(ds, "row"))) == expected
    assert col(ds, "flags") == [[]] * len(expected)


def test_named_hh_rlhf_data_dir_wins_over_env_var(tmp_path, monkeypatch):
    other = tmp_path / "other" / "hh-rlhf" / "harmless-base"
    other.mkdir(parents=True)
    (other / "test.jsonl.gz").write_bytes(gzip.compress((json.dumps(hh_pair("env")) + "\n").encode()))
    monkeypatch.setenv("RMCLEAN_DATA_DIR", str(tmp_path / "other"))
    root = make_hh_root(tmp_path / "data")
    assert texts(rmclean.load_pairs("hh-rlhf", subset="harmless-base", data_dir=root)) == [
        t for t, _, _ in expected_hh(["harmless-base"])
    ]
    assert texts(rmclean.load_pairs("hh-rlhf", subset="harmless-base")) == [
        (f"{H} question env{A}", " good env", " bad env")
    ]


def test_limit_stops_before_a_bad_row(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS[:2]) + "{broken\n", encoding="utf-8")
    ds = rmclean.load_pairs(str(path), limit=2)
    assert texts(ds) == EXPECTED_TEXTS[:2]
    with pytest.raises(rmclean.PairFormatError):
        rmclean.load_pairs(str(path), limit=3)


def _hh_root(tmp_path):
    return "hh-rlhf", {"data_dir": make_hh_root(tmp_path / "data")}


def _one_file(tmp_path):
    return str(write_jsonl(tmp_path / "data.jsonl", PAIRS)), {}


def _train_only_dataset_dict(tmp_path):
    path = tmp_path / "saved_dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(PAIRS)}).save_to_disk(str(path))
    return str(path), {}


def _rows(tmp_path):
    return PAIRS, {}


# what to load; the bad option(s); fragments of the ValueError's message
BAD_OPTIONS = [
    pytest.param(_hh_root, {"subset": "harmful-base"},
                 ["unknown subset 'harmful-base' of hh-rlhf", "helpful-rejection-sampled"], id="unknown-subset"),
    pytest.param(_hh_root, {"split": "validation"},
                 ["unknown split 'validation' of hh-rlhf; choose from train, test"], id="unknown-split"),
    pytest.param(_one_file, {"split": "test"}, ["not to a file"], id="split-on-a-single-file"),
    pytest.param(_train_only_dataset_dict, {"split": "test"}, ["no split 'test'; choose from train"],
                 id="dataset_dict-folder-unknown-split"),
    pytest.param(_rows, {"limit": -1}, ["limit must be >= 0"], id="negative-limit"),
]


@pytest.mark.parametrize(("make", "options", "fragments"), BAD_OPTIONS)
def test_bad_option_raises(tmp_path, make, options, fragments):
    source, base = make(tmp_path)
    with pytest.raises(ValueError) as info:
        rmclean.load_pairs(source, **base, **options)
    for fragment in fragments:
        assert fragment in str(info.value)


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


def test_sample_per_source_is_seeded_stratified_and_nested():
    rows = [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(30)]
    pairs = rmclean.load_pairs(rows)
    pairs = pairs.add_column("group", ["x"] * 20 + ["y"] * 10).remove_columns("source").rename_column("group", "source")
    drawn = rmclean.sample_per_source(pairs, 4, seed=3)
    assert sorted(drawn["source"]) == ["x"] * 4 + ["y"] * 4
    assert list(drawn["pair_id"]) == [p for p in pairs["pair_id"] if p in set(drawn["pair_id"])]  # input order
    assert list(rmclean.sample_per_source(pairs, 4, seed=3)["pair_id"]) == list(drawn["pair_id"])  # seeded
    assert list(rmclean.sample_per_source(pairs, 4, seed=4)["pair_id"]) != list(drawn["pair_id"])
    assert set(drawn["pair_id"]) <= set(rmclean.sample_per_source(pairs, 8, seed=3)["pair_id"])  # nested
    larger = rmclean.sample_per_source(pairs, 15, seed=3)  # all of the smaller source
    assert sorted(larger["source"]).count("y") == 10 and len(larger) == 25
    assert rmclean.sample_per_source(pairs, None) is pairs
    with pytest.raises(ValueError, match="per_source"):
        rmclean.sample_per_source(pairs, -1)
