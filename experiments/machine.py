"""The machine a benchmark ran on, in one line for its results file (the README states it next
to every number)."""

from __future__ import annotations

import platform
from pathlib import Path


def machine() -> str:
    """CPU model, torch threads, native bfloat16, torch and Python versions."""
    import torch

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")), "?")
    return (f"{model}, {torch.get_num_threads()} torch threads, native bfloat16: "
            f"{'yes' if 'avx512_bf16' in flags or 'amx_bf16' in flags else 'no'}, torch {torch.__version__}, "
            f"Python {platform.python_version()}")
