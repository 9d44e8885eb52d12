"""Seeded mutation fuzzing of the loaders, each case run in a worker process with limits.

Shared by ``tests/io/test_fuzz.py`` (a short run in the suite) and ``tools/fuzz.py``
(``make fuzz``, a long run). Every case ends in exactly one outcome:

``volume``         a Volume with finite values, a finite affine and positive spacing
``typed_error``    one of the project's errors (:class:`sirad_viewer.errors.SiradError`)
``foreign``        any other exception (a bug: named with its type)
``bad_volume``     a Volume with non-finite values or non-positive spacing (a bug)
``hang``           no answer within the per-case time limit (a bug)
``oom``            MemoryError under the memory cap, or killed for memory (a bug)
``crash``          the worker died from a signal, e.g. a segmentation fault (a bug)

The worker sets ``RLIMIT_AS`` (address space) so an allocation the loader should have refused
fails as a MemoryError instead of taking the machine down.
"""
from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"volume", "typed_error"}
#: Address-space cap of the worker (bytes); SimpleITK, pydicom and numpy fit in well under 1 GiB.
MEM_CAP = int(os.environ.get("FUZZ_MEM_CAP", 3 << 30))


# ------------------------------------------------------------------------------------------
# Worker side
# ------------------------------------------------------------------------------------------

def check_volume(vol) -> str | None:
    """Why ``vol`` is not a valid volume, or None."""
    import numpy as np

    from sirad_viewer.imaging import geometry as geo

    a = vol.array
    if a.ndim != 3 or a.size == 0:
        return f"array shape {a.shape}"
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        return "non-finite values"
    if not np.isfinite(vol.affine).all():
        return "non-finite affine"
    sp = geo.affine_spacing(vol.affine)
    if not (np.all(sp > 0) and np.all(np.isfinite(sp))):
        return f"spacing {sp}"
    return None


def _worker(mem_cap: int) -> None:  # pragma: no cover - runs in a subprocess
    import logging
    import resource
    import warnings

    resource.setrlimit(resource.RLIMIT_AS, (mem_cap, mem_cap))
    os.environ.setdefault("RUST_BACKTRACE", "0")
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    from sirad_viewer.errors import SiradError
    from sirad_viewer.io import open_volume

    out = sys.stdout
    for line in sys.stdin:
        path = line.strip()
        if not path:
            continue
        try:
            vol = open_volume(path)
            why = check_volume(vol)
            res = {"outcome": "volume"} if why is None else {"outcome": "bad_volume", "detail": why}
            del vol
        except SiradError as exc:
            res = {"outcome": "typed_error", "detail": exc.code}
        except MemoryError:
            res = {"outcome": "oom", "detail": "MemoryError"}
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - classify everything else as foreign
            res = {"outcome": "foreign", "detail": f"{type(exc).__module__}.{type(exc).__name__}: {str(exc)[:120]}"}
        out.write(json.dumps(res) + "\n")
        out.flush()


class Runner:
    """One worker process at a time; restarted after a hang, a crash or an out-of-memory kill."""

    def __init__(self, *, timeout_s: float = 20.0, mem_cap: int = MEM_CAP) -> None:
        self.timeout_s = timeout_s
        self.mem_cap = mem_cap
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   RUST_BACKTRACE="0", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", f"import tests.io.fuzzlib as f; f._worker({self.mem_cap})"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=str(ROOT),
            text=True, bufsize=1)

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.kill()
            except OSError:
                pass
            self.proc.wait()
            self.proc = None

    def run(self, path: str | Path) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write(str(path) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.close()
            return {"outcome": "crash", "detail": "worker gone"}
        # The first case of a fresh worker also pays for its imports.
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout_s + 15)
        if not ready:
            self.close()
            return {"outcome": "hang", "detail": f"> {self.timeout_s:g} s"}
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait()
            self.proc = None
            if rc == -signal.SIGKILL:
                return {"outcome": "oom", "detail": "killed"}
            name = signal.Signals(-rc).name if rc < 0 else f"exit {rc}"
            return {"outcome": "crash", "detail": name}
        return json.loads(line)


# ------------------------------------------------------------------------------------------
# Seeds and mutations
# ------------------------------------------------------------------------------------------

def seed_files(shared: Path, workdir: Path) -> list[Path]:
    """Real files to mutate: the malformed DICOM files, one real CT slice, small NIfTI/NRRD/MHA."""
    import numpy as np
    import SimpleITK as sitk

    seeds = []
    mal = shared / "malformed"
    if mal.exists():
        seeds += sorted(p for p in mal.rglob("*.dcm") if p.stat().st_size < 600_000)
    ct = shared / "ct" / "totalseg_example_ct_dicom"
    if ct.exists():
        seeds += sorted(ct.iterdir())[:3]
    workdir.mkdir(parents=True, exist_ok=True)
    k, j, i = np.meshgrid(np.arange(6), np.arange(10), np.arange(12), indexing="ij")
    arr = (10 * k + j - i - 1000).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.8, 2.0))
    img.SetOrigin((-20.0, -15.0, 100.0))
    for ext in ("nii", "nii.gz", "nrrd", "mha"):
        p = workdir / f"seed.{ext}"
        sitk.WriteImage(img, str(p), False)
        seeds.append(p)
    return seeds


