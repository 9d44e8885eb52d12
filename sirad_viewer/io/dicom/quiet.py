"""Keep the libraries' own logging of errors the loader handles off the console (``-v`` shows it)."""
from __future__ import annotations

import contextlib
import logging
import threading

log = logging.getLogger(__name__)

_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved: dict[str, int] = {}
#: Libraries whose own logging repeats, with a traceback, an error the loader handles and reports.
QUIET_LOGGERS = ("pydicom", "py.warnings")


@contextlib.contextmanager
def quiet_libraries():
    """Silence the decoders' loggers while an error they log is handled here.

    pydicom logs every failed plugin with a traceback before raising, and warns about each odd
    value it meets; the loader turns failures into one :class:`LoadError` and quirks into
    :class:`VolumeWarning` objects. With ``-v`` (INFO on this module) the library's own records
    are shown. Python warnings reach ``py.warnings`` once the entry point calls
    ``logging.captureWarnings(True)`` (the CLI does).
    """
    global _quiet_depth
    if logging.getLogger("sirad_viewer.io").isEnabledFor(logging.INFO):
        yield
        return
    with _quiet_lock:
        if _quiet_depth == 0:
            for name in QUIET_LOGGERS:
                lg = logging.getLogger(name)
                _quiet_saved[name] = lg.level
                lg.setLevel(logging.CRITICAL + 1)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                for name, level in _quiet_saved.items():
                    logging.getLogger(name).setLevel(level)
