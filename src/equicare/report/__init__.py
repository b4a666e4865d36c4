"""Figures (matplotlib) and the self-contained HTML report."""

from equicare.report._html import Report, suppress_small_cells

__all__ = ["Report", "suppress_small_cells"]
