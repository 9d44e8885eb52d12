"""Join several DATA.csv files into one, with their relative paths made absolute.

    python tools/join_data_csv.py OUT.csv A/DATA.csv B/DATA.csv ...

The rows keep their split: datasets made by 'sirad phantom-dataset --anatomy atlas' with different seeds
split the same subjects the same way (by subject id, not by seed), so no subject crosses splits.
"""
from __future__ import annotations

import csv
import os
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out, rows, fields = argv[0], [], None
    for p in argv[1:]:
        base = os.path.dirname(os.path.abspath(p))
        with open(p, newline="") as fh:
            for r in csv.DictReader(fh):
                for k in ("image", "labels", "truth"):
                    if r.get(k) and not os.path.isabs(r[k]):
                        r[k] = os.path.join(base, r[k])
                rows.append(r)
                fields = fields or list(r)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}: {len(rows)} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