_DICOM_FIELDS = {
    "Rows": [0, 1, 65535, 3], "Columns": [0, 1, 65535], "NumberOfFrames": ["2147483647", "0", "-1", "3", "1000000"],
    "BitsAllocated": [8, 1, 64, 7, 32, 0], "BitsStored": [0, 17, 64, 1], "HighBit": [0, 40],
    "PixelRepresentation": [1, 0, 7], "SamplesPerPixel": [0, 3, 255],
    "PixelSpacing": [["-0.8", "0.8"], ["0", "0"], ["nan", "1"], ["inf", "1"], ["1e30", "1e30"], ["1e-30", "1"]],
    "ImagePositionPatient": [["0", "0", "1e6"], ["nan", "0", "0"], ["1e308", "0", "0"], ["0", "0", "-1e9"]],
    "ImageOrientationPatient": [["1", "0", "0", "1", "0", "0"], ["0", "0", "0", "0", "0", "0"],
                                ["1", "0", "0", "0.7", "0.7", "0"], ["1e300", "0", "0", "0", "1", "0"]],
    "RescaleSlope": ["inf", "0", "1e38", "abc", "-1", "nan"], "RescaleIntercept": ["inf", "-1e38", "x", "nan"],
    "SliceThickness": ["0", "-3", "inf"], "PhotometricInterpretation": ["RGB", "PALETTE COLOR", ""],
}


def _mutate_dicom_field(data: bytes, rng: random.Random) -> bytes | None:
    import io

    import pydicom
    from pydicom.dataelem import DataElement
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    try:
        with _quiet():
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception:  # noqa: BLE001
        return None
    for _ in range(rng.randint(1, 3)):
        kw = rng.choice(sorted(_DICOM_FIELDS))
        val = rng.choice(_DICOM_FIELDS[kw])
        tag = tag_for_keyword(kw)
        vr = dictionary_VR(tag)
        if isinstance(val, list):
            val = "\\".join(val)
        try:
            if isinstance(val, int) and vr in ("US", "SS", "UL"):
                ds[tag] = DataElement(tag, "US", val if 0 <= val <= 65535 else 0)
            else:  # any text, also where invalid for the attribute's VR (written as LO)
                ds[tag] = DataElement(tag, "LO", str(val))
        except Exception:  # noqa: BLE001
            return None
    buf = io.BytesIO()
    try:
        with _quiet():
            ds.save_as(buf, enforce_file_format=False)
    except Exception:  # noqa: BLE001
        return None
    return buf.getvalue()


class _quiet:
    def __enter__(self):
        import warnings

        import logging

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore")
        self._level = logging.getLogger("pydicom").level
        logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)

    def __exit__(self, *a):
        import logging

        logging.getLogger("pydicom").setLevel(self._level)
        self._w.__exit__(*a)


def _mutate_nifti_field(data: bytes, rng: random.Random) -> bytes | None:
    if len(data) < 352 or struct.unpack_from("<i", data, 0)[0] != 348:
        return None
    b = bytearray(data)
    choice = rng.choice(["dim", "datatype", "pixdim", "vox_offset", "intent", "scl", "qform"])
    if choice == "dim":
        k = rng.randint(0, 7)
        struct.pack_into("<h", b, 40 + 2 * k, rng.choice([0, 1, 2, 3, 4, 5, 100, 32767, -1, 7]))
    elif choice == "datatype":
        struct.pack_into("<h", b, 70, rng.choice([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1536, 1792, 2048, 2304, 77]))
        struct.pack_into("<h", b, 72, rng.choice([0, 8, 16, 32, 64, 128, 3]))
    elif choice == "pixdim":
        k = rng.randint(0, 4)
        struct.pack_into("<f", b, 76 + 4 * k, rng.choice([0.0, -1.0, float("nan"), float("inf"), 1e30, 1e-30]))
    elif choice == "vox_offset":
        struct.pack_into("<f", b, 108, rng.choice([0.0, 348.0, 1e9, -1.0, float("nan"), 352.0 + 16]))
    elif choice == "intent":
        struct.pack_into("<h", b, 68, rng.choice([0, 1007, 1011, 2001, 5]))
    elif choice == "scl":
        struct.pack_into("<f", b, 112, rng.choice([0.0, float("inf"), float("nan"), 1e38, -2.0]))
    else:
        struct.pack_into("<h", b, 252, rng.choice([0, 1, 2, 3, -1]))
        struct.pack_into("<f", b, 256, rng.choice([0.0, 2.0, float("nan")]))
    return bytes(b)


def _mutate_text_header(data: bytes, rng: random.Random) -> bytes | None:
    end = data.find(b"\n\n") if data.startswith(b"NRRD") else data.find(b"ElementDataFile")
    if end < 0:
        return None
    head = data[:end].decode("latin-1").split("\n")
    k = rng.randrange(len(head))
    key = head[k].split(":", 1)[0].split("=", 1)[0]
    sep = ": " if data.startswith(b"NRRD") else " = "
    head[k] = key + sep + rng.choice(["100000 100000 100000", "0 0 0", "-1 2 3", "nan nan nan", "double",
                                      "uchar", "gzip", "1e300", "3", "", "10 12 6 4", "(0,0,0) (0,0,0) (0,0,0)"])
    return "\n".join(head).encode("latin-1") + data[end:]


