"""Bad input: every error names the file, the exact line (or row) and the field, and
``on_error="skip"`` accounts for every input row.

Every fixture is synthetic and written by the test itself into ``tmp_path``.
"""

from __future__ import annotations

import gzip
import json
import zipfile
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
    assert "\n" not in str(error), "an error is one line"
    return error


def check_raise(source, location: str, field: str | None, reasons, **kwargs) -> rmclean.PairFormatError:
    """load_pairs(on_error="raise") stops with a message naming location, field and reason(s):
    ``reasons`` is one text or a tuple of texts."""
    error = raise_error(source, **kwargs)
    message = str(error)
    assert message.startswith(f"{location}: ")
    assert error.location == location
    assert error.field == field
    if field is not None:
        assert f"field '{field}'" in message
    for reason in (reasons,) if isinstance(reasons, str) else reasons:
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


BAD = "BAD"
AROUND = [0, 1, BAD, 2]  # what on_error="skip" gives for jsonl_with: good(0), good(1), the bad line, good(2)


def check_raise_and_skip(source, location: str, field: str | None, reasons, skipped: list | None):
    """check_raise, then (unless ``skipped`` is None) check_skip: ``skipped`` lists what on_error="skip"
    returns, ``i`` for good(i) and BAD for the one invalid row."""
    error = check_raise(source, location, field, reasons)
    if skipped is not None:
        bad = {skipped.index(BAD): f"{location}: {error.reason}"}
        check_skip(source, len(skipped), bad, good_texts(*((p, i) for p, i in enumerate(skipped) if i != BAD)))
    return error


# --- one bad line in a JSON-lines file ------------------------------------------------------


USER_HI = {"role": "user", "content": "hi"}
CUT_OFF = b'{"prompt": "x", "chosen": "y", "rejected": '
NO_COMMA = b'{"prompt": "x" "chosen": "y", "rejected": "z"}'
NOT_TEXT = "field 'chosen' must be text, a list of messages or a list of turns, got"


def chat(*answers):
    """Messages: the user's "hi", then the answers (dicts) as they are."""
    return [USER_HI, *answers]


# line 4 of jsonl_with (bytes as written; a dict is written as its JSON line);
# the field and reason(s) the error names; what on_error="skip" gives (None: not checked)
BAD_LINES = [
    pytest.param(CUT_OFF,
                 None, "malformed JSON: Expecting value", AROUND, id="malformed-json"),
    pytest.param(NO_COMMA,
                 None, "malformed JSON: Expecting ',' delimiter at column 16", None,
                 id="malformed-json-column-inside-the-line"),
    pytest.param(CUT_OFF,
                 None, "malformed JSON: Expecting value at column 44", None,
                 id="malformed-json-cut-off-reports-end-of-line-column"),
    pytest.param(b'{"prompt": "x", "chosen": "y"}',
                 "rejected", "field 'rejected' is missing (fields present: 'prompt', 'chosen')", AROUND,
                 id="missing-rejected"),
    pytest.param(b'{"prompt": "x", "chosen": true, "rejected": "z"}',
                 "chosen", f"{NOT_TEXT} a boolean (true)", AROUND, id="chosen-boolean"),
    pytest.param(b'{"prompt": "x", "chosen": 42, "rejected": "z"}',
                 "chosen", f"{NOT_TEXT} a number (42)", AROUND, id="chosen-integer"),
    pytest.param(b'{"prompt": "x", "chosen": 3.5, "rejected": "z"}',
                 "chosen", f"{NOT_TEXT} a number (3.5)", AROUND, id="chosen-float"),
    pytest.param(b'{"prompt": "x", "chosen": {"text": "y"}, "rejected": "z"}',
                 "chosen", f"{NOT_TEXT} an object", AROUND, id="chosen-object"),
    pytest.param(b'{"prompt": "x", "chosen": null, "rejected": "z"}',
                 "chosen", "field 'chosen' is null", AROUND, id="chosen-null"),
    pytest.param(b'{"prompt": "x", "chosen": NaN, "rejected": "z"}',
                 "chosen", f"{NOT_TEXT} a number (NaN)", AROUND, id="chosen-nan"),
    pytest.param(b'{"prompt": "x", "chosen": "y", "rejected": -Infinity}',
                 "rejected", "field 'rejected' must be text, a list of messages or a list of turns, got a number "
                 "(-Infinity)", AROUND, id="rejected-minus-infinity"),
    pytest.param(b'{"prompt": "x", "chosen": "y", "rejected": "z", "margin": NaN}',
                 "margin", "field 'margin' must be a finite number or null, got a number (NaN)", AROUND,
                 id="margin-nan"),
    pytest.param(b'{"prompt": 7, "chosen": "y", "rejected": "z"}',
                 "prompt", "field 'prompt' must be text, got a number (7)", AROUND, id="explicit-prompt-number"),
    pytest.param(b'{"chosen": "text", "rejected": ["q", "a"]}',
                 "rejected", "field 'rejected' is a list of turns but 'chosen' is text", None,
                 id="chosen-and-rejected-of-different-forms"),
    pytest.param(b'{"prompt": "caf\xe9", "chosen": "y", "rejected": "z"}',
                 None, "invalid UTF-8 at byte 16 of the line", AROUND, id="invalid-utf8"),
    pytest.param(b'["x", "y", "z"]',
                 None, "expected a JSON object, got a JSON array", AROUND, id="line-not-an-object"),
    pytest.param({"chosen": chat({"role": "assistant"}), "rejected": chat({"role": "assistant", "content": "b"})},
                 "chosen[1]", "must be a message with 'role' and 'content'", AROUND, id="message-without-content"),
    pytest.param({"chosen": chat({"role": "assistant", "content": "a"}),
                  "rejected": chat({"role": "assistant", "content": None})},
                 "rejected[1].content", "must be text, got null", None, id="message-content-not-text"),
    pytest.param({"chosen": chat(), "rejected": chat({"role": "assistant", "content": "b"})},
                 "chosen", "must end with an assistant message, got role 'user'", None,
                 id="messages-not-ending-with-assistant"),
]


