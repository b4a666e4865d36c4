"""The HTML report builder (report/_html.py)."""

from __future__ import annotations


def test_figure_files_are_the_same_bytes_for_the_same_figure(tmp_path):
    # the run folder's figures/*.svg differed between two runs with the same seed (a
    # <dc:date> timestamp and random element ids), so an auditor's diff flagged every figure
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from equicare.report import Report

    def write(folder):
        rep = Report(title="t", figure_dir=folder)
        rep.section("s")
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0], marker="o")
        ax.set_title("forest")
        rep.figure(fig, "forest")
        return {p.name: p.read_bytes() for p in folder.iterdir()}

    a, b = write(tmp_path / "a"), write(tmp_path / "b")
    assert set(a) == {"forest.png", "forest.svg"}
    assert a == b