def mutate(data: bytes, name: str, rng: random.Random) -> tuple[bytes, str]:
    """One mutation of ``data``: byte flips, truncation, a chunk repeated, or a header field."""
    kinds = ["flip", "flip", "truncate", "header", "header", "repeat"]
    kind = rng.choice(kinds)
    if kind == "header":
        low = name.lower()
        out = (_mutate_nifti_field(data, rng) if low.endswith((".nii",)) else
               _mutate_text_header(data, rng) if low.endswith((".nrrd", ".mha")) else
               None if low.endswith(".nii.gz") else _mutate_dicom_field(data, rng))
        if out is not None:
            return out, "header"
        kind = "flip"
    if kind == "truncate" and len(data) > 1:
        return data[: rng.randrange(1, len(data))], "truncate"
    if kind == "repeat" and len(data) > 16:
        a = rng.randrange(len(data) - 8)
        n = rng.randint(1, min(4096, len(data) - a))
        return data[:a] + data[a: a + n] * rng.randint(2, 4) + data[a:], "repeat"
    b = bytearray(data)
    # Flips cluster in the first kilobytes (headers) half of the time.
    for _ in range(rng.randint(1, 8)):
        hi = len(b) if rng.random() < 0.5 else min(len(b), 2048)
        k = rng.randrange(hi)
        b[k] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)]) if rng.random() < 0.5 else b[k] ^ (1 << rng.randrange(8))
    return bytes(b), "flip"


@dataclass
class Report:
    counts: Counter = field(default_factory=Counter)
    by_kind: Counter = field(default_factory=Counter)
    error_codes: Counter = field(default_factory=Counter)
    bad: list[dict] = field(default_factory=list)
    n: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"{self.n} cases in {self.seconds:.0f} s"]
        lines += [f"  {k:12s} {v}" for k, v in sorted(self.counts.items(), key=lambda kv: -kv[1])]
        if self.error_codes:
            lines.append("  typed errors by code: " + ", ".join(
                f"{k} {v}" for k, v in sorted(self.error_codes.items(), key=lambda kv: -kv[1])))
        for b in self.bad[:20]:
            lines.append(f"  BAD {b['outcome']}: {b.get('detail', '')} <- {b['seed']} ({b['kind']}, case {b['case']})")
        return "\n".join(lines)


def fuzz(shared: Path, workdir: Path, *, seconds: float, seed: int = 12, timeout_s: float = 20.0,
         max_cases: int | None = None, keep_bad: Path | None = None, log=None) -> Report:
    """Mutate the seed files for ``seconds`` (or ``max_cases``) and classify every outcome."""
    rng = random.Random(seed)
    seeds = seed_files(shared, workdir / "seeds")
    blobs = [(p.name, p.read_bytes()) for p in seeds]
    series_dir = shared / "ct" / "totalseg_example_ct_dicom"
    series = sorted(series_dir.iterdir()) if series_dir.exists() else []
    case_dir = workdir / "case"
    runner = Runner(timeout_s=timeout_s)
    rep = Report()
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < seconds and (max_cases is None or rep.n < max_cases):
            shutil.rmtree(case_dir, ignore_errors=True)
            case_dir.mkdir(parents=True)
            if series and rng.random() < 0.08:
                # A whole real series with one or two slices mutated: exercises grouping and geometry.
                target = case_dir / "series"
                target.mkdir()
                for f in series:
                    shutil.copy(f, target / f.name)
                kinds = []
                for f in rng.sample(series, rng.randint(1, 2)):
                    mutated, k = mutate(f.read_bytes(), f.name, rng)
                    (target / f.name).write_bytes(mutated)
                    kinds.append(k)
                name, kind = series_dir.name, "series:" + "+".join(kinds)
            else:
                name, data = rng.choice(blobs)
                mutated, kind = mutate(data, name, rng)
                if rng.random() < 0.3:
                    mutated, kind2 = mutate(mutated, name, rng)
                    kind += "+" + kind2
                target = case_dir / (name if "." in name else name + ".dcm")
                target.write_bytes(mutated)
            res = runner.run(target)
            rep.n += 1
            rep.counts[res["outcome"]] += 1
            rep.by_kind[kind] += 1
            if res["outcome"] == "typed_error":
                rep.error_codes[res.get("detail", "")] += 1
            if res["outcome"] not in GOOD:
                rec = dict(res, seed=name, kind=kind, case=rep.n)
                rep.bad.append(rec)
                if keep_bad is not None:
                    keep_bad.mkdir(parents=True, exist_ok=True)
                    dest = keep_bad / f"case{rep.n:05d}_{target.name}"
                    (shutil.copytree if target.is_dir() else shutil.copy)(target, dest)
                if log:
                    log(f"BAD {rec}")
    finally:
        runner.close()
        rep.seconds = time.monotonic() - t0
    return rep
