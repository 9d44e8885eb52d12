"""How many planted identifying values each de-identifier leaves in one CT object.

The object is the one ``tests/io/test_deid.py`` builds (126 values: top level, sequences four
deep, private and UN elements, overlay comment, file meta, preamble). Compares
``sirad_viewer.io.deid`` with ``dicognito`` and ``deid`` (default recipe) when they can be
imported; they are not dependencies of the project::

    pip install --no-deps --target /tmp/cmp dicognito==0.19.0 deid==0.4.13
    PYTHONPATH=.:/tmp/cmp python benchmarks/deid_compare.py
"""
from __future__ import annotations

import io
import logging
import tempfile
import warnings
from pathlib import Path

from pydicom import dcmread

from sirad_viewer.io.deid import deidentify_dataset
from sirad_viewer.io.export import write_dicom_series
from tests.io.test_deid import leaked, oblique_volume, plant


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


def main() -> None:
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    tmp = Path(tempfile.mkdtemp())
    f = write_dicom_series(oblique_volume(), tmp / "s", deidentify=False)[0]
    ds = dcmread(f)
    values = plant(ds, 0)
    ds.save_as(f, enforce_file_format=True)
    results: dict[str, list[str] | str] = {
        "sirad_viewer.io.deid": leaked([values], _bytes(deidentify_dataset(dcmread(f), key=b"k" * 32)))}
    try:
        from dicognito.anonymizer import Anonymizer

        d = dcmread(f)
        Anonymizer(seed="s").anonymize(d)
        results["dicognito"] = leaked([values], _bytes(d))
    except ImportError:
        results["dicognito"] = "not installed"
    try:
        from deid.dicom import replace_identifiers

        out = tmp / "deid"
        out.mkdir()
        cleaned = replace_identifiers(dicom_files=[str(f)], output_folder=str(out), overwrite=True,
                                      remove_private=True)
        data = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
        data += b"".join(_bytes(c) for c in cleaned if not isinstance(c, str))
        assert data, "deid wrote nothing"
        results["deid (default recipe)"] = leaked([values], data)
    except ImportError:
        results["deid (default recipe)"] = "not installed"
    print(f"{len(values)} planted values")
    for name, left in results.items():
        print(f"{name}: " + (left if isinstance(left, str) else f"{len(left)} left {left}"))


if __name__ == "__main__":
    main()
