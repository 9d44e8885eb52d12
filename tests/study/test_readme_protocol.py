"""The protocol example in the README is one a coordinator can copy: it loads and validates."""
from __future__ import annotations

import re
from pathlib import Path

from sirad_viewer.study.protocol import Protocol


def test_readme_protocol_example_loads(tmp_path):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"```yaml\n# protocol.yaml\n(.*?)```", readme, re.S)
    assert block, "README lost its protocol example"
    f = tmp_path / "protocol.yaml"
    f.write_text(block.group(1))
    p = Protocol.load(f)
    assert [r.id for r in p.readers] == ["r1", "r2"] and len(p.cases) == 2