@pytest.mark.parametrize(("middle", "field", "reasons", "skipped"), BAD_LINES)
def test_bad_jsonl_line(tmp_path, middle, field, reasons, skipped):
    path = jsonl_with(tmp_path, middle if isinstance(middle, bytes) else line(middle).encode())
    check_raise_and_skip(str(path), f"{path}, line 4", field, reasons, skipped)


# the row on line 4, the empty field, and the texts allow_empty=True keeps
EMPTY_RESPONSES = [
    pytest.param({"prompt": "x", "chosen": "", "rejected": "z"}, "chosen", ("x", "", "z"), id="empty"),
    pytest.param({"prompt": "x", "chosen": "   \n\t ", "rejected": "z"}, "chosen", ("x", "   \n\t ", "z"),
                 id="whitespace"),
    pytest.param({"response1": "a", "response2": "", "label": 1}, "response2", ("", "a", ""), id="judgement-response2"),
]


@pytest.mark.parametrize(("row", "field", "kept"), EMPTY_RESPONSES)
def test_empty_response_is_an_error_unless_allow_empty(tmp_path, row, field, kept):
    path = jsonl_with(tmp_path, line(row).encode())
    reason = f"field '{field}' is empty; pass allow_empty=True"
    check_raise_and_skip(str(path), f"{path}, line 4", field, reason, AROUND)

    ds = rmclean.load_pairs(str(path), allow_empty=True)
    assert len(ds) == 4
    assert (ds[2]["prompt"], ds[2]["chosen"], ds[2]["rejected"]) == kept
    assert col(ds, "flags") == [[], [], ["empty_response"], []]
    assert col(ds, "error") == [None] * 4


# --- one bad record in other containers ------------------------------------------------------


G0, G1, G2 = (line(good(i)) for i in range(3))
CSV_HEADER = "prompt,chosen,rejected\n"


def make_source(tmp_path: Path, name: str | None, content):
    """Write ``content`` to ``tmp_path / name``: text as is, rows as Parquet, {member: text} as a zip;
    with no name, ``content`` itself is the (in-memory) source."""
    if name is None:
        return content
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(content), path)
    elif name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as archive:
            for member, text in content.items():
                archive.writestr(member, text)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


