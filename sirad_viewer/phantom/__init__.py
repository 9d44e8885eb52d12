"""Synthetic pelvic CT phantoms with known sacroiliitis grades (no Qt, no torch)."""
from __future__ import annotations

from sirad_viewer.phantom.generator import (PLANTED_IDENTITY, SITE_PROFILES, Phantom, PhantomSpec, make_phantom,
                                            random_spec, write_phantom)

__all__ = ["PLANTED_IDENTITY", "SITE_PROFILES", "Phantom", "PhantomSpec", "make_phantom", "random_spec",
           "write_phantom"]
