"""rmclean: find and fix noisy labels in reward-model preference data."""

from importlib.metadata import PackageNotFoundError, version

from . import describe
from .pairs import CANONICAL_COLUMNS, PairFormatError, load_pairs, split_invalid
from .sources import SourceNotFoundError

try:
    __version__ = version("rmclean")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["describe", "CANONICAL_COLUMNS", "PairFormatError", "SourceNotFoundError", "load_pairs", "split_invalid", "__version__"]