# file name (None: in-memory rows), content; where the error is ({path}: the file), field and
# reason(s); what on_error="skip" gives (None: not checked)
BAD_RECORDS = [
    pytest.param("data.json", f"[\n{G0},\n{G1},\n" + '{"prompt": "x" "chosen": "y", "rejected": "z"}\n]\n',
                 "{path}, line 4", None, "malformed JSON: Expecting ',' delimiter at column 16", [0, 1, BAD],
                 id="json-array-malformed-element"),
    # past a syntax error the array cannot be parsed reliably: the error of the last row returned says so
    pytest.param("data.json", f"[\n{G0},\n" + '{"prompt": "x", "chosen": "y" "rejected": "z"},' + f"\n{G2}\n]\n",
                 "{path}, line 3", None,
                 ("the rest of the array could not be read", "Expecting ',' delimiter at column 31"), [0, BAD],
                 id="json-array-malformed-element-in-the-middle-stops-the-array"),
    pytest.param("data.json", f"[\n{G0},\n".encode() + b'{"prompt": "caf\xe9", "chosen": "y", "rejected": "z"},\n'
                 + f"{G2}\n]\n".encode(),
                 "{path}, line 3", None, "invalid UTF-8 at byte 16 of the array element", [0, BAD, 2],
                 id="json-array-invalid-utf8-in-one-element"),
    pytest.param("data.json", f'[\n  {G0},\n\n  "just a string",\n  {G2}\n]\n',
                 "{path}, line 4", None, "expected a JSON object, got a JSON string", [0, BAD, 2],
                 id="json-array-element-not-an-object"),
    pytest.param("data.csv", CSV_HEADER + 'prompt 0,chosen 0,rejected 0\n"prompt\n1",,rejected 1\n'
                                          "prompt 2,chosen 2,rejected 2\n",
                 "{path}, line 3", "chosen", "field 'chosen' is empty", [0, BAD, 2], id="csv-empty-cell"),
    pytest.param("data.csv", CSV_HEADER + '"prompt\n0",chosen 0,rejected 0\nprompt 1,chosen 1,\n',
                 "{path}, line 4", "rejected", "field 'rejected' is empty", None, id="csv-row-after-multiline-cell"),
    pytest.param("data.csv", CSV_HEADER + "prompt 0,chosen 0,rejected 0\n\nprompt 1,,rejected 1\n",
                 "{path}, line 4", "chosen", "field 'chosen' is empty", None, id="csv-blank-line-keeps-line-numbers"),
    pytest.param("data.csv", (CSV_HEADER + "prompt 0,chosen 0,rejected 0\n").encode() + b"p,caf\xe9,r\n"
                 + b"prompt 2,chosen 2,rejected 2\n",
                 "{path}, line 3", "chosen", "field 'chosen' holds invalid UTF-8 (b'\\xe9", [0, BAD, 2],
                 id="csv-invalid-utf8-in-one-cell"),
    pytest.param("data.csv", CSV_HEADER + "prompt 0,chosen 0,rejected 0\np,c,r,extra\n",
                 "{path}, line 3", None, "more cells than header columns", [0, BAD], id="csv-too-many-cells"),
    pytest.param("data.parquet", [good(0), {"prompt": "x", "chosen": None, "rejected": "z"}, good(2)],
                 "{path}, row 1", "chosen", "field 'chosen' is null", [0, BAD, 2], id="parquet-null-chosen"),
    pytest.param("data.zip", {"inner/pairs.jsonl": G0 + "\n" + '{"chosen": "c"}' + "\n"},
                 "{path}/inner/pairs.jsonl, line 2", "rejected", "field 'rejected' is missing", [0, BAD],
                 id="zip-member-named"),
    pytest.param(None, [good(0), ["not", "a", "dict"], good(2)],
                 "<rows>, row 1", None, "expected a mapping of fields, got list", [0, BAD, 2],
                 id="in-memory-row-not-a-mapping"),
]


@pytest.mark.parametrize(("name", "content", "where", "field", "reasons", "skipped"), BAD_RECORDS)
def test_bad_record_in_other_containers(tmp_path, name, content, where, field, reasons, skipped):
    source = make_source(tmp_path, name, content)
    error = check_raise_and_skip(source, where.format(path=source), field, reasons, skipped)
    if ", row " in where:  # Parquet and in-memory rows are counted in rows, not lines
        assert "line" not in error.location


# --- truncated files and several files ----------------------------------------------------------


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


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        pytest.param({"chosen_column": "chosen"}, TypeError, "unexpected keyword argument.*chosen_column",
                     id="unknown-keyword"),
        pytest.param({"on_error": "bogus"}, ValueError, "on_error must be 'raise' or 'skip', got 'bogus'",
                     id="bogus-on_error"),
    ],
)
def test_bad_argument(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        rmclean.load_pairs([good(0)], **kwargs)
