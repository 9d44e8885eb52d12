"""Reader-study mode of the main window: sign-in, blinding by role, the coordinator view.

A reader's session hides the patient and series text and every export, and offers no
coordinator view; leaving it brings the clinical settings back untouched. The rules themselves
live in the study core (:mod:`sirad_viewer.study`) and :class:`sirad_viewer.qt.study.StudyController`;
these functions only switch the window in and out of the mode.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from PyQt6 import QtWidgets

from sirad_viewer.errors import SiradError
from sirad_viewer.qt.dialogs import show_error

if TYPE_CHECKING:
    from sirad_viewer.qt.app import MainWindow


def open_study_dialog(win: MainWindow) -> None:
    path, _ = QtWidgets.QFileDialog.getOpenFileName(win, "Open study", "", "Study (*.sqlite *.db);;All files (*)")
    if path:
        start_study(win, path)


def start_study(win: MainWindow, path: str, reader: str | None = None, *, key: str | None = None,
                clock: Any = None, takeover: bool | None = None) -> bool:
    """Sign in (unless ``reader`` is given) and start at the reader's first unfinished case.

    An unknown reader id opens the sign-in dialog (it never quits the program); a reader signed
    in elsewhere is refused unless the reader takes the session over. ``key`` (or
    ``$SIRAD_STUDY_KEY``): the coordinator key, so that this workstation's events are signed.
    """
    from sirad_viewer.qt.study import SignInDialog, StudyController
    from sirad_viewer.study.integrity import CoordinatorKey
    from sirad_viewer.study.store import StudyStore

    try:
        key_path = key or os.environ.get("SIRAD_STUDY_KEY")
        store = StudyStore(path, key=CoordinatorKey.load(key_path) if key_path else None)
        message = ""
        if reader is not None and reader not in [r.id for r in store.protocol.readers]:
            message = f"There is no reader {reader!r} in this study; choose your reader id."
            reader = None
            if not win.interactive:
                win.statusBar().showMessage(message)
                return False
        if reader is None:
            dlg = SignInDialog(store, win, message=message)
            if dlg.exec() != QtWidgets.QDialog.DialogCode.Accepted:
                return False
            reader = dlg.reader()
        if win.study is not None:
            end_study(win)
        kwargs = {"idle_s": float(win.settings.get("idle_s", 60))}
        if clock is not None:
            kwargs["clock"] = clock
        try:
            ctl = StudyController(win, store, reader, takeover=bool(takeover), **kwargs)
        except SiradError as exc:
            if exc.code != "reader_busy" or takeover is not None or not win.interactive:
                raise
            answer = QtWidgets.QMessageBox.question(win, "Reader signed in elsewhere",
                                                    exc.message + "\n\nTake over that session? It will stop "
                                                    "recording.")
            if answer != QtWidgets.QMessageBox.StandardButton.Yes:
                return False
            ctl = StudyController(win, store, reader, takeover=True, **kwargs)
    except SiradError as exc:
        win.statusBar().showMessage(exc.user_message())
        show_error(win, exc)
        return False
    enter_study_mode(win, ctl)
    ctl.start()
    return True


def enter_study_mode(win: MainWindow, ctl: Any) -> None:
    win._text_before_study = win.state.show_patient_text
    win.state.set_show_patient_text(False)
    win.patient_text_action.setChecked(False)
    for a in [win.patient_text_action, win.ai_visible_action, win.coordinator_action, *win.export_actions]:
        a.setEnabled(False)
    win.series_dock.hide()
    win.info.clear()
    ctl.finished.connect(win.end_study)


def end_study(win: MainWindow) -> None:
    """Leave study mode: the clinical settings come back untouched by anything done in the study."""
    if win.study is None:
        return
    win.study.close()
    win.removeToolBar(win.study.bar)
    win.study = None
    for a in [win.patient_text_action, win.ai_visible_action, win.coordinator_action, *win.export_actions]:
        a.setEnabled(True)
    win.ai_visible_action.setChecked(win._ai_visible_at_once())
    win.patient_text_action.setChecked(getattr(win, "_text_before_study", True))
    win.series_dock.show()


def coordinator_dialog(win: MainWindow, path: str | None = None, key: str | None = None) -> None:
    """The coordinator view: never from a reader's session, and only with the study's key."""
    from sirad_viewer.qt.study import CoordinatorDialog
    from sirad_viewer.study.integrity import CoordinatorKey
    from sirad_viewer.study.store import StudyStore

    if win.study is not None:
        win.statusBar().showMessage("the coordinator view is not available in a reader's session")
        return
    if path is None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(win, "Open study", "", "Study (*.sqlite *.db);;All files (*)")
    if path and key is None:
        key, _ = QtWidgets.QFileDialog.getOpenFileName(win, "Coordinator key", "", "Key (*.key);;All files (*)")
    if path and key:
        try:
            CoordinatorDialog(StudyStore(path), CoordinatorKey.load(key), win).exec()
        except SiradError as exc:
            show_error(win, exc)
