#!/usr/bin/env python
"""Long seeded mutation fuzzing of the loaders (``make fuzz``; ``FUZZ_SECONDS=600`` by default).

Mutates the real files in ../shared/data (malformed DICOM, the real CT series) and small
NIfTI/NRRD/MHA files, opens each mutant in a worker process with a memory cap and a time limit,
and prints the counts by outcome. Exit status 1 when any outcome is a foreign exception, a
non-finite or non-positive-spacing volume, a hang, an out-of-memory or a crash; the mutants
behind them are kept in ``--keep`` for a regression test.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.io import fuzzlib  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", 600)))
    ap.add_argument("--seed", type=int, default=int(os.environ.get("FUZZ_SEED", 12)))
    ap.add_argument("--timeout", type=float, default=20.0, help="per-case time limit (s)")
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("SIRAD_SHARED", ROOT.parent / "shared")) / "data")
    ap.add_argument("--keep", type=Path, default=ROOT / "out" / "fuzz-failures")
    ap.add_argument("--json", type=Path, help="write the counts as JSON here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sirad-fuzz-") as tmp:
        rep = fuzzlib.fuzz(args.shared, Path(tmp), seconds=args.seconds, seed=args.seed, timeout_s=args.timeout,
                           keep_bad=args.keep, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"fuzz (seed {args.seed}, memory cap {fuzzlib.MEM_CAP >> 20} MiB, {args.timeout:g} s per case):")
    print(rep.summary())
    print("mutations:", ", ".join(f"{k} {v}" for k, v in sorted(rep.by_kind.items())))
    if args.json:
        args.json.write_text(json.dumps({"cases": rep.n, "seconds": round(rep.seconds), "seed": args.seed,
                                         "outcomes": dict(rep.counts), "bad": rep.bad}, indent=2))
    return 0 if not rep.bad else 1


if __name__ == "__main__":
    sys.exit(main())
