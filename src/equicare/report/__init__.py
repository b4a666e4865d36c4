"""Figures (matplotlib) and the self-contained HTML report."""

from equicare.report._build import CAVEATS, build_run_report
from equicare.report._card import build_card_report, write_card
from equicare.report._html import Report, suppress_small_cells

__all__ = ["CAVEATS", "Report", "build_card_report", "build_run_report", "suppress_small_cells",
           "write_card"]
