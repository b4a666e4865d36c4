"""A self-contained HTML report: inline CSS, figures embedded as PNG (also written as PNG and SVG).

The report holds only aggregates: no row-level data, and every table passed through
:func:`suppress_small_cells` so that no cell with fewer than 11 episodes is shown.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from equicare.utils import MIN_CELL, atomic_write_text

__all__ = ["Report", "suppress_small_cells"]

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;\
margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1f3b5a;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:24px} header p{margin:4px 0 0;opacity:.85}
nav{padding:8px 32px;background:#e8edf3;font-size:14px} nav a{margin-right:14px;color:#1f3b5a}
main{padding:8px 32px 40px;max-width:1200px}
section{background:#fff;border-radius:8px;padding:16px 22px;margin:18px 0;\
box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{font-size:19px;margin:4px 0 10px;color:#1f3b5a}
h3{font-size:16px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border-bottom:1px solid #e2e6ea;padding:4px 10px;text-align:right}
th{background:#f0f3f6} td:first-child,th:first-child{text-align:left}
figure{margin:10px 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:13px;color:#555}
.note{background:#fff8e1;border-left:4px solid #f2b01e;padding:8px 12px;font-size:14px}
.kpi{display:inline-block;margin:4px 18px 4px 0} .kpi b{font-size:20px;display:block}
"""


def suppress_small_cells(
    df: pd.DataFrame, n_col: str = "n_episodes", min_cell: int = MIN_CELL
) -> pd.DataFrame:
    """Blank every value of rows whose ``n_col`` is below ``min_cell`` (shown as ``suppressed``).

    The counts shown are integers. A missing ``n_col`` (None or NaN: a cell suppressed
    upstream, possibly to protect a smaller one, :mod:`equicare.privacy`) is blanked too and
    its count shown as ``suppressed``.

    Parameters
    ----------
    df : pandas.DataFrame
    n_col : str
        Column with the number of episodes behind each row.
    min_cell : int
    """
    if n_col not in df.columns:
        return df
    out = df.astype(object).copy()
    n = pd.to_numeric(df[n_col], errors="coerce")
    small = (n.fillna(0).to_numpy() < min_cell)
    keep = [c for c in df.columns[:1]]
    for c in df.columns:
        if c not in keep:
            out.loc[small, c] = "suppressed" if c != n_col else f"<{min_cell}"
    out.loc[n.isna().to_numpy(), n_col] = "suppressed"
    # a count is an integer: 25, not 25.000 (a None elsewhere in the column made it float)
    shown = (~small) & n.notna().to_numpy()
    out.loc[shown, n_col] = [int(v) for v in n.to_numpy()[shown]]
    return out


def savefig_stable(fig: Any, target: Any, *, format: str, salt: str = "equicare",
                   **kwargs: Any) -> None:
    """``fig.savefig`` that writes the same bytes for the same figure.

    SVG and PDF files carry the time they were written and SVG random element ids; both are
    left out (ids salted by ``salt``), so two runs with the same seed give identical files.
    """
    import matplotlib.pyplot as plt

    meta = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(format.lower())
    with plt.rc_context({"svg.hashsalt": salt}):
        fig.savefig(target, format=format, metadata=meta, **kwargs)


@dataclass
class Report:
    """Build an HTML report section by section.

    Parameters
    ----------
    title : str
    subtitle : str
    figure_dir : Path, optional
        Where figures are also written as PNG and SVG.
    """

    title: str
    subtitle: str = ""
    figure_dir: Path | None = None
    _sections: list[tuple[str, str, list[str]]] = field(default_factory=list)
    _n_figures: int = 0

    def section(self, title: str) -> None:
        """Start a new section."""
        anchor = f"s{len(self._sections)}"
        self._sections.append((anchor, title, []))

    def _cur(self) -> list[str]:
        if not self._sections:
            self.section("Summary")
        return self._sections[-1][2]

    def text(self, text: str, note: bool = False) -> None:
        """A paragraph (escaped); ``note=True`` renders it as a highlighted caveat."""
        cls = ' class="note"' if note else ""
        self._cur().append(f"<p{cls}>{html.escape(text)}</p>")

    def heading(self, text: str) -> None:
        """A sub-heading inside the current section."""
        self._cur().append(f"<h3>{html.escape(text)}</h3>")

    def kpis(self, items: dict[str, str]) -> None:
        """Key figures in a row."""
        parts = [
            f'<span class="kpi"><b>{html.escape(v)}</b>{html.escape(k)}</span>'
            for k, v in items.items()
        ]
        self._cur().append("<div>" + "".join(parts) + "</div>")

    def table(
        self,
        df: pd.DataFrame,
        caption: str = "",
        n_col: str | None = "n_episodes",
        floatfmt: str = "{:.4g}",
    ) -> None:
        """A table of aggregates (small cells suppressed via ``n_col`` when present)."""
        if n_col is not None:
            df = suppress_small_cells(df, n_col)

        def fmt(v: Any) -> str:
            if isinstance(v, float | np.floating):
                return "" if np.isnan(v) else floatfmt.format(v)
            return html.escape(str(v))

        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in row) + "</tr>"
            for row in df.itertuples(index=False)
        )
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self._cur().append(
            f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )

    def figure(self, fig: Any, name: str, caption: str = "") -> None:
        """Embed a matplotlib figure (and write ``name``.png/.svg to ``figure_dir``)."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        if self.figure_dir is not None:
            self.figure_dir.mkdir(parents=True, exist_ok=True)
            (self.figure_dir / f"{name}.png").write_bytes(buf.getvalue())
            savefig_stable(fig, self.figure_dir / f"{name}.svg", format="svg", salt=name,
                           bbox_inches="tight")
        plt.close(fig)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        self._n_figures += 1
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self._cur().append(
            f'<figure id="fig-{html.escape(name)}"><img alt="{html.escape(name)}" '
            f'src="data:image/png;base64,{data}">{cap}</figure>'
        )

    def render(self) -> str:
        """The whole document as a string."""
        nav = "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t, _ in self._sections)
        secs = "".join(
            f'<section id="{a}"><h2>{html.escape(t)}</h2>{"".join(parts)}</section>'
            for a, t, parts in self._sections
        )
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>{html.escape(self.title)}</h1><p>{html.escape(self.subtitle)} · "
            f"generated {stamp} · cells with fewer than {MIN_CELL} episodes suppressed</p>"
            f"</header><nav>{nav}</nav><main>{secs}</main></body></html>"
        )

    def write(self, path: str | Path) -> Path:
        """Write the report atomically."""
        p = Path(path)
        atomic_write_text(p, self.render())
        return p
