"""Background work with progress, cancel and error relay (napari's thread_worker, in small).

The work itself is a plain blocking function taking ``progress(fraction, message)`` and
``cancel()`` keyword arguments, so the CLI and tests call it directly.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from PyQt6 import QtCore

log = logging.getLogger(__name__)


class _Signals(QtCore.QObject):
    done = QtCore.pyqtSignal(object)
    failed = QtCore.pyqtSignal(object)
    progress = QtCore.pyqtSignal(float, str)


class Worker(QtCore.QRunnable):
    """Runs ``fn(progress=..., cancel=...)`` on the global thread pool."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn
        self.signals = _Signals()
        self._cancel = threading.Event()
        self.finished = threading.Event()
        self.setAutoDelete(False)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def run(self) -> None:  # noqa: D401 - QRunnable API
        try:
            result = self.fn(progress=lambda f, m: self.signals.progress.emit(float(f), str(m)),
                             cancel=self._cancel.is_set)
        except Exception as exc:  # noqa: BLE001 - relayed to the GUI thread
            log.debug("worker failed", exc_info=True)
            self.finished.set()
            self.signals.failed.emit(exc)
            return
        self.finished.set()
        self.signals.done.emit(result)


def start(fn: Callable[..., Any], *, on_done: Callable[[Any], None], on_error: Callable[[BaseException], None],
          on_progress: Callable[[float, str], None] | None = None) -> Worker:
    w = Worker(fn)
    w.signals.done.connect(on_done)
    w.signals.failed.connect(on_error)
    if on_progress is not None:
        w.signals.progress.connect(on_progress)
    QtCore.QThreadPool.globalInstance().start(w)
    return w


def wait_for(ok: Any, fail: Any | None = None, *, timeout_ms: int, accept: Callable[..., bool] = lambda *_: True) -> bool:
    """Run the event loop until ``ok`` fires (True if ``accept(*args)``), ``fail`` fires or the time is up (False)."""
    loop = QtCore.QEventLoop()
    done = {"ok": False}

    def finish(value: bool) -> None:
        done["ok"] = value
        loop.quit()

    on_ok = lambda *a: finish(bool(accept(*a)))  # noqa: E731
    on_fail = lambda *_: finish(False)  # noqa: E731
    ok.connect(on_ok)
    if fail is not None:
        fail.connect(on_fail)
    timer = QtCore.QTimer()
    timer.setSingleShot(True)
    timer.timeout.connect(lambda: finish(False))
    timer.start(timeout_ms)
    try:
        loop.exec()
    finally:  # nothing of this wait stays connected to the window's signals
        timer.stop()
        ok.disconnect(on_ok)
        if fail is not None:
            fail.disconnect(on_fail)
    return done["ok"]
