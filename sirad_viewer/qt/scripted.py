"""Scripted runs of the viewer: open a case, optionally grade, lock and reveal, write a screenshot
and a case report, quit (the off-screen ``make run`` path and ``sirad-viewer --screenshot``).

The main window knows nothing of these runs; this module drives it from outside, as a reader
would, through its public methods.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from PyQt6 import QtCore, QtWidgets

from sirad_viewer.qt.dialogs import DARK_QSS


def run(path: str | None = None, *, series: int | None = None, screenshot: str | None = None,
        layout: str | None = None, sacral_axis: tuple[Any, Any] | None = None,
        grades: tuple[int, int] | None = None, report: str | None = None, study: str | None = None,
        reader: str | None = None, coordinator: str | None = None) -> int:
    """Open the viewer; with ``screenshot``, run the scripted session and quit (``make run``).

    Returns the process exit code: 0 written, 1 the image could not be written, 2 the case (or the
    reader, or the AI) could not be brought up. Without ``screenshot`` the Qt event loop runs
    until the window is closed.
    """
    from sirad_viewer.qt.app import MainWindow

    if coordinator and screenshot:  # the coordinator view asks for the key in a dialog: a scripted run hung there
        print("--coordinator asks for the coordinator key in a dialog; it cannot run with --screenshot",
              file=sys.stderr)
        return 2
    if screenshot and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    app.setApplicationName("SIRAD Viewer")
    app.setStyleSheet(DARK_QSS)
    with_3d = QtWidgets.QApplication.platformName() != "offscreen"  # QtInteractor needs a real (X) display
    win = MainWindow(interactive=screenshot is None, with_3d=with_3d)
    if layout and layout != "joints":
        win.state.set_layout(layout)
    win.show()
    if coordinator:
        win.coordinator_dialog(coordinator)
    if study:
        failed: list[BaseException] = []
        win.load_failed.connect(failed.append)
        if not win.start_study(study, reader) and screenshot:
            return 2  # without a screenshot the window stays open: an unknown reader never quits the program
        if screenshot:
            QtWidgets.QApplication.processEvents()
            deadline = QtCore.QDeadlineTimer(120_000)
            while (win.state.volume is None or win.reading is None) and not deadline.hasExpired() and not failed:
                app.processEvents(QtCore.QEventLoop.ProcessEventsFlag.AllEvents, 100)
            if failed:  # the case could not be loaded: say so and fail, instead of a blank screenshot and exit 0
                print(f"could not load the study's case: {win.info.toPlainText()}", file=sys.stderr)
                win.close()
                return 2
            for _ in range(5):
                app.processEvents()
            ok = win.export_window(screenshot)
            print(f"screenshot written to {screenshot}" if ok else f"could not write {screenshot}")
            win.close()
            return 0 if ok else 1
        return app.exec()
    if path:
        if sacral_axis is not None:
            win.volume_ready.connect(lambda *_: win.state.set_sacral_axis_from_line(*sacral_axis))
        if layout and layout != "joints":  # an explicit --layout wins over the hanging protocol's (deferred too)
            win.volume_ready.connect(lambda *_: QtCore.QTimer.singleShot(0, lambda: win.state.set_layout(layout)))
        win.open_path(path, series)
    if screenshot:
        if not path:
            print("--screenshot needs a PATH to open", file=sys.stderr)
            return 2
        ok = win.wait_until_ready()
        if not ok:
            msg = win.info.toPlainText().strip()
            print(msg if str(path) in msg else f"could not load {path}: {msg}", file=sys.stderr)  # once, path once
            return 2
        if grades is not None:
            # scripted reading: the reader's grades (right, left), lock, then the revealed AI
            win.ai_panel.grading.reading.set_grade("right", grades[0])
            win.reading.set_grade("left", grades[1])
            win.lock_and_reveal()
            if not win.wait_for_ai():
                print(f"the AI did not finish: {win.ai_panel.hidden_label.text()}", file=sys.stderr)
                return 2
            if layout == "joints":
                win.set_side_by_side(True)
            if report:
                win.write_report(report)
                print(f"case report written to {report}")
        for _ in range(3):
            app.processEvents()
        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
        ok = win.export_window(screenshot) if grades is not None else win.export_layout(screenshot)
        print(f"screenshot written to {screenshot}" if ok else f"could not write {screenshot}")
        win.close()
        return 0 if ok else 1
    return app.exec()
