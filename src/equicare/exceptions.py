"""Exceptions raised by equicare.

Every user-facing error derives from a built-in exception so that callers who already catch
``ValueError`` keep working (the scikit-learn convention).
"""

from __future__ import annotations

__all__ = [
    "DataValidationError",
    "ManifestError",
    "NotFittedError",
    "PolicyError",
    "EquicareWarning",
    "SmallCellWarning",
    "SupportWarning",
    "DataWarning",
]


class DataValidationError(ValueError):
    """A table, file or array does not satisfy the dataset contract.

    Parameters
    ----------
    message : str
        Human-readable summary (names the file, column, first bad rows and what was expected).
    problems : list of str, optional
        Every problem found, one line each, when validation collected several.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = list(problems) if problems else [message]


class ManifestError(DataValidationError):
    """A dataset manifest (TOML) has unknown, missing or mistyped keys."""


class PolicyError(DataValidationError):
    """A policy (file or object) does not cover the dataset or has invalid probabilities."""


class NotFittedError(ValueError, AttributeError):
    """An estimator or learner was used before ``fit`` was called."""


class EquicareWarning(UserWarning):
    """Base class of equicare warnings."""


class DataWarning(EquicareWarning):
    """Data is valid but suspicious (unobserved combinations, sparse rewards, small groups)."""


class SmallCellWarning(EquicareWarning):
    """A published cell had fewer than the minimum number of episodes and was suppressed."""


class SupportWarning(EquicareWarning):
    """The target policy puts mass on actions that the behaviour policy (almost) never takes."""
