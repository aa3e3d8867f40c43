"""rmclean: find and fix noisy labels in reward-model preference data.

``rmclean.score``, ``rmclean.audit``, ``rmclean.denoise`` and ``rmclean.check`` are the functions
(their modules stay importable as ``from rmclean.score import ScoreConfig``); ``rmclean.judge``
is the LLM judge module (prompt, parsing, client, cache).
"""

from importlib.metadata import PackageNotFoundError, version

from .data import describe
from .audit import AuditConfig, audit
from .check import CheckConfig, CheckResult, check
from .check_report import read_check, write_check
from .denoise import DenoiseConfig, DenoiseError, denoise
from .export import to_profile, write_denoised
from .judge import JudgeConfig, JudgeError
from .data.pairs import CANONICAL_COLUMNS, PairFormatError, load_pairs, sample_per_source, split_invalid
from .score import ScoreConfig, Scores, score
from .serve import reward_function
from .data.sources import SourceNotFoundError

try:
    __version__ = version("rmclean")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "CANONICAL_COLUMNS",
    "AuditConfig",
    "CheckConfig",
    "CheckResult",
    "DenoiseConfig",
    "DenoiseError",
    "JudgeConfig",
    "JudgeError",
    "PairFormatError",
    "ScoreConfig",
    "Scores",
    "SourceNotFoundError",
    "audit",
    "check",
    "denoise",
    "describe",
    "load_pairs",
    "reward_function",
    "sample_per_source",
    "score",
    "split_invalid",
    "to_profile",
    "read_check",
    "write_check",
    "write_denoised",
    "__version__",
]
