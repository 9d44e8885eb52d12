from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter


def test_phantom_dataset_csv_is_balanced_split_and_site_specific(tmp_path):
    out = tmp_path / "ds"
    p = subprocess.run([sys.executable, "-m", "sirad_viewer.cli", "phantom-dataset", "--n", "10", "--out", str(out),
                        "--site", "phantom-B", "--matrix", "64", "--seed", "3"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(open(out / "DATA.csv")))
    assert len(rows) == 10
    assert set(rows[0]) == {"image", "left", "right", "site", "split", "labels", "truth"}
    assert Counter(r["left"] for r in rows) == Counter({str(g): 2 for g in range(5)})
    assert Counter(r["right"] for r in rows) == Counter({str(g): 2 for g in range(5)})
    assert {r["site"] for r in rows} == {"phantom-B"} and {r["split"] for r in rows} <= {"train", "val", "test"}
    for r in rows:
        truth = json.loads((out / r["truth"]).read_text())
        assert truth["grades"] == {"left": int(r["left"]), "right": int(r["right"])}
        assert truth["spec"]["site"] == "phantom-B" and 2.0 <= truth["spec"]["slice_thickness_mm"] <= 3.0
        assert (out / r["image"]).exists() and (out / r["labels"]).exists()


def test_unknown_site_is_refused(tmp_path):
    p = subprocess.run([sys.executable, "-m", "sirad_viewer.cli", "phantom-dataset", "--n", "2", "--out",
                        str(tmp_path), "--site", "nowhere"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "phantom-A" in p.stderr
