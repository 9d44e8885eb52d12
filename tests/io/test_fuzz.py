"""Seeded mutation fuzzing: every outcome is a typed error or a valid volume (issue 12).

Mutants of the real files in ../shared/data (malformed DICOM, slices of the real CT series) and
of small NIfTI/NRRD/MHA files (byte flips, truncation, repeated chunks, header fields set to
hostile values) are opened in a worker process with a 3 GiB address-space cap and a per-case
time limit, so a crash, a hang or a runaway allocation is recorded instead of taking the test
run down. ``make fuzz`` runs the same thing for 10 minutes.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from sirad_viewer.imaging import geometry as geo
from sirad_viewer.imaging.volume import Volume
from tests.io import fuzzlib

SEED = 20261128
CASES = int(os.environ.get("FUZZ_CASES", 300))


@pytest.mark.slow
def test_seeded_fuzz_gives_only_typed_errors_and_valid_volumes(shared_data, tmp_path):
    rep = fuzzlib.fuzz(shared_data, tmp_path, seconds=240, seed=SEED, max_cases=CASES, timeout_s=20,
                       keep_bad=tmp_path / "bad")
    print(rep.summary())
    assert rep.bad == [], rep.summary()
    assert rep.n >= min(CASES, 100)
    # The mutants exercise both ends: some still load, most are refused with a reason.
    assert rep.counts["volume"] > 0 and rep.counts["typed_error"] > 0


def test_fuzz_harness_flags_non_finite_values_and_bad_spacing():
    arr = np.zeros((2, 3, 4), np.float32)
    ok = Volume(arr, geo.make_affine([0, 0, 0], np.eye(3), [1.0, 1.0, 1.0]))
    assert fuzzlib.check_volume(ok) is None
    arr[0, 0, 0] = np.inf
    assert "non-finite" in fuzzlib.check_volume(Volume(arr, ok.affine))
    flat = ok.affine.copy()
    flat[:3, 0] = 0
    assert "spacing" in fuzzlib.check_volume(Volume(np.zeros((2, 3, 4), np.float32), flat))


def test_fuzz_mutations_are_reproducible():
    import random

    data = bytes(range(256)) * 8
    a = [fuzzlib.mutate(data, "x.dcm", random.Random(5)) for _ in range(3)]
    b = [fuzzlib.mutate(data, "x.dcm", random.Random(5)) for _ in range(3)]
    assert a == b and all(m != data for m, _ in a)
