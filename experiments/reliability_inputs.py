"""Hostile inputs (issue #14, "nothing lost, nothing silently wrong"): is every row accounted for?

Builds a corpus of damaged and hostile files in a temporary folder (oversize CSV cells, deep
nesting, a zip member failing its CRC, a truncated gzip, a zip bomb and a gzip bomb at the
default caps, NaN and Infinity, wrong types, identical responses, CJK and emoji, 10 MB and 20 MiB
lines, byte-order marks, mixed line breaks, empty files), loads each through
``rmclean.load_pairs`` with ``on_error="skip"`` and with ``on_error="raise"``, and checks that

- every row written comes back as a pair or as an invalid row (``lost`` = rows written - pairs -
  invalid, target 0; where a file itself no longer holds its rows, the note says which invalid
  row reports it),
- the pairs that come back hold the text that was written (``intact``),
- the error ``on_error="raise"`` stops with is one line naming the file.

Writes ``experiments/results/reliability_inputs.json`` and ``.md``. About 70 s (most of it
decompressing the gzip bomb up to the 4 GiB cap, twice); peak memory about 0.5 GB.

    python experiments/reliability_inputs.py
"""

from __future__ import annotations

import csv
import gzip
import json
import platform
import resource
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rmclean
from rmclean.data.limits import ReadLimits, format_size
from rmclean.files import write_results

RESULTS = Path(__file__).resolve().parent / "results" / "reliability_inputs"
MIB = 1 << 20


@dataclass(frozen=True)
class Case:
    """One hostile input: ``build(folder)`` writes it and returns ``(source, rows written)``;
    ``intact(valid pairs)`` checks the text of the pairs that came back (None: nothing to check);
    ``note`` explains rows a file itself no longer holds (``{in_file}``: rows it still holds whole)."""

    name: str
    build: Callable[[Path], tuple[Path, int]]
    intact: Callable[[Any], bool] | None = None
    note: str = ""


# --- writing the corpus ---------------------------------------------------------------------


def good(i: int) -> dict[str, str]:
    return {"prompt": f"prompt {i}", "chosen": f"chosen {i}", "rejected": f"rejected {i}"}


def jsonl(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def gzip_of_filler(prefix: bytes, filler: int, suffix: bytes) -> bytes:
    """``prefix``, ``filler`` MiB of ``a``, ``suffix`` as one gzip stream, small on disk: a
    compressed MiB repeated (readers join gzip members)."""
    one = gzip.compress(b"a" * MIB, mtime=0)
    return gzip.compress(prefix, mtime=0) + one * filler + gzip.compress(suffix, mtime=0)


def csv_cell(size: int) -> Callable[[Path], tuple[Path, int]]:
    def build(folder: Path) -> tuple[Path, int]:
        rows = [good(0), {**good(1), "chosen": "x" * size}, good(2)]
        return write_csv(folder / "cells.csv", rows), 3
    return build


def csv_open_quote(folder: Path) -> tuple[Path, int]:
    text = "prompt,chosen,rejected\nprompt 0,chosen 0,rejected 0\nprompt 1,\"chosen 1,rejected 1\nprompt 2,c,r\n"
    return write(folder / "open_quote.csv", text), 3


def deep_nesting(container: str) -> Callable[[Path], tuple[Path, int]]:
    def build(folder: Path) -> tuple[Path, int]:
        bad = '{"chosen": "c", "rejected": "r", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}"
        rows = [jsonl(good(0)).strip(), bad, jsonl(good(2)).strip()]
        if container == "jsonl":
            return write(folder / "deep.jsonl", "\n".join(rows) + "\n"), 3
        return write(folder / "deep.json", "[\n" + ",\n".join(rows) + "\n]\n"), 3
    return build


def zip_crc(folder: Path) -> tuple[Path, int]:
    path = folder / "damaged.zip"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("a_good.jsonl", jsonl(good(0)) + jsonl(good(1)))
        archive.writestr("b_damaged.jsonl", jsonl(good(5)) + jsonl(good(6)))
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"chosen 5") + 7] = ord("4")  # still valid JSON: only the CRC can tell
    return write(path, bytes(raw)), 4


def truncated_gzip(folder: Path) -> tuple[Path, int]:
    whole = gzip.compress("".join(jsonl(good(i)) for i in range(200)).encode(), mtime=0)
    return write(folder / "cut.jsonl.gz", whole[: int(len(whole) * 0.6)]), 200


