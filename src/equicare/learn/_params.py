"""scikit-learn parameters of the learners: ``config`` and each of its fields.

Every learner stores one frozen config (``self.config``). :class:`ConfigParams` makes its fields
parameters too, so ``get_params(deep=True)`` lists them and ``set_params(n_steps=10)`` replaces
the config with :func:`dataclasses.replace` (what a grid search does on a clone); ``clone`` and
``get_params(deep=False)`` still see only ``config``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import fields, replace
from typing import Any, ClassVar, Self

from equicare.exceptions import InvalidParameterError
from equicare.utils import PARAM_MESSAGE

__all__ = ["ConfigParams", "MSG_UNKNOWN_PARAMS", "MSG_FIT_UNKNOWN", "MSG_FIT_UNUSED",
           "check_fit_options"]

#: ``set_params`` with a name that is neither ``config`` nor one of its fields.
MSG_UNKNOWN_PARAMS = ("{owner} has no parameter(s) {names}{hint}; its parameters are 'config' "
                      "and the fields of {config}: {fields}.")
#: ``fit`` with a keyword argument no learner takes.
MSG_FIT_UNKNOWN = ("{owner}.fit() got unexpected keyword argument(s) {names}{hint}; it takes "
                   "dataset, progress, valid, checkpoint_dir and resume. Settings go to the "
                   "constructor or set_params ({owner}({example}=...)).")
#: ``fit`` with a common option this learner does not use.
MSG_FIT_UNUSED = ("{owner}.fit() does not use {names}: it fits on all of dataset in one pass "
                  "(no validation episodes, no checkpoints); leave {them} at the default.")


def _hint(names: Iterable[str], known: list[str]) -> str:
    close = [m for n in names for m in difflib.get_close_matches(n, known, n=1)]
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


class ConfigParams:
    """Mixin: scikit-learn parameters over ``self.config`` and its fields."""

    config: Any
    config_class: ClassVar[type[Any]]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The estimator's parameters.

        Parameters
        ----------
        deep : bool
            Also list each config field by name (``n_steps``, ...), as a grid search sees them.

        Returns
        -------
        dict of str to Any
            ``{"config": config}``, plus the config's fields when ``deep``.
        """
        out: dict[str, Any] = {"config": self.config}
        if deep:
            out.update({f.name: getattr(self.config, f.name) for f in fields(self.config)})
        return out

    def set_params(self, **params: Any) -> Self:
        """Set ``config`` and/or config fields (``set_params(n_steps=10)``); returns ``self``.

        A field replaces the config with :func:`dataclasses.replace` (checked by the config).

        Raises
        ------
        InvalidParameterError
            A name that is neither ``config`` nor a field of the config, or a config of the
            wrong class.
        """
        config = params.pop("config", self.config)
        owner = type(self).__name__
        if not isinstance(config, self.config_class):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="config", owner=owner, expected=f"a {self.config_class.__name__}",
                got=type(config).__name__))
        known = [f.name for f in fields(config)]
        unknown = [k for k in params if k not in known]
        if unknown:
            raise InvalidParameterError(MSG_UNKNOWN_PARAMS.format(
                owner=owner, names=", ".join(repr(k) for k in unknown),
                hint=_hint(unknown, known), config=type(config).__name__,
                fields=", ".join(known)))
        self.config = replace(config, **params) if params else config
        return self


def check_fit_options(owner: str, config: Any, *, valid: Any, checkpoint_dir: Any,
                      resume: bool, extra: dict[str, Any]) -> None:
    """Refuse ``fit`` options a one-pass learner (SPIBB, PVI) would silently ignore.

    Parameters
    ----------
    owner : str
        The learner's class name.
    config : dataclass
        Its config (to suggest a field for a misplaced setting).
    valid, checkpoint_dir, resume
        The learners' common ``fit`` options: only their defaults are accepted.
    extra : dict
        Any other keyword arguments: refused.

    Raises
    ------
    InvalidParameterError
        Naming every unknown or unused argument.
    """
    if extra:
        known = ["progress", "valid", "checkpoint_dir", "resume",
                 *(f.name for f in fields(config))]
        raise InvalidParameterError(MSG_FIT_UNKNOWN.format(
            owner=owner, names=", ".join(repr(k) for k in extra), hint=_hint(extra, known),
            example=fields(config)[0].name))
    unused = [n for n, given in (("valid", valid is not None),
                                 ("checkpoint_dir", checkpoint_dir is not None),
                                 ("resume", bool(resume))) if given]
    if unused:
        raise InvalidParameterError(MSG_FIT_UNUSED.format(
            owner=owner, names=", ".join(f"{n}=" for n in unused),
            them="it" if len(unused) == 1 else "them"))
