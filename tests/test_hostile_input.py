"""Hostile input (issue #14, "nothing lost, nothing silently wrong"): every input row comes back
as a pair or as an invalid row with its reason, size caps hold memory down, and no file makes
the loader or the command line stop with a traceback.

Every fixture is synthetic and written by the test itself into ``tmp_path``.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import pytest

import rmclean
from rmclean.cli import main
from rmclean.data.limits import ReadLimits

pytestmark = pytest.mark.usefixtures("hermetic")

MIB = 1 << 20
HEADER = "prompt,chosen,rejected\n"


def good(i: int) -> dict:
    return {"prompt": f"prompt {i}", "chosen": f"chosen {i}", "rejected": f"rejected {i}"}


def line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def csv_line(i: int) -> str:
    return f"prompt {i},chosen {i},rejected {i}\n"


def texts(ds) -> list[tuple[str, str, str]]:
    return list(zip(ds["prompt"], ds["chosen"], ds["rejected"]))


def good_texts(*indexes: int) -> list[tuple[str, str, str]]:
    return [(f"prompt {i}", f"chosen {i}", f"rejected {i}") for i in indexes]


def raised(source, **kwargs) -> rmclean.PairFormatError:
    with pytest.raises(rmclean.PairFormatError) as info:
        rmclean.load_pairs(source, **kwargs)
    assert "\n" not in str(info.value), "errors are one line"
    return info.value


def check_skip(source, valid: list[tuple[str, str, str]], invalid: dict[int, str], **kwargs):
    """on_error="skip": one output row per input row, the valid ones intact, each invalid one
    with a reason that contains ``invalid[row position]``."""
    ds = rmclean.load_pairs(source, on_error="skip", **kwargs)
    assert len(ds) == len(valid) + len(invalid)
    errors = list(ds["error"])
    assert {i for i, e in enumerate(errors) if e is not None} == set(invalid)
    for i, fragment in invalid.items():
        assert fragment in errors[i], errors[i]
        assert ds[i]["flags"] == ["invalid"]
    kept, _ = rmclean.split_invalid(ds)
    assert texts(kept) == valid
    return ds


def multi_member_gzip(prefix: bytes, filler_mib: int, suffix: bytes = b"") -> bytes:
    """A gzip stream of ``prefix``, ``filler_mib`` MiB of ``a`` and ``suffix``, small on disk: one
    compressed MiB repeated (gzip readers join members)."""
    one = gzip.compress(b"a" * MIB, mtime=0)
    return gzip.compress(prefix, mtime=0) + one * filler_mib + gzip.compress(suffix, mtime=0)


def peak_memory(load) -> int:
    """Peak bytes Python allocated while ``load()`` ran (after a warm-up load paid the imports)."""
    tracemalloc.start()
    try:
        load()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- 1. CSV: long cells, bad records ------------------------------------------------------------


def test_csv_cell_longer_than_csvs_default_field_limit_loads(tmp_path):
    long = "x" * 200_000  # csv's default field limit is 131,072 characters
    path = tmp_path / "long.csv"
    path.write_text(HEADER + csv_line(0) + f'prompt 1,"{long}",rejected 1\n' + csv_line(2), encoding="utf-8")
    ds = rmclean.load_pairs(str(path))
    assert texts(ds) == [good_texts(0)[0], ("prompt 1", long, "rejected 1"), good_texts(2)[0]]


def test_csv_record_over_the_row_cap_is_one_invalid_row_and_the_rest_reads_on(tmp_path):
    cell = "\n".join("y" * 1000 for _ in range(8))  # a quoted cell over 8 lines, ~8 KB
    path = tmp_path / "big.csv"
    path.write_text(HEADER + csv_line(0) + f'prompt 1,"{cell}",rejected 1\n' + csv_line(2) + "prompt 3,,rejected 3\n",
                    encoding="utf-8")
    # the record of lines 3-10 is skipped whole: the next records keep their rows and lines
    check_skip(str(path), good_texts(0, 2), {1: f"{path}, line 3: the row takes", 3: f"{path}, line 12:"},
               max_row_bytes=4096)
    error = raised(str(path), max_row_bytes=4096)
    assert error.location == f"{path}, line 3"
    assert "over the 4 KiB row cap: raise max_row_bytes=" in error.reason


def test_csv_unterminated_quote_is_an_invalid_row_not_a_giant_cell(tmp_path):
    path = tmp_path / "open_quote.csv"
    path.write_text(HEADER + csv_line(0) + 'prompt 1,"chosen 1,rejected 1\n' + csv_line(2), encoding="utf-8")
    check_skip(str(path), good_texts(0), {1: "unterminated quoted cell: a quote opened on line 3 is never closed"})


def test_csv_invalid_utf8_is_one_invalid_row(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + csv_line(0)).encode() + b"prompt 1,caf\xe9,rejected 1\n" + csv_line(2).encode())
    ds = check_skip(str(path), good_texts(0, 2), {1: "field 'chosen' holds invalid UTF-8 (b'\\xe9"})
    assert ds[1]["error"].startswith(f"{path}, line 3: ")
    assert raised(str(path)).field == "chosen"


def test_parquet_text_with_invalid_utf8_is_one_invalid_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    chosen = [b"chosen 0", b"caf\xe9", b"chosen 2"]  # Parquet stores text unchecked: a damaged file can hold this
    offsets = pa.array([0, *[sum(map(len, chosen[:i + 1])) for i in range(3)]], type=pa.int32())
    column = pa.Array.from_buffers(pa.string(), 3, [None, offsets.buffers()[1], pa.py_buffer(b"".join(chosen))])
    path = tmp_path / "damaged.parquet"
    pq.write_table(pa.table({"prompt": [f"prompt {i}" for i in range(3)], "chosen": column,
                             "rejected": [f"rejected {i}" for i in range(3)]}), path)
    ds = check_skip(str(path), good_texts(0, 2), {1: "field 'chosen' holds invalid UTF-8 (b'\\xe9')"})
    assert ds["error"][1].startswith(f"{path}, row 1: ")


# --- 2. deep nesting, broken archives -------------------------------------------------------------


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("container", ["jsonl", "json"])
def test_deeply_nested_json_is_an_invalid_row(tmp_path, container):
    bad = '{"chosen": "c", "rejected": "r", "meta": ' + deep(100_000) + "}"
    rows = [line(good(0)).strip(), bad, line(good(2)).strip()]
    path = tmp_path / f"deep.{container}"
    path.write_text("\n".join(rows) + "\n" if container == "jsonl" else "[\n" + ",\n".join(rows) + "\n]\n",
                    encoding="utf-8")
    where = f"{path}, line {2 if container == 'jsonl' else 3}"
    check_skip(str(path), good_texts(0, 2), {1: f"{where}: JSON nested too deeply"})
    assert raised(str(path)).location == where


def test_nesting_arrow_cannot_store_is_kept_as_json_text(tmp_path):
    meta = json.loads(deep(100))  # parses, but Arrow refuses a schema 64 levels deep
    path = tmp_path / "nested.jsonl"
    path.write_text(line({**good(0), "meta": meta}) + line(good(1)), encoding="utf-8")
    ds = rmclean.load_pairs(str(path))
    assert texts(ds) == good_texts(0, 1)
    assert json.loads(ds["meta"][0]) == meta and ds["meta"][1] is None


def zip_with_damaged_member(path: Path) -> None:
    """good.jsonl intact, then damaged.jsonl with one byte changed after its CRC was written: it
    still parses, so only the CRC tells."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("good.jsonl", line(good(0)))
        archive.writestr("damaged.jsonl", line(good(5)) + line(good(6)))
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"chosen 5") + 7] = ord("4")
    path.write_bytes(bytes(raw))


