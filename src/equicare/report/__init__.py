"""Figures (matplotlib) and the self-contained HTML report."""

from equicare.report._build import CAVEATS, build_run_report
from equicare.report._card import build_card_report, write_card
from equicare.report._html import Report, suppress_small_cells
from equicare.report._online_figures import (
    plot_frontier,
    plot_group_waits,
    plot_learning_curves,
)

__all__ = ["CAVEATS", "Report", "build_card_report", "build_run_report", "plot_frontier",
           "plot_group_waits", "plot_learning_curves", "suppress_small_cells", "write_card"]
