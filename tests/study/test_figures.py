"""The analysis figures a coordinator reads: every grade labelled, counts readable."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from matplotlib.colors import to_rgb  # noqa: E402

from sirad_viewer.study.analysis import confusion_figure  # noqa: E402
from sirad_viewer.study.metrics import JointRead  # noqa: E402


def test_confusion_matrix_labels_every_grade_and_keeps_counts_readable():
    # grades 0, 2 and 4 only on the diagonal, many at 4: matplotlib's default ticks showed 0, 2, 4
    reads = [JointRead("r1", f"p{i}", "left", "unaided", g, g) for i, g in enumerate([0, 2, 4, 4, 4, 4, 4, 4])]
    fig = confusion_figure({("r1", "unaided"): reads})
    fig.canvas.draw()
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "3", "4"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2", "3", "4"]
    dark = [t for t in ax.texts if t.get_text() == "6"]
    assert dark and to_rgb(dark[0].get_color()) == (1.0, 1.0, 1.0)  # white on the darkest cell
