"""The shape of the project: small modules, a README file map that matches the tree, and a test
suite that cannot skip the real-data tests under CI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rmclean"
MAX_LINES = 500


def test_no_module_is_over_500_lines():
    long = {str(path.relative_to(ROOT)): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def readme_file_map() -> set[str]:
    """Paths in the README's project layout block under ``rmclean/``, from its indentation."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Project layout\n.*?```\n(rmclean/\n.*?)```", readme, re.S).group(1)
    paths, stack = set(), []
    for line in block.splitlines():
        name = line.strip().split()[0] if line.strip() else ""
        depth = (len(line) - len(line.lstrip())) // 2
        if not name.startswith(("rmclean/",)) and depth == 0:
            break  # tests/, notebooks/, ...: the package map is over
        del stack[depth:]
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
        else:
            paths.add("/".join(stack + [name]))
    return paths


def test_readme_file_map_matches_the_tree():
    """Every module is in the map, and everything in the map exists; a sub-package's
    ``__init__.py`` may stay out of the map while it only documents and re-exports."""
    listed = readme_file_map()
    on_disk = {str(path.relative_to(ROOT)): path for path in PACKAGE.rglob("*.py")}
    required = {name for name, path in on_disk.items() if path.name != "__init__.py" or path.parent == PACKAGE
                or re.search(r"^(def|class) ", path.read_text(encoding="utf-8"), re.M)}
    assert required <= listed <= set(on_disk), (f"missing from the README: {sorted(required - listed)}; "
                                                f"not on disk: {sorted(listed - set(on_disk))}")


@pytest.mark.parametrize("ci, outcome", [("true", "1 error"), ("", "1 skipped")])
def test_missing_real_data_fails_under_ci_and_skips_elsewhere(tmp_path, ci, outcome):
    env = {**os.environ, "RMCLEAN_DATA_DIR": str(tmp_path / "no-data"), "CI": ci}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "tests/test_cli.py::test_source_options_reach_the_loader"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert outcome in result.stdout, result.stdout[-2000:]
    if ci:
        assert "CI runs every test on the real data" in result.stdout