def whole_rows_in(path: Path) -> int | None:
    """Complete lines a cut-off gzip file still holds (None for other files)."""
    if path.suffix != ".gz":
        return None
    inflater = zlib.decompressobj(wbits=31)
    return inflater.decompress(path.read_bytes()).count(b"\n")


def gzip_bomb(folder: Path) -> tuple[Path, int]:
    """A good row, then one row of 4.2 GiB of ``a`` (about 4 MB on disk)."""
    content = gzip_of_filler(jsonl(good(0)).encode() + b'{"chosen": "', 4300, b'", "rejected": "r"}\n')
    return write(folder / "bomb.jsonl.gz", content), 2


def zip_bomb(folder: Path) -> tuple[Path, int]:
    """A good member, then a member of one 4.2 GiB row of spaces (about 20 MB on disk)."""
    path = folder / "bomb.zip"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("a.jsonl", jsonl(good(0)))
        with archive.open("b.jsonl", "w", force_zip64=True) as member:
            member.write(b'{"chosen": "')
            block = b" " * (4 * MIB)
            for _ in range(1075):
                member.write(block)
            member.write(b'", "rejected": "r"}\n')
    return path, 2


def numbers(folder: Path) -> tuple[Path, int]:
    base = '"prompt": "p", "chosen": "c", "rejected": "r"'
    lines = [
        jsonl(good(0)).strip(),
        "{" + base + ', "score_chosen": NaN, "score_rejected": 3}',
        "{" + base + ', "margin": Infinity}',
        "{" + base + ', "metadata": {"score_chosen": 5, "score_rejected": -Infinity}}',
        '{"prompt": "p", "chosen": NaN, "rejected": "r"}',
        '{"response1": "a", "response2": "b", "label": Infinity}',
        "{" + base + ', "score_chosen": 2.5, "score_rejected": 4}',
    ]
    return write(folder / "numbers.jsonl", "\n".join(lines) + "\n"), 7


def wrong_types(folder: Path) -> tuple[Path, int]:
    lines = [
        jsonl(good(0)).strip(),
        '{"prompt": "p", "chosen": true, "rejected": "r"}',
        '{"prompt": "p", "chosen": 42, "rejected": "r"}',
        '{"prompt": "p", "chosen": null, "rejected": "r"}',
        '{"prompt": "p", "chosen": {"text": "c"}, "rejected": "r"}',
        '{"prompt": 7, "chosen": "c", "rejected": "r"}',
        '{"prompt": "p", "chosen": "c", "rejected": ["a", "b"]}',
        '["not", "an", "object"]',
    ]
    return write(folder / "types.jsonl", "\n".join(lines) + "\n"), 8


def identical(folder: Path) -> tuple[Path, int]:
    rows = [{"prompt": f"p{i}", "chosen": "same answer", "rejected": "same answer"} for i in range(3)]
    return write(folder / "identical.jsonl", "".join(jsonl(r) for r in rows)), 3


CJK_EMOJI = [
    {"prompt": "用中文解释：什么是奖励模型？", "chosen": "奖励模型给回答打分 👍🏽 👨‍👩‍👧‍👦 🇯🇵", "rejected": "不知道 🤷"},
    {"prompt": "日本語で", "chosen": "はい、𝔘𝔫𝔦𝔠𝔬𝔡𝔢 と café と \u200b", "rejected": "한국어 😀"},
]


def cjk_emoji(folder: Path) -> tuple[Path, int]:
    raw = "".join(jsonl(r) for r in CJK_EMOJI)
    escaped = "".join(json.dumps(r) + "\n" for r in CJK_EMOJI)  # emoji as surrogate-pair escapes
    return write(folder / "cjk_emoji.jsonl", raw + escaped), 4


def cjk_intact(valid: Any) -> bool:
    expected = [(r["prompt"], r["chosen"], r["rejected"]) for r in CJK_EMOJI] * 2
    return list(zip(valid["prompt"], valid["chosen"], valid["rejected"])) == expected


