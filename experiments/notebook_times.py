"""Each notebook run top to bottom under a real ``ipykernel`` kernel with its *default*
parameters (the tests run them small), timed: what a user waits in Jupyter.

    RMCLEAN_DATA_DIR=../shared/data python experiments/notebook_times.py [--notebooks 02,04]
        [--runs 2]

The kernel uses the user's feature cache (``$RMCLEAN_CACHE_DIR`` or ``~/.cache/rmclean``), so
the first run of 02 may embed its sample; ``--runs 2`` runs each notebook twice and reports both
(the second: "once the hh-rlhf features are cached", the issue's measure). For each run the
record says whether the feature cache grew (the run embedded texts). Notebook 05 reads the
committed results in ``experiments/results``.

Writes experiments/results/notebook_times.{json,md} after every run (a rerun skips what is there;
``--redo`` runs everything again).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine  # noqa: E402

from rmclean.features.backbones import default_cache_dir  # noqa: E402
from rmclean.files import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results" / "notebook_times"


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else 0


def run_notebook(path: Path, timeout_s: int) -> dict:
    """Execute ``path`` under a python3 kernel in a scratch folder: seconds, figures shown, and
    whether the feature cache grew."""
    import nbformat
    from nbclient import NotebookClient

    features = default_cache_dir() / "features"
    before = folder_bytes(features)
    notebook = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as scratch:
        began = time.perf_counter()
        NotebookClient(notebook, kernel_name="python3", timeout=timeout_s,
                       resources={"metadata": {"path": scratch}}).execute()
        seconds = time.perf_counter() - began
    figures = sum(1 for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
                  if "image/png" in output.get("data", {}))
    return {"seconds": seconds, "figures": figures, "embedded": folder_bytes(features) > before}


def to_markdown(result: dict) -> str:
    lines = [f"Notebooks with their default parameters under a python3 kernel ({result['machine']}):", "",
             "| notebook | run | minutes | figures | embedded texts (feature cache grew) |", "|---|---:|---:|---:|---|"]
    for name, runs in result["notebooks"].items():
        lines += [f"| {name} | {number} | {run['seconds'] / 60:.1f} | {run['figures']} | "
                  f"{'yes' if run['embedded'] else 'no'} |" for number, run in enumerate(runs, 1)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebooks", default=None, help="comma-separated prefixes (default: all)")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds a cell may take")
    parser.add_argument("--redo", action="store_true")
    args = parser.parse_args()

    saved = RESULTS.with_suffix(".json")
    result = json.loads(saved.read_text()) if saved.is_file() and not args.redo else {"notebooks": {}}
    result["machine"] = machine()
    paths = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if args.notebooks:
        paths = [path for path in paths if path.name.split("_")[0] in args.notebooks.split(",")]
    for path in paths:
        runs = result["notebooks"].setdefault(path.stem, [])
        while len(runs) < args.runs:
            runs.append(run_notebook(path, args.timeout))
            print(path.stem, runs[-1], flush=True)
            write_results(RESULTS, result, to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