def test_zip_crc_error_names_the_archive_and_member_and_keeps_the_other_members(tmp_path):
    path = tmp_path / "pairs.zip"
    zip_with_damaged_member(path)
    member = f"{path}/damaged.jsonl"
    # members are read in name order: damaged.jsonl (one invalid row for the whole member), good.jsonl
    ds = check_skip(str(path), good_texts(0), {0: "damaged archive member (Bad CRC-32"})
    assert ds["error"][0].startswith(f"{member}: damaged archive member")
    error = raised(str(path))
    assert error.location == member and "Bad CRC-32 for file 'damaged.jsonl'" in error.reason


def test_not_a_zip_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "fake.zip"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    error = raised(str(path))
    assert error.location == str(path) and "not a readable zip archive" in error.reason


# --- 3. size caps: long lines, bombs ---------------------------------------------------------------


def test_jsonl_line_over_the_row_cap_is_an_invalid_row(tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text(line(good(0)) + line({**good(1), "chosen": "z" * 5000}) + "\n" + line(good(2)), encoding="utf-8")
    ds = check_skip(str(path), good_texts(0, 2), {1: f"{path}, line 2: the row takes"}, max_row_bytes="4K")
    assert "over the 4 KiB row cap" in ds["error"][1]
    assert raised(str(path), max_row_bytes=4096).location == f"{path}, line 2"
    assert len(rmclean.load_pairs(str(path), max_row_bytes=8192)) == 3


def test_row_cap_from_the_environment_and_explicit_value_wins(tmp_path, monkeypatch):
    path = tmp_path / "long.jsonl"
    path.write_text(line({**good(0), "chosen": "z" * 3000}), encoding="utf-8")
    monkeypatch.setenv("RMCLEAN_MAX_ROW_BYTES", "2KiB")
    assert "over the 2 KiB row cap" in raised(str(path)).reason
    assert len(rmclean.load_pairs(str(path), max_row_bytes=MIB)) == 1
    monkeypatch.setenv("RMCLEAN_MAX_ROW_BYTES", "lots")
    with pytest.raises(ValueError, match=r"\$RMCLEAN_MAX_ROW_BYTES must be a number of bytes such as"):
        rmclean.load_pairs(str(path))


@pytest.mark.parametrize(("values", "message"), [
    ({"max_row_bytes": 0}, "max_row_bytes must be a positive whole number of bytes, got 0"),
    ({"max_decompressed_bytes": -5}, "max_decompressed_bytes must be a positive whole number of bytes, got -5"),
    ({"max_row_bytes": 1.5}, "max_row_bytes must be a positive whole number of bytes, got 1.5"),
])
def test_read_limits_are_checked(values, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        ReadLimits(**values)


def test_read_limits_defaults_fit_real_data():
    limits = ReadLimits.resolve()
    assert limits.max_row_bytes == 16 * MIB and limits.max_decompressed_bytes == 4 << 30
    assert ReadLimits.resolve(max_row_bytes="64M").max_row_bytes == 64 * MIB


def test_gzip_bomb_stops_at_the_decompressed_cap_naming_the_file(tmp_path):
    path = tmp_path / "bomb.jsonl.gz"
    path.write_bytes(multi_member_gzip(line(good(0)).encode() + b'{"chosen": "', 24, b'", "rejected": "r"}\n'))
    assert path.stat().st_size < 200_000
    cap = {"max_decompressed_bytes": 8 * MIB}
    ds = check_skip(str(path), good_texts(0), {1: "the file expands past the 8 MiB cap on decompressed bytes"}, **cap)
    assert ds["error"][1].startswith(f"{path}, line 2: ")
    assert "rows after it were not read" in ds["error"][1]
    error = raised(str(path), **cap)
    assert error.location == f"{path}, line 2" and "max_decompressed_bytes=" in error.reason
    assert len(rmclean.load_pairs(str(path), max_decompressed_bytes=32 * MIB, max_row_bytes=32 * MIB)) == 2


def test_zip_bomb_member_stops_at_the_cap(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.jsonl", line(good(0)))
        with archive.open("b.jsonl", "w") as member:
            for _ in range(32):
                member.write(b" " * MIB)
    assert path.stat().st_size < 200_000
    ds = check_skip(str(path), good_texts(0), {1: "expands past the 8 MiB cap on decompressed bytes"},
                    max_decompressed_bytes=8 * MIB)
    assert ds["error"][1].startswith(f"{path}/b.jsonl: ")
    assert raised(str(path), max_decompressed_bytes=8 * MIB).location == f"{path}/b.jsonl"


def test_gzip_bomb_inside_a_zip_stops_at_the_cap_naming_the_member(tmp_path):
    path = tmp_path / "nested.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("inner.jsonl.gz", multi_member_gzip(line(good(0)).encode() + b'{"chosen": "', 24))
    ds = check_skip(str(path), good_texts(0), {1: "expands past the 8 MiB cap on decompressed bytes"},
                    max_decompressed_bytes=8 * MIB)
    assert ds["error"][1].startswith(f"{path}/inner.jsonl.gz, line 2: ")


@pytest.mark.parametrize("name", ["bomb.json.gz", "bomb.jsonl.gz"])
def test_compressed_input_is_streamed_not_read_whole(tmp_path, name):
    """64 MiB of decompressed text read under 1 MiB row caps never holds more than a few MiB."""
    path = tmp_path / name
    good_row = json.dumps(good(1)).encode()
    if name.startswith("bomb.json."):
        path.write_bytes(multi_member_gzip(b'[{"chosen": "', 64, b'", "rejected": "r"},\n' + good_row + b"]\n"))
    else:
        path.write_bytes(multi_member_gzip(b'{"chosen": "', 64, b'", "rejected": "r"}\n' + good_row + b"\n"))
    (tmp_path / "warm.jsonl").write_text(line(good(0)), encoding="utf-8")
    rmclean.load_pairs(str(tmp_path / "warm.jsonl"))  # imports datasets and pyarrow before measuring
    result = {}
    peak = peak_memory(lambda: result.setdefault("ds", rmclean.load_pairs(str(path), on_error="skip",
                                                                          max_row_bytes=MIB)))
    ds = result["ds"]
    assert texts(rmclean.split_invalid(ds)[0]) == good_texts(1)
    assert "the row takes 64 MiB" in ds["error"][0]
    assert peak < 12 * MIB, f"peak {peak / MIB:.1f} MiB"


# --- 4. numbers that are not numbers, text that must survive ----------------------------------------


BASE = '"prompt": "p", "chosen": "c", "rejected": "r"'


def with_base(fields: str) -> str:
    """A JSON line: the prompt, chosen and rejected of BASE, then ``fields`` (JSON text)."""
    return "{" + BASE + ", " + fields + "}"


NON_FINITE = [
    pytest.param(with_base('"score_chosen": NaN, "score_rejected": 3'), "score_chosen", "got a number (NaN)",
                 id="score-nan"),
    pytest.param(with_base('"margin": Infinity'), "margin", "got a number (Infinity)", id="margin-infinity"),
    pytest.param(with_base('"metadata": {"score_chosen": 5, "score_rejected": -Infinity}'),
                 "metadata.score_rejected", "got a number (-Infinity)", id="metadata-score-minus-infinity"),
    pytest.param(with_base('"soft_label": "nan"'), "soft_label", "got text ('nan')", id="soft-label-text-nan"),
    pytest.param('{"prompt": "p", "chosen": NaN, "rejected": "r"}', "chosen",
                 "must be text, a list of messages or a list of turns, got a number (NaN)", id="chosen-nan"),
    pytest.param('{"response1": "a", "response2": "b", "label": NaN}', "label",
                 "must be a label such as 1/2, 'A'/'B' or 'tie', got a number (NaN)", id="label-nan"),
]


@pytest.mark.parametrize(("bad", "field", "reason"), NON_FINITE)
def test_nan_and_infinity_are_invalid_rows(tmp_path, bad, field, reason):
    path = tmp_path / "numbers.jsonl"
    path.write_text(line(good(0)) + bad + "\n" + line(good(2)), encoding="utf-8")
    error = raised(str(path))
    assert (error.location, error.field) == (f"{path}, line 2", field)
    assert reason in error.reason
    check_skip(str(path), good_texts(0, 2), {1: f"field '{field}'"})


def test_finite_scores_and_nan_in_fields_rmclean_does_not_read_are_kept(tmp_path):
    path = tmp_path / "numbers.jsonl"
    path.write_text(with_base('"score_chosen": 2.5, "score_rejected": 4, "margin": null, "note": NaN') + "\n",
                    encoding="utf-8")
    ds = rmclean.load_pairs(str(path))
    assert ds[0]["flags"] == ["score_reversed"] and ds[0]["score_chosen"] == 2.5


CJK_EMOJI = {
    "prompt": "用中文解释：什么是奖励模型？ 日本語もOK。한국어도요.",
    "chosen": "奖励模型给回答打分 👍🏽 👨‍👩‍👧‍👦 🇯🇵 — café, ﬁ, \u200b zero-width, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "rejected": "不知道 🤷 \U0001F600",
}


def write_every_way(folder: Path, row: dict) -> list[Path]:
    """``row`` as raw UTF-8 JSON Lines, as ASCII-escaped JSON Lines (emoji as surrogate-pair escapes), as
    a JSON array, a CSV, a .jsonl.gz and a zip member."""
    folder.mkdir()
    paths = {name: folder / name for name in ("raw.jsonl", "escaped.jsonl", "array.json", "table.csv",
                                              "packed.jsonl.gz", "archive.zip")}
    paths["raw.jsonl"].write_text(line(row), encoding="utf-8")
    paths["escaped.jsonl"].write_text(json.dumps(row) + "\n", encoding="ascii")
    paths["array.json"].write_text(json.dumps([row], ensure_ascii=False, indent=1), encoding="utf-8")
    with open(paths["table.csv"], "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    paths["packed.jsonl.gz"].write_bytes(gzip.compress(line(row).encode("utf-8")))
    with zipfile.ZipFile(paths["archive.zip"], "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("inner.jsonl", line(row))
    return list(paths.values())


def test_cjk_and_emoji_survive_unchanged_in_every_container(tmp_path):
    for path in write_every_way(tmp_path / "all", CJK_EMOJI):
        ds = rmclean.load_pairs(str(path))
        assert texts(ds) == [(CJK_EMOJI["prompt"], CJK_EMOJI["chosen"], CJK_EMOJI["rejected"])], path.name
        assert ds["error"] == [None]


def test_unpaired_surrogate_escape_is_an_invalid_row_not_a_crash(tmp_path):
    path = tmp_path / "surrogate.jsonl"
    path.write_text(line(good(0)) + '{"prompt": "p", "chosen": "half an emoji \\ud83d", "rejected": "r"}\n'
                    + '{"prompt": "p", "chosen": "whole \\ud83d\\ude00", "rejected": "r"}\n'
                    + with_base('"meta": {"key \\udc00": 1}') + "\n", encoding="ascii")
    ds = check_skip(str(path), [good_texts(0)[0], ("p", "whole 😀", "r")],
                    {1: "unpaired UTF-16 surrogate escape", 3: "field 'meta.key \\udc00' holds an unpaired"})
    assert ds["error"][1].startswith(f"{path}, line 2: field 'chosen'")
    assert raised(str(path)).field == "chosen"


@pytest.mark.parametrize("name", ["big.jsonl", "big.csv", "big.json"])
def test_ten_megabyte_row_under_the_default_cap_loads(tmp_path, name):
    big = "长" * (10 * MIB // 3) + "!"  # 10 MB of UTF-8
    row = {"prompt": "p", "chosen": big, "rejected": "r"}
    path = write_every_way(tmp_path / "big", row)
    path = {p.name: p for p in path}[{"big.jsonl": "raw.jsonl", "big.csv": "table.csv", "big.json": "array.json"}[name]]
    assert texts(rmclean.load_pairs(str(path))) == [("p", big, "r")]


def test_bom_and_mixed_line_breaks(tmp_path):
    jsonl = tmp_path / "mixed.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + line(good(0)).encode().replace(b"\n", b"\r\n") + b"\n"
                      + line(good(1)).encode() + line(good(2)).encode().replace(b"\n", b"\r\n"))
    table = tmp_path / "mixed.csv"
    table.write_bytes(b"\xef\xbb\xbf" + HEADER.encode().replace(b"\n", b"\r") + csv_line(0).encode()
                      + csv_line(1).encode().replace(b"\n", b"\r\n") + csv_line(2).encode().replace(b"\n", b"\r"))
    for path in (jsonl, table):
        ds = rmclean.load_pairs(str(path))
        assert texts(ds) == good_texts(0, 1, 2) and list(ds["row"]) == [0, 1, 2], path.name


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "empty.csv", "empty.jsonl.gz"])
def test_empty_file_gives_no_rows_and_no_error(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(gzip.compress(b"") if name.endswith(".gz") else b"")
    assert len(rmclean.load_pairs(str(path))) == 0


# --- 5. the command line: operating-system errors are one line --------------------------------------


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_cli_reading_a_folder_as_a_file_is_one_line(capsys, tmp_path):
    code, err = run_cli(capsys, "compare", str(tmp_path))
    assert code == 1
    assert err == f"rmclean: error: cannot use {tmp_path}: Is a directory\n"


def test_cli_path_under_a_regular_file_is_one_line(capsys, tmp_path):
    regular = tmp_path / "notes.txt"
    regular.write_text("a file, not a folder\n", encoding="utf-8")
    code, err = run_cli(capsys, "compare", str(regular / "config.json"))
    assert code == 1
    assert err == f"rmclean: error: cannot use {regular / 'config.json'}: Not a directory\n"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_cli_full_disk_is_one_line(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text(line(good(0)), encoding="utf-8")
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "rmclean", "data", "inspect", str(data), "--json"],
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=300, check=False,
                                env={**os.environ, "PYTHONUNBUFFERED": ""})
    assert result.returncode == 1, result.stderr
    assert result.stderr == "rmclean: error: cannot write <standard output>: No space left on device\n"
