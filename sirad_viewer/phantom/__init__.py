"""Synthetic pelvic CT phantoms with known sacroiliitis grades (no Qt, no torch).

The names below are loaded from :mod:`.generator` on first use (PEP 562), not at import: the CLI
imports ``sirad_viewer.phantom.atlas_options`` to build its parser, and importing the generator
eagerly cost every ``sirad`` command (``sirad grade`` included) 0.1-0.3 s of start-up.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["PLANTED_IDENTITY", "SITE_PROFILES", "Phantom", "PhantomSpec", "make_phantom", "random_spec",
           "write_phantom"]

if TYPE_CHECKING:
    from sirad_viewer.phantom.generator import (PLANTED_IDENTITY, SITE_PROFILES, Phantom, PhantomSpec,
                                                make_phantom, random_spec, write_phantom)


def __getattr__(name: str) -> Any:
    if name in __all__:
        from sirad_viewer.phantom import generator

        return getattr(generator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
