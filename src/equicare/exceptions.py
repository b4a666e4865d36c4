"""Exceptions raised by equicare.

Every user-facing error derives from a built-in exception so that callers who already catch
``ValueError`` keep working (the scikit-learn convention).
"""

from __future__ import annotations

__all__ = [
    "EquicareError",
    "InvalidParameterError",
    "UnknownNameError",
    "ConfigError",
    "DataValidationError",
    "ManifestError",
    "NotFittedError",
    "PolicyError",
    "EquicareWarning",
    "SmallCellWarning",
    "SupportWarning",
    "LowESSWarning",
    "DataWarning",
]


class EquicareError(Exception):
    """Base class of the errors that mean "the input was wrong", not "equicare has a bug".

    The command line prints these as one line ``error: ...`` and exits with code 2; any other
    exception is reported as a bug (exit code 1, traceback saved to a log file).
    """


class InvalidParameterError(EquicareError, ValueError, TypeError):
    """A parameter or option value is out of its documented range or of the wrong kind.

    A ``ValueError`` and a ``TypeError`` (as scikit-learn's ``InvalidParameterError``), so that
    callers catching either keep working.

    Messages follow ``equicare.utils.PARAM_MESSAGE``: "The 'alpha' parameter of WIS must be a
    float in (0, 1). Got 1.5 instead."
    """


class UnknownNameError(EquicareError, KeyError):
    """A name (group attribute, action component, reward component, run id) is not known."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(EquicareError, ValueError):
    """A configuration (run TOML, simulator JSON, learner settings) has bad keys or values."""


class DataValidationError(EquicareError, ValueError):
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


class LowESSWarning(SupportWarning):
    """An overall importance-sampling value rests on fewer than 11 episodes' worth of weight.

    Raised by :func:`equicare.ope.evaluate` and :func:`equicare.ope.evaluate_stream` when the
    effective sample size of the weights behind an overall ``is``, ``wis``, ``pdis`` or
    ``wpdis`` value is below the small-cell threshold (a group's such value is withheld; the
    overall one is published with this warning). A :class:`SupportWarning`: thin weight is
    thin support of the target policy in the data.
    """


#: The errors a command reports as user mistakes (one line, exit code 2; the run store discards
#: a run that failed with one before its first stage finished): bad data, parameters, configs
#: and names, a missing input or an existing output, a file that cannot be read or written.
USER_ERRORS: tuple[type[BaseException], ...] = (EquicareError, FileExistsError, FileNotFoundError,
                                               PermissionError)
