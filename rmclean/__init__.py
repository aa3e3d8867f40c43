"""rmclean: find and fix noisy labels in reward-model preference data.

``rmclean.score``, ``rmclean.audit`` and ``rmclean.denoise`` are the functions (their modules
stay importable as ``from rmclean.score import ScoreConfig``).
"""

from importlib.metadata import PackageNotFoundError, version

from . import describe
from .audit import AuditConfig, audit
from .denoise import DenoiseConfig, DenoiseError, denoise
from .export import to_profile, write_denoised
from .pairs import CANONICAL_COLUMNS, PairFormatError, load_pairs, split_invalid
from .score import ScoreConfig, Scores, score
from .sources import SourceNotFoundError

try:
    __version__ = version("rmclean")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "CANONICAL_COLUMNS",
    "AuditConfig",
    "DenoiseConfig",
    "DenoiseError",
    "PairFormatError",
    "ScoreConfig",
    "Scores",
    "SourceNotFoundError",
    "audit",
    "denoise",
    "describe",
    "load_pairs",
    "score",
    "split_invalid",
    "to_profile",
    "write_denoised",
    "__version__",
]
