"""Factored action spaces: components x levels <-> flat index.

The flat index is a mixed-radix number over the components in manifest order, the last component
varying fastest (Contract 1 of the architecture).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from equicare.exceptions import InvalidParameterError, UnknownNameError

__all__ = ["ActionComponent", "FactoredActionSpace"]


@dataclass(frozen=True)
class ActionComponent:
    """One component of a factored action (e.g. ``modality``) and its level labels.

    Parameters
    ----------
    name : str
        Column / component name.
    levels : tuple of str
        Level labels in code order; code ``i`` means ``levels[i]``.
    """

    name: str
    levels: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.levels) < 1:
            raise InvalidParameterError(
                f"Action component {self.name!r} must have at least one level.")
        if len(set(self.levels)) != len(self.levels):
            raise InvalidParameterError(
                f"Action component {self.name!r} has duplicated levels: {self.levels}."
            )

    @property
    def n_levels(self) -> int:
        """Number of levels."""
        return len(self.levels)


@dataclass(frozen=True)
class FactoredActionSpace:
    """A product of categorical components with a flat mixed-radix index.

    Parameters
    ----------
    components : tuple of ActionComponent
        Components in manifest order (the last one varies fastest in the flat index).

    Examples
    --------
    >>> space = FactoredActionSpace.from_levels(
    ...     {"modality": ["none", "phone"], "urgency": ["routine", "urgent"]}
    ... )
    >>> space.n_actions
    4
    >>> int(space.to_flat([[1, 0]])[0])
    2
    >>> space.label(3)
    'phone/urgent'
    """

    components: tuple[ActionComponent, ...]
    _radix: NDArray[np.int64] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.components:
            raise InvalidParameterError("A FactoredActionSpace needs at least one component.")
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise InvalidParameterError(f"Action component names must be unique, got {names}.")
        sizes = np.array([c.n_levels for c in self.components], dtype=np.int64)
        # place value of each component: product of the sizes of the components after it
        radix = np.ones_like(sizes)
        if len(sizes) > 1:
            radix[:-1] = np.cumprod(sizes[::-1])[::-1][1:]
        object.__setattr__(self, "_radix", radix)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_levels(cls, levels: dict[str, Sequence[Any]]) -> FactoredActionSpace:
        """Build a space from ``{component: [level labels]}`` (labels are turned into strings)."""
        return cls(tuple(ActionComponent(k, tuple(str(v) for v in vs)) for k, vs in levels.items()))

    @classmethod
    def single(cls, n_actions: int, name: str = "action") -> FactoredActionSpace:
        """A one-component space with integer levels ``0..n_actions-1``."""
        return cls((ActionComponent(name, tuple(str(i) for i in range(n_actions))),))

    # ------------------------------------------------------------------ properties
    @property
    def names(self) -> tuple[str, ...]:
        """Component names in order."""
        return tuple(c.name for c in self.components)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Number of levels per component."""
        return tuple(c.n_levels for c in self.components)

    @property
    def n_components(self) -> int:
        """Number of components."""
        return len(self.components)

    @property
    def n_actions(self) -> int:
        """Size of the flat action space (product of the sizes)."""
        return int(np.prod(self.sizes))

    def component(self, name: str) -> ActionComponent:
        """Return the component called ``name`` (``KeyError`` naming the known ones otherwise)."""
        for c in self.components:
            if c.name == name:
                return c
        raise UnknownNameError(
            f"Unknown action component {name!r}; known components: {list(self.names)}.")

    # ------------------------------------------------------------------ encoding
    def to_flat(self, codes: ArrayLike) -> NDArray[np.int64]:
        """Encode per-component codes to flat indices.

        Parameters
        ----------
        codes : array-like of shape (n, n_components)
            Integer level codes per component.

        Returns
        -------
        ndarray of shape (n,)
        """
        arr = np.asarray(codes, dtype=np.int64)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.shape[1] != self.n_components:
            raise InvalidParameterError(
                f"codes must have {self.n_components} columns (one per component), "
                f"got {arr.shape[1]}."
            )
        sizes = np.asarray(self.sizes)
        if arr.size and ((arr < 0).any() or (arr >= sizes).any()):
            bad = int(np.argmax(((arr < 0) | (arr >= sizes)).any(axis=1)))
            raise InvalidParameterError(
                f"Action codes out of range at row {bad}: {arr[bad].tolist()} "
                f"(sizes {list(self.sizes)})."
            )
        return arr @ self._radix

    def from_flat(self, flat: ArrayLike) -> NDArray[np.int64]:
        """Decode flat indices to per-component codes.

        Parameters
        ----------
        flat : array-like of shape (n,)

        Returns
        -------
        ndarray of shape (n, n_components)
        """
        f = np.asarray(flat, dtype=np.int64)
        if f.size and ((f < 0).any() or (f >= self.n_actions).any()):
            raise InvalidParameterError(f"Flat action indices must lie in [0, {self.n_actions}).")
        return (f[..., None] // self._radix) % np.asarray(self.sizes)

    def all_codes(self) -> NDArray[np.int64]:
        """Codes of every flat action, shape ``(n_actions, n_components)``."""
        return self.from_flat(np.arange(self.n_actions))

    def label(self, flat: int) -> str:
        """Pretty label of one flat action, e.g. ``"phone/rn/chronic/routine"``."""
        codes = self.from_flat(np.array([flat]))[0]
        return "/".join(c.levels[int(k)] for c, k in zip(self.components, codes, strict=True))

    def labels(self) -> list[str]:
        """Pretty labels of all flat actions in index order."""
        codes = self.all_codes()
        cols = [
            np.asarray(c.levels, dtype=object)[codes[:, j]] for j, c in enumerate(self.components)
        ]
        return ["/".join(parts) for parts in zip(*cols, strict=True)]

    def level_mask(self, component: str, levels: str | Sequence[str]) -> NDArray[np.bool_]:
        """Boolean mask over flat actions whose ``component`` is one of ``levels``.

        Parameters
        ----------
        component : str
        levels : str or sequence of str

        Returns
        -------
        ndarray of shape (n_actions,)
        """
        comp = self.component(component)
        wanted = [levels] if isinstance(levels, str) else list(levels)
        unknown = [lv for lv in wanted if lv not in comp.levels]
        if unknown:
            raise InvalidParameterError(
                f"Unknown level(s) {unknown} of action component {component!r}; "
                f"expected one of {list(comp.levels)}."
            )
        j = self.names.index(component)
        codes = self.all_codes()[:, j]
        return np.isin(codes, [comp.levels.index(lv) for lv in wanted])

    def parse_action_set(self, spec: str) -> NDArray[np.bool_]:
        """Parse ``"modality=home_visit"`` or ``"urgency=urgent|semi_urgent"`` into a mask."""
        if "=" not in spec:
            raise InvalidParameterError(
                f"An action set must look like 'component=level', got {spec!r}; "
                f"components: {list(self.names)}."
            )
        comp, _, lv = spec.partition("=")
        return self.level_mask(comp.strip(), [v.strip() for v in lv.split("|")])

    # ------------------------------------------------------------------ observed support
    def counts(self, flat: ArrayLike) -> NDArray[np.int64]:
        """Number of occurrences of each flat action, shape ``(n_actions,)``."""
        return np.bincount(np.asarray(flat, dtype=np.int64), minlength=self.n_actions)

    def observed_mask(self, flat: ArrayLike, min_count: int = 1) -> NDArray[np.bool_]:
        """Mask of flat actions observed at least ``min_count`` times, shape ``(n_actions,)``."""
        return self.counts(flat) >= min_count

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, list[str]]:
        """``{component: [levels]}`` (JSON-friendly, order preserved)."""
        return {c.name: list(c.levels) for c in self.components}

    @classmethod
    def from_dict(cls, d: dict[str, Sequence[Any]]) -> FactoredActionSpace:
        """Inverse of :meth:`to_dict`."""
        return cls.from_levels(d)
