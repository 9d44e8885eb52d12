"""The AI run of the open case: one grader per window (loaded once, on first use), one run at a time.

The run is a worker (progress and cancel in the AI panel); its result goes into the reading that
was open when it started, and only if that reading is still the current one. The reading keeps it
hidden until the reader's lock (:class:`sirad_viewer.state.reading.Reading`).
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from PyQt6 import QtCore, QtWidgets

from sirad_viewer.errors import SiradError
from sirad_viewer.qt import workers


class AIRunner(QtCore.QObject):
    """Start, cancel and wait for the grader on a volume; relays progress to ``panel``."""

    finished = QtCore.pyqtSignal(object)  # the result, or None after a failure or a cancel

    def __init__(self, panel: Any, device: Callable[[], str], current_reading: Callable[[], Any]) -> None:
        super().__init__()
        self.panel = panel
        self._device = device
        self._current = current_reading
        self.worker: workers.Worker | None = None
        self._grader = None
        self._grader_lock = threading.Lock()
        self.segmenter_key = "unet"  # or a TotalSegmentator key (sirad_viewer.ai.totalseg)

    def set_segmenter(self, key: str) -> None:
        """Called on the GUI thread; the next run builds a grader with this segmenter."""
        with self._grader_lock:
            self.segmenter_key = key
            self._grader = None

    def grader(self):
        with self._grader_lock:
            if self._grader is None:
                from sirad_viewer.ai.pipeline import Grader
                from sirad_viewer.ai.totalseg import resolve_segmenter

                key = self.segmenter_key
                self._grader = Grader(segmenter=None if key == "unet" else resolve_segmenter(key),
                                      device=self._device())
            return self._grader

    @property
    def running(self) -> bool:
        return self.worker is not None and not self.worker.finished.is_set()

    def start(self, volume: Any, reading: Any) -> None:
        if self.running:
            return

        def job(progress, cancel):
            progress(0.0, "loading the model")
            grader = self.grader()
            return grader, grader(volume, progress=lambda stage, f: progress(f, stage), cancel=cancel)

        self.panel.set_running(True)
        self.worker = workers.start(job, on_done=lambda r: self._done(reading, r),
                                    on_error=lambda e: self._failed(reading, e),
                                    on_progress=lambda f, m: self.panel.set_progress(f, m))

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.cancel()

    def _done(self, reading: Any, out: Any) -> None:
        grader, result = out
        self.panel.set_running(False)
        self.panel.set_model(grader.bundle.name, grader.bundle.version, grader.device)
        if reading is self._current():
            reading.receive_ai(result)
        self.finished.emit(result)

    def _failed(self, reading: Any, exc: BaseException) -> None:
        self.panel.set_running(False)
        cancelled = isinstance(exc, SiradError) and exc.code == "cancelled"
        if reading is self._current() and not cancelled:
            reading.receive_ai(None, error=exc.user_message() if isinstance(exc, SiradError) else f"{type(exc).__name__}: {exc}")
        self.panel.set_progress(0.0, "cancelled" if cancelled else "failed")
        self.panel.refresh()
        self.finished.emit(None)

    def wait(self, timeout_ms: int = 300_000) -> bool:
        """Run the event loop until the current run ends; True when the current reading has its AI result."""
        reading = self._current()
        if self.worker is None:  # no model run: done only when a stored result was received
            return reading is not None and not reading.ai_pending
        if self.worker.finished.is_set():
            QtWidgets.QApplication.processEvents()
            reading = self._current()
            return reading is not None and not reading.ai_pending
        return workers.wait_for(self.finished, timeout_ms=timeout_ms, accept=lambda r: r is not None)