def long_line(size: int) -> Callable[[Path], tuple[Path, int]]:
    def build(folder: Path) -> tuple[Path, int]:
        row = {"prompt": "p", "chosen": "长" * (size // 3), "rejected": "r"}
        return write(folder / "long.jsonl", jsonl(good(0)) + jsonl(row)), 2
    return build


def bom_newlines(kind: str) -> Callable[[Path], tuple[Path, int]]:
    def build(folder: Path) -> tuple[Path, int]:
        if kind == "jsonl":
            lines = [jsonl(good(i)).encode() for i in range(3)]
            content = b"\xef\xbb\xbf" + lines[0].replace(b"\n", b"\r\n") + lines[1] + b"\n" + lines[2].rstrip(b"\n")
            return write(folder / "bom.jsonl", content), 3
        rows = [f"prompt {i},chosen {i},rejected {i}" for i in range(3)]
        content = "\ufeffprompt,chosen,rejected\r" + rows[0] + "\r\n" + rows[1] + "\n" + rows[2] + "\r"
        return write(folder / "bom.csv", content), 3
    return build


def empty(suffix: str) -> Callable[[Path], tuple[Path, int]]:
    def build(folder: Path) -> tuple[Path, int]:
        return write(folder / f"empty{suffix}", gzip.compress(b"") if suffix.endswith(".gz") else b""), 0
    return build


def lone_surrogate(folder: Path) -> tuple[Path, int]:
    lines = [jsonl(good(0)).strip(), '{"prompt": "p", "chosen": "half an emoji \\ud83d", "rejected": "r"}']
    return write(folder / "surrogate.jsonl", "\n".join(lines) + "\n"), 2


def invalid_utf8(folder: Path) -> tuple[Path, int]:
    content = jsonl(good(0)).encode() + b'{"prompt": "caf\xe9", "chosen": "c", "rejected": "r"}\n' + jsonl(good(2)).encode()
    return write(folder / "latin1.jsonl", content), 3


def texts_are(*expected: tuple[str, str, str]) -> Callable[[Any], bool]:
    return lambda valid: list(zip(valid["prompt"], valid["chosen"], valid["rejected"])) == list(expected)


def goods(*indexes: int) -> list[tuple[str, str, str]]:
    return [(f"prompt {i}", f"chosen {i}", f"rejected {i}") for i in indexes]


CASES = [
    Case("CSV cell of 200,000 characters", csv_cell(200_000),
         texts_are(goods(0)[0], ("prompt 1", "x" * 200_000, "rejected 1"), goods(2)[0])),
    Case("CSV cell of 20 MiB (over the row cap)", csv_cell(20 * MIB), texts_are(*goods(0, 2))),
    Case("CSV quote never closed", csv_open_quote, texts_are(*goods(0)),
         note="the third row sits inside the quote the second opens: one invalid row reports the open quote and says "
              "the rest of the file was read as one cell"),
    Case("JSON Lines nested 100,000 deep", deep_nesting("jsonl"), texts_are(*goods(0, 2))),
    Case("JSON array nested 100,000 deep", deep_nesting("json"), texts_are(*goods(0, 2))),
    Case("zip member failing its CRC", zip_crc, texts_are(*goods(0, 1)),
         note="the damaged member's 2 rows are untrusted bytes: one invalid row names the member and says so"),
    Case("gzip cut off at 60%", truncated_gzip, None,
         note="the cut file still holds {in_file} whole rows and part of the next; one invalid row says where the "
              "file ends; the rows after the cut are no longer in the file"),
    Case("gzip bomb (4 MB on disk, 4.2 GiB inside)", gzip_bomb, texts_are(*goods(0))),
    Case("zip bomb (20 MB on disk, 4.2 GiB inside)", zip_bomb, texts_are(*goods(0))),
    Case("NaN and Infinity", numbers, texts_are(goods(0)[0], ("p", "c", "r"))),
    Case("wrong types", wrong_types, texts_are(*goods(0))),
    Case("identical responses", identical, texts_are(*[(f"p{i}", "same answer", "same answer") for i in range(3)])),
    Case("CJK and emoji (raw and escaped)", cjk_emoji, cjk_intact),
    Case("unpaired surrogate escape", lone_surrogate, texts_are(*goods(0))),
    Case("invalid UTF-8", invalid_utf8, texts_are(*goods(0, 2))),
    Case("10 MB line", long_line(10_000_000), lambda valid: len(valid) == 2 and len(valid["chosen"][1]) == 3_333_333),
    Case("20 MiB line (over the row cap)", long_line(20 * MIB), texts_are(*goods(0))),
    Case("JSON Lines: BOM, CRLF/LF, no final newline", bom_newlines("jsonl"), texts_are(*goods(0, 1, 2))),
    Case("CSV: BOM, CR/CRLF/LF", bom_newlines("csv"), texts_are(*goods(0, 1, 2))),
    Case("empty .jsonl", empty(".jsonl")),
    Case("empty .csv", empty(".csv")),
    Case("empty .json.gz", empty(".json.gz")),
]


# --- loading it ------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def run_case(case: Case, folder: Path) -> dict[str, Any]:
    """Load one case with on_error="skip" and "raise"; what came back, and the error."""
    source, rows = case.build(folder)
    started = time.perf_counter()
    result: dict[str, Any] = {"case": case.name, "file": source.name, "bytes_on_disk": source.stat().st_size,
                              "rows_written": rows}
    try:
        pairs = rmclean.load_pairs(str(source), on_error="skip")
    except Exception as exc:  # noqa: BLE001 - any exception here is a finding: skip must account for every row
        result.update(pairs=0, invalid=0, lost=rows, skip_exception=f"{type(exc).__name__}: {exc}")
    else:
        valid, invalid = rmclean.split_invalid(pairs)
        result.update(pairs=len(valid), invalid=len(invalid), lost=rows - len(valid) - len(invalid),
                      intact=None if case.intact is None else bool(case.intact(valid)),
                      flags=sorted({flag for flags in valid["flags"] for flag in flags}),
                      reasons=list(invalid["error"]))
    try:
        rmclean.load_pairs(str(source), on_error="raise")
        result["error"] = None
    except Exception as exc:  # noqa: BLE001 - the experiment records whatever stops the load
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["error_one_line"] = result["error"] is None or "\n" not in result["error"]
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["peak_rss_mib"] = round(peak_rss_mib())
    result["note"] = case.note.format(in_file=whole_rows_in(source))
    return result


def short(text: str | None, folder: Path, width: int = 150) -> str:
    if text is None:
        return "—"
    text = text.replace(str(folder) + "/", "").replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def markdown(results: list[dict[str, Any]], folder: Path, meta: dict[str, Any]) -> str:
    lines = [
        "# Hostile inputs: every row accounted for",
        "",
        (f"`python experiments/reliability_inputs.py` on {meta['python']}, caps "
         f"{meta['max_row_bytes']} per row and {meta['max_decompressed_bytes']} decompressed per file (the defaults); "
         f"{meta['seconds']:.0f} s, peak memory {meta['peak_rss_mib']} MiB. Each file was loaded with "
         "`on_error=\"skip\"` (pairs, invalid) and `on_error=\"raise\"` (error). lost = rows written − pairs − invalid."),
        "",
        "| case | rows written | pairs | invalid | lost | text intact | error (on_error=\"raise\") | one line |",
        "|---|---:|---:|---:|---:|:---:|---|:---:|",
    ]
    for r in results:
        intact = {None: "—", True: "yes", False: "**no**"}[r.get("intact")]
        lines.append(
            f"| {r['case']} | {r['rows_written']} | {r['pairs']} | {r['invalid']} | {r['lost']} | {intact} | "
            f"{short(r['error'], folder)} | {'yes' if r['error_one_line'] else '**no**'} |"
        )
    notes = [r for r in results if r["note"] or r.get("skip_exception")]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"- {r['case']}: {r.get('skip_exception') or r['note']}" for r in notes]
    lines += ["", "Paths are relative to the temporary corpus folder; the JSON file has every invalid row's reason.", ""]
    return "\n".join(lines)


def main() -> int:
    started = time.perf_counter()
    limits = ReadLimits.resolve()
    with tempfile.TemporaryDirectory(prefix="rmclean-hostile-") as tmp:
        folder = Path(tmp)
        results = []
        for number, case in enumerate(CASES):
            results.append(run_case(case, folder / f"case{number:02d}"))
            print(f"{case.name:45s} rows {results[-1]['rows_written']:>3} pairs {results[-1]['pairs']:>3} "
                  f"invalid {results[-1]['invalid']:>3} lost {results[-1]['lost']:>3}  {results[-1]['seconds']:.1f}s",
                  flush=True)
        meta = {"python": f"Python {platform.python_version()}", "max_row_bytes": format_size(limits.max_row_bytes),
                "max_decompressed_bytes": format_size(limits.max_decompressed_bytes),
                "seconds": round(time.perf_counter() - started, 1), "peak_rss_mib": round(peak_rss_mib())}
        for result in results:
            result["reasons"] = [short(reason, folder, 400) for reason in result.get("reasons", [])]
            result["error"] = None if result["error"] is None else short(result["error"], folder, 400)
        text = markdown(results, folder, meta)
    written = write_results(RESULTS, {"meta": meta, "cases": results}, text)
    print(text)
    print("wrote " + ", ".join(str(path) for path in written))
    unaccounted = [r["case"] for r in results if r["lost"] and not r["note"]]
    return 1 if unaccounted or not all(r["error_one_line"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
