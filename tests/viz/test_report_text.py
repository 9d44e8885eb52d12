"""The case report's model card metrics read as words and rounded numbers, not a Python dict."""
from __future__ import annotations

from sirad_viewer.viz.report import metric_text


def test_model_card_metrics_in_words():
    v = {"joints": 60, "accuracy": 0.5, "kappa_quadratic": 0.5332618025751071, "ci": [0.41234, 0.6]}
    assert metric_text(v) == "joints 60, accuracy 0.500, kappa quadratic 0.533, ci [0.412, 0.600]"
    assert metric_text(float("nan")) == "—"


def test_pdf_report_has_the_findings_measurements_and_key_images(tmp_path):
    """The PDF case report dropped the reader's marks, measurements and key images (the HTML had them)."""
    import base64
    import io
    import re

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from sirad_viewer.io import open_volume
    from sirad_viewer.io.export import write_nifti
    from sirad_viewer.viz.report import findings_text, write_report
    from tests.io.test_deid import _grade_result, oblique_volume

    ct = write_nifti(oblique_volume(), tmp_path / "ct.nii.gz", sidecar=False)
    vol = open_volume(ct)
    buf = io.BytesIO()
    plt.imsave(buf, np.zeros((8, 8, 3)), format="png")
    ann = {"items": [{"kind": "ruler", "length_mm": 2.5}, {"kind": "lesion", "side": "left", "lesion": "erosion",
                                                           "points": [[40.0, -90.0, 210.0]]}],
           "findings": {"right": [], "left": ["erosion"]}, "suggested_grade": {"right": 0, "left": 2}}
    reading = {"pre_ai": {"right": 1, "left": 2}, "post_ai": None, "annotations": ann,
               "key_images": [{"title": "oblique coronal W 2000 L 500", "png_b64": base64.b64encode(buf.getvalue()).decode()}]}
    lines = findings_text(reading)
    assert lines[0] == "Reader's findings: right none; left erosion"
    assert "distance 2.5 mm" in "\n".join(lines) and "left SIJ: erosion (point at 40.0, -90.0, 210.0 mm LPS)" in "\n".join(lines)
    pdf = write_report(tmp_path / "r.pdf", vol, _grade_result(str(ct)), reading, {}).read_bytes()
    assert len(re.findall(rb"/Type\s*/Page\b", pdf)) == 2  # the summary page, then the reader's key image
