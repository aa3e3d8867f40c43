"""Bad input: every error names the file, the exact line (or row) and the field, and
``on_error="skip"`` accounts for every input row.

Every fixture is synthetic and written by the test itself into ``tmp_path``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rmclean

SKIP_HINT = "pass on_error='skip'"


pytestmark = pytest.mark.usefixtures("hermetic")


def good(i: int) -> dict:
    return {"prompt": f"prompt {i}", "chosen": f"chosen {i}", "rejected": f"rejected {i}"}


def line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False)


def col(ds, name: str) -> list:
    return list(ds[name])


def raise_error(source, **kwargs) -> rmclean.PairFormatError:
    with pytest.raises(rmclean.PairFormatError) as info:
        rmclean.load_pairs(source, **kwargs)
    error = info.value
    assert isinstance(error, ValueError)
    assert SKIP_HINT in str(error)
    return error


def check_raise(source, location: str, field: str | None, reason: str, **kwargs) -> rmclean.PairFormatError:
    """load_pairs(on_error="raise") stops with a message naming location, field and reason."""
    error = raise_error(source, **kwargs)
    message = str(error)
    assert message.startswith(f"{location}: ")
    assert error.location == location
    assert error.field == field
    if field is not None:
        assert f"field '{field}'" in message
    assert reason in message
    assert reason in error.reason
    return error


def check_skip(source, n_records: int, bad: dict[int, str], valid_texts: dict[int, tuple], **kwargs):
    """on_error="skip": one output row per input record, bad rows flagged with their reason,
    valid rows intact; split_invalid separates them."""
    ds = rmclean.load_pairs(source, on_error="skip", **kwargs)
    assert len(ds) == n_records
    assert col(ds, "row") == list(range(n_records))
    for i, row in enumerate(ds):
        if i in bad:
            assert row["flags"] == ["invalid"]
            assert (row["prompt"], row["chosen"], row["rejected"]) == ("", "", "")
            assert row["error"] == bad[i]
            assert row["pair_id"].startswith("invalid-")
        else:
            assert row["error"] is None
            assert "invalid" not in row["flags"]
            assert (row["prompt"], row["chosen"], row["rejected"]) == valid_texts[i]
    valid, invalid = rmclean.split_invalid(ds)
    assert len(valid) + len(invalid) == n_records
    assert col(valid, "row") == [i for i in range(n_records) if i not in bad]
    assert col(invalid, "row") == sorted(bad)
    assert col(invalid, "error") == [bad[i] for i in sorted(bad)]
    assert col(invalid, "flags") == [["invalid"]] * len(bad)
    assert all(e is None for e in col(valid, "error"))
    return ds


def good_texts(*indexes: int) -> dict[int, tuple]:
    return {position: (f"prompt {i}", f"chosen {i}", f"rejected {i}") for position, i in indexes}


def jsonl_with(tmp_path: Path, middle: bytes, name: str = "data.jsonl") -> Path:
    """good(0) on line 1, a blank line, good(1) on line 3, ``middle`` on line 4, good(2) on line 5."""
    path = tmp_path / name
    path.write_bytes(
        line(good(0)).encode() + b"\n\n" + line(good(1)).encode() + b"\n" + middle + b"\n" + line(good(2)).encode() + b"\n"
    )
    return path


VALID_AROUND = good_texts((0, 0), (1, 1), (3, 2))


# --- one test per bad input ------------------------------------------------------------


def test_malformed_json_line(tmp_path):
    path = jsonl_with(tmp_path, b'{"prompt": "x", "chosen": "y", "rejected": ')
    location = f"{path}, line 4"
    error = check_raise(str(path), location, None, "malformed JSON: Expecting value")
    check_skip(str(path), 4, {2: f"{location}: {error.reason}"}, VALID_AROUND)


def test_malformed_json_line_column_inside_the_line(tmp_path):
    path = jsonl_with(tmp_path, b'{"prompt": "x" "chosen": "y", "rejected": "z"}')
    check_raise(str(path), f"{path}, line 4", None, "malformed JSON: Expecting ',' delimiter at column 16")


def test_malformed_json_line_cut_off_reports_end_of_line_column(tmp_path):
    path = jsonl_with(tmp_path, b'{"prompt": "x", "chosen": "y", "rejected": ')
    check_raise(str(path), f"{path}, line 4", None, "malformed JSON: Expecting value at column 44")


def test_missing_rejected_field(tmp_path):
    path = jsonl_with(tmp_path, b'{"prompt": "x", "chosen": "y"}')
    location = f"{path}, line 4"
    error = check_raise(str(path), location, "rejected", "field 'rejected' is missing (fields present: 'prompt', 'chosen')")
    check_skip(str(path), 4, {2: f"{location}: {error.reason}"}, VALID_AROUND)


@pytest.mark.parametrize(
    ("value", "described"),
    [(b"true", "a boolean (true)"), (b"42", "a number (42)"), (b"3.5", "a number (3.5)"), (b'{"text": "y"}', "an object")],
)
def test_wrong_type_in_chosen(tmp_path, value, described):
    path = jsonl_with(tmp_path, b'{"prompt": "x", "chosen": ' + value + b', "rejected": "z"}')
    location = f"{path}, line 4"
    error = check_raise(
        str(path), location, "chosen",
        f"field 'chosen' must be text, a list of messages or a list of turns, got {described}",
    )
    check_skip(str(path), 4, {2: f"{location}: {error.reason}"}, VALID_AROUND)


def test_wrong_type_in_explicit_prompt(tmp_path):
    path = jsonl_with(tmp_path, b'{"prompt": 7, "chosen": "y", "rejected": "z"}')
    location = f"{path}, line 4"
    error = check_raise(str(path), location, "prompt", "field 'prompt' must be text, got a number (7)")
    check_skip(str(path), 4, {2: f"{location}: {error.reason}"}, VALID_AROUND)


def test_chosen_and_rejected_of_different_forms(tmp_path):
    path = jsonl_with(tmp_path, b'{"chosen": "text", "rejected": ["q", "a"]}')
    location = f"{path}, line 4"
    check_raise(str(path), location, "rejected", "field 'rejected' is a list of turns but 'chosen' is text")


@pytest.mark.parametrize("empty", ["", "   \n\t "], ids=["empty", "whitespace"])
def test_empty_response(tmp_path, empty):
    path = jsonl_with(tmp_path, line({"prompt": "x", "chosen": empty, "rejected": "z"}).encode())
    location = f"{path}, line 4"
    error = check_raise(str(path), location, "chosen", "field 'chosen' is empty; pass allow_empty=True")
    check_skip(str(path), 4, {2: f"{location}: {error.reason}"}, VALID_AROUND)

    kept = rmclean.load_pairs(str(path), allow_empty=True)
    assert len(kept) == 4
    assert (kept[2]["prompt"], kept[2]["chosen"], kept[2]["rejected"]) == ("x", empty, "z")
    assert col(kept, "flags") == [[], [], ["empty_response"], []]
    assert col(kept, "error") == [None] * 4


def test_empty_rejected_in_judgement_row(tmp_path):
    path = jsonl_with(tmp_path, line({"response1": "a", "response2": "", "label": 1}).encode())
    location = f"{path}, line 4"
    check_raise(str(path), location, "response2", "field 'response2' is empty")
    kept = rmclean.load_pairs(str(path), allow_empty=True)
    assert (kept[2]["chosen"], kept[2]["rejected"], kept[2]["flags"]) == ("a", "", ["empty_response"])


def test_invalid_utf8_in_jsonl_line(tmp_path):
    path = jsonl_with(tmp_path, b'{"prompt": "caf\xe9", "chosen": "y", "rejected": "z"}')
    location = f"{path}, line 4"
    error = check_raise(str(path), location, None, "invalid UTF-8 at byte 16 of the line")
    check_skip(str(path), 4, {2: f"{location}: {error.reason}"}, VALID_AROUND)


def test_json_line_that_is_not_an_object(tmp_path):
    path = jsonl_with(tmp_path, b'["x", "y", "z"]')
    location = f"{path}, line 4"
    error = check_raise(str(path), location, None, "expected a JSON object, got a JSON array")
    check_skip(str(path), 4, {2: f"{location}: {error.reason}"}, VALID_AROUND)


def test_truncated_gzip(tmp_path):
    rows = [good(i) for i in range(200)]
    whole = gzip.compress("".join(line(r) + "\n" for r in rows).encode(), mtime=0)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: int(len(whole) * 0.6)])

    error = raise_error(str(path))
    assert error.field is None
    assert "the compressed file is cut off or corrupt" in str(error)
    assert str(path) in str(error)

    ds = rmclean.load_pairs(str(path), on_error="skip")
    n_valid = len(ds) - 1
    assert 0 < n_valid < 200
    # the rows before the cut are intact, and the last row says where the file was cut
    assert error.location == f"{path}, line {n_valid + 1}"
    assert f"after line {n_valid}" in error.reason
    check_skip(
        str(path), n_valid + 1, {n_valid: f"{error.location}: {error.reason}"},
        good_texts(*((i, i) for i in range(n_valid))),
    )


def test_malformed_element_in_json_array(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(
        "[\n" + line(good(0)) + ",\n" + line(good(1)) + ",\n" + '{"prompt": "x" "chosen": "y", "rejected": "z"}' + "\n]\n",
        encoding="utf-8",
    )
    location = f"{path}, line 4"
    error = check_raise(str(path), location, None, "malformed JSON: Expecting ',' delimiter at column 16")
    check_skip(str(path), 3, {2: f"{location}: {error.reason}"}, good_texts((0, 0), (1, 1)))


def test_malformed_element_in_middle_of_json_array_stops_the_array(tmp_path):
    """Past a syntax error the array cannot be parsed reliably: the reader says so in the
    error of the last row it returns (the elements after it are not returned)."""
    path = tmp_path / "data.json"
    path.write_text(
        "[\n" + line(good(0)) + ",\n" + '{"prompt": "x", "chosen": "y" "rejected": "z"},' + "\n" + line(good(2)) + "\n]\n",
        encoding="utf-8",
    )
    location = f"{path}, line 3"
    error = check_raise(str(path), location, None, "the rest of the array could not be read")
    assert "Expecting ',' delimiter at column 31" in error.reason
    check_skip(str(path), 2, {1: f"{location}: {error.reason}"}, good_texts((0, 0)))


def test_json_array_element_that_is_not_an_object(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(
        "[\n  " + line(good(0)) + ",\n\n  \"just a string\",\n  " + line(good(2)) + "\n]\n", encoding="utf-8"
    )
    location = f"{path}, line 4"
    error = check_raise(str(path), location, None, "expected a JSON object, got a JSON string")
    check_skip(str(path), 3, {1: f"{location}: {error.reason}"}, good_texts((0, 0), (2, 2)))


def test_csv_row_with_empty_cell(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text(
        'prompt,chosen,rejected\nprompt 0,chosen 0,rejected 0\n"prompt\n1",,rejected 1\nprompt 2,chosen 2,rejected 2\n',
        encoding="utf-8",
    )
    location = f"{path}, line 3"
    error = check_raise(str(path), location, "chosen", "field 'chosen' is empty")
    texts = good_texts((0, 0), (2, 2))
    check_skip(str(path), 3, {1: f"{location}: {error.reason}"}, texts)


def test_csv_row_after_multiline_cell_reports_its_first_line(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text(
        'prompt,chosen,rejected\n"prompt\n0",chosen 0,rejected 0\nprompt 1,chosen 1,\n', encoding="utf-8"
    )
    check_raise(str(path), f"{path}, line 4", "rejected", "field 'rejected' is empty")


def test_csv_blank_line_does_not_shift_line_numbers(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("prompt,chosen,rejected\nprompt 0,chosen 0,rejected 0\n\nprompt 1,,rejected 1\n", encoding="utf-8")
    check_raise(str(path), f"{path}, line 4", "chosen", "field 'chosen' is empty")


def test_csv_row_with_too_many_cells(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("prompt,chosen,rejected\nprompt 0,chosen 0,rejected 0\np,c,r,extra\n", encoding="utf-8")
    location = f"{path}, line 3"
    error = check_raise(str(path), location, None, "more cells than header columns")
    check_skip(str(path), 2, {1: f"{location}: {error.reason}"}, good_texts((0, 0)))


def test_parquet_row_with_null_chosen(tmp_path):
    path = tmp_path / "data.parquet"
    rows = [good(0), {"prompt": "x", "chosen": None, "rejected": "z"}, good(2)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    location = f"{path}, row 1"
    error = check_raise(str(path), location, "chosen", "field 'chosen' is null")
    assert "line" not in error.location
    check_skip(str(path), 3, {1: f"{location}: {error.reason}"}, good_texts((0, 0), (2, 2)))


def test_message_without_content(tmp_path):
    user = {"role": "user", "content": "hi"}
    row = {"chosen": [user, {"role": "assistant"}], "rejected": [user, {"role": "assistant", "content": "b"}]}
    path = jsonl_with(tmp_path, line(row).encode())
    location = f"{path}, line 4"
    error = check_raise(str(path), location, "chosen[1]", "must be a message with 'role' and 'content'")
    check_skip(str(path), 4, {2: f"{location}: {error.reason}"}, VALID_AROUND)


def test_message_content_not_text(tmp_path):
    user = {"role": "user", "content": "hi"}
    row = {"chosen": [user, {"role": "assistant", "content": "a"}], "rejected": [user, {"role": "assistant", "content": None}]}
    path = jsonl_with(tmp_path, line(row).encode())
    check_raise(str(path), f"{path}, line 4", "rejected[1].content", "must be text, got null")


def test_messages_not_ending_with_assistant(tmp_path):
    user = {"role": "user", "content": "hi"}
    row = {"chosen": [user], "rejected": [user, {"role": "assistant", "content": "b"}]}
    path = jsonl_with(tmp_path, line(row).encode())
    check_raise(str(path), f"{path}, line 4", "chosen", "must end with an assistant message, got role 'user'")


def test_in_memory_row_that_is_not_a_mapping():
    rows = [good(0), ["not", "a", "dict"], good(2)]
    error = check_raise(rows, "<rows>, row 1", None, "expected a mapping of fields, got list")
    check_skip(rows, 3, {1: f"<rows>, row 1: {error.reason}"}, good_texts((0, 0), (2, 2)))


def test_error_inside_zip_member_names_the_member(tmp_path):
    import zipfile

    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("inner/pairs.jsonl", line(good(0)) + "\n" + '{"chosen": "c"}' + "\n")
    location = f"{path}/inner/pairs.jsonl, line 2"
    error = check_raise(str(path), location, "rejected", "field 'rejected' is missing")
    check_skip(str(path), 2, {1: f"{location}: {error.reason}"}, good_texts((0, 0)))


def test_bad_rows_in_several_files_are_all_accounted_for(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.jsonl").write_text(line(good(0)) + "\n{oops\n", encoding="utf-8")
    (folder / "b.jsonl").write_text('{"chosen": 1, "rejected": "r"}\n' + line(good(1)) + "\n", encoding="utf-8")
    ds = rmclean.load_pairs(str(folder), on_error="skip")
    assert len(ds) == 4
    assert col(ds, "source") == ["corpus/a.jsonl", "corpus/a.jsonl", "corpus/b.jsonl", "corpus/b.jsonl"]
    assert col(ds, "row") == [0, 1, 0, 1]
    assert col(ds, "flags") == [[], ["invalid"], ["invalid"], []]
    errors = col(ds, "error")
    assert errors[1].startswith(f"{folder / 'a.jsonl'}, line 2: malformed JSON")
    assert errors[2].startswith(f"{folder / 'b.jsonl'}, line 1: field 'chosen' must be text")
    valid, invalid = rmclean.split_invalid(ds)
    assert col(valid, "chosen") == ["chosen 0", "chosen 1"]
    assert col(invalid, "source") == ["corpus/a.jsonl", "corpus/b.jsonl"]


# --- sources and arguments ------------------------------------------------------------------


def test_named_source_not_found_anywhere(monkeypatch):
    monkeypatch.delenv("RMCLEAN_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # huggingface_hub read HF_HUB_OFFLINE when it was imported; without this the probe would try the
    # network (and only fail fast where DNS fails fast). The autouse fixture does the same for every test.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(rmclean.SourceNotFoundError) as info:
        rmclean.load_pairs("hh-rlhf")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "could not find hh-rlhf subset 'harmless-base' split 'test'" in message
    assert "1. data_dir=None: not set" in message
    assert "2. $RMCLEAN_DATA_DIR: not set" in message
    assert "3. Hugging Face Hub 'Anthropic/hh-rlhf'" in message
    assert "offline" in message.lower()
    assert "hh-rlhf/harmless-base/test.jsonl.gz" in message


def test_named_source_not_in_given_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("RMCLEAN_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(rmclean.SourceNotFoundError) as info:
        rmclean.load_pairs("hh-rlhf", subset="helpful-base", data_dir=tmp_path / "mine")
    message = str(info.value)
    assert f"data_dir={tmp_path / 'mine'}: no {tmp_path / 'mine' / 'hh-rlhf' / 'helpful-base' / 'test.jsonl.gz'}" in message
    assert f"$RMCLEAN_DATA_DIR: no {tmp_path / 'env' / 'hh-rlhf' / 'helpful-base' / 'test.jsonl.gz'}" in message
    assert "Hugging Face Hub" in message


def test_missing_jsonl_path(tmp_path):
    path = tmp_path / "nowhere" / "pairs.jsonl"
    with pytest.raises(rmclean.SourceNotFoundError) as info:
        rmclean.load_pairs(str(path))
    assert str(info.value) == f"{path}: no such file or folder"


def test_unknown_keyword_argument():
    with pytest.raises(TypeError, match="unexpected keyword argument.*chosen_column"):
        rmclean.load_pairs([good(0)], chosen_column="chosen")


def test_bogus_on_error():
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip', got 'bogus'"):
        rmclean.load_pairs([good(0)], on_error="bogus")
