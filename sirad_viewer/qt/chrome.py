"""The main window's chrome: docks, status bar, menu bar and keys, each wired to a window method."""
from __future__ import annotations

from typing import TYPE_CHECKING

from PyQt6 import QtCore, QtGui, QtWidgets

from sirad_viewer.qt.ai_panel import AIPanel
from sirad_viewer.qt.pacs_dialog import open_from_pacs
from sirad_viewer.qt.worklist import open_worklist

if TYPE_CHECKING:
    from sirad_viewer.qt.app import MainWindow


def build_docks(win: MainWindow) -> None:
    """The Series dock (loader text and warnings) under the Reading and AI dock (grading, AI panel); the panel's
    requests go to the window."""
    win.info = QtWidgets.QPlainTextEdit()
    win.info.setReadOnly(True)
    dock = QtWidgets.QDockWidget("Series", win)
    dock.setObjectName("series-dock")
    dock.setWidget(win.info)
    win.addDockWidget(QtCore.Qt.DockWidgetArea.RightDockWidgetArea, dock)
    win.series_dock = dock
    win.ai_panel = AIPanel()  # scrolls its results itself, under a pinned disclaimer
    ai_dock = QtWidgets.QDockWidget("Reading and AI", win)
    ai_dock.setObjectName("ai-dock")
    ai_dock.setWidget(win.ai_panel)
    ai_dock.setMinimumWidth(400)
    win.addDockWidget(QtCore.Qt.DockWidgetArea.RightDockWidgetArea, ai_dock)
    win.splitDockWidget(ai_dock, dock, QtCore.Qt.Orientation.Vertical)
    win.ai_dock = ai_dock
    p = win.ai_panel
    p.grading.lock_requested.connect(win.lock_and_reveal)
    p.run_requested.connect(win.start_ai)
    p.cancel_requested.connect(win.cancel_ai)
    p.jump_requested.connect(win.jump_to_joint)
    p.side_by_side_requested.connect(win.set_side_by_side)
    p.report_requested.connect(win.report_dialog)
    p.overlay_changed.connect(win._on_overlay_control)
    p.segmenter_choice.select(win.settings.get("ai_segmenter", "unet"))  # demo UNet or TotalSegmentator
    p.segmenter_choice.changed.connect(win._on_segmenter_changed)
    reading_keys(win)


def build_status(win: MainWindow) -> None:
    """Progress bar and Cancel for the loading worker, in the status bar."""
    win.progress = QtWidgets.QProgressBar()
    win.progress.setMaximumWidth(260)
    win.progress.setRange(0, 100)
    win.cancel_button = QtWidgets.QPushButton("Cancel")
    win.cancel_button.setEnabled(False)
    win.cancel_button.clicked.connect(win.cancel)
    win.statusBar().addPermanentWidget(win.progress)
    win.statusBar().addPermanentWidget(win.cancel_button)


def build_menus(win: MainWindow) -> None:
    """The menu bar: File, View, AI, Study, Help (the reading tools add theirs in qt/reading_tools.py)."""
    mb = win.menuBar()
    f = mb.addMenu("&File")
    f.addAction("Open file...", QtGui.QKeySequence.StandardKey.Open, win.open_file_dialog)
    f.addAction("Open folder...", QtGui.QKeySequence("Ctrl+Shift+O"), win.open_folder_dialog)
    f.addAction("Open from PACS...", lambda: open_from_pacs(win))
    f.addAction("Open worklist...", lambda: open_worklist(win))  # batch results in reading order
    win.recent_menu = f.addMenu("Recent")
    win.recent_menu.aboutToShow.connect(lambda: _fill_recent(win))
    f.addSeparator()
    win.export_actions = [
        f.addAction("Export screenshot of the active view...", win.export_view_dialog),
        f.addAction("Export screenshot of the layout...", QtGui.QKeySequence("Ctrl+Shift+S"), win.export_layout_dialog)]
    f.addSeparator()
    f.addAction("Quit", QtGui.QKeySequence.StandardKey.Quit, win.close)
    v = mb.addMenu("&View")
    lay_menu = v.addMenu("Layout")
    for name, label in (("sij", "SIJ reading (oblique, axial, coronal, sagittal, 3D)"), ("1x1", "1x1 (active view)"),
                        ("1x2", "1x2 (oblique and axial)"), ("2x2", "2x2 (axial, coronal, sagittal, 3D)")):
        lay_menu.addAction(label, lambda n=name: win.state.set_layout(n))
    win.preset_menu = v.addMenu("Window preset")
    win.preset_menu.aboutToShow.connect(lambda: _fill_presets(win))
    v.addAction("Save current window as preset...", win.save_preset_dialog)
    txt = v.addAction("Show patient and series text")
    txt.setCheckable(True)
    txt.setChecked(True)
    txt.setShortcut(QtGui.QKeySequence("Ctrl+T"))
    txt.toggled.connect(win.state.set_show_patient_text)
    win.patient_text_action = txt
    v.addAction("Set sacral axis (drag along the sacrum on the sagittal view)", QtGui.QKeySequence("Ctrl+L"),
                win.start_axis_mode)
    a = mb.addMenu("&AI")
    vis = a.addAction("AI visible at once (clinical reading, not for studies)")
    vis.setCheckable(True)
    vis.setChecked(win._ai_visible_at_once())
    vis.toggled.connect(win._set_ai_visible_at_once)
    win.ai_visible_action = vis
    a.addAction("Run AI on this case", win.start_ai)
    a.addAction("Cancel AI", win.cancel_ai)
    win.export_actions.append(a.addAction("Case report...", win.report_dialog))
    st = mb.addMenu("&Study")
    win.study_action = st.addAction("Read a study (sign in)...", win.open_study_dialog)
    win.coordinator_action = st.addAction("Coordinator view...", win.coordinator_dialog)
    h = mb.addMenu("&Help")
    h.addAction("About SIRAD Viewer", win.about)


def _fill_recent(win: MainWindow) -> None:
    win.recent_menu.clear()
    for p in win.settings.recent:
        win.recent_menu.addAction(p, lambda p=p: win.open_path(p))
    if not win.settings.recent:
        win.recent_menu.addAction("(none)").setEnabled(False)


def _fill_presets(win: MainWindow) -> None:
    win.preset_menu.clear()
    names = {"bone": "Bone W2000/L500", "bone-narrow": "Bone W1500/L300", "soft-tissue": "Soft tissue W400/L40"}
    for key, label in names.items():
        win.preset_menu.addAction(label, lambda k=key: win.state.apply_preset(k))
    for key, (w, lv) in win.settings.presets.items():
        win.preset_menu.addAction(f"{key} W{w:.0f}/L{lv:.0f}", lambda k=key: win.state.apply_preset(k, win.settings.presets))


def reading_keys(win: MainWindow) -> None:
    """One-key grading and AI keys: 0-4 grade the current side, S switches side, Ctrl+Return locks,
    H the heatmap, J / K jump to the right / left joint."""
    p = win.ai_panel
    for key, fn in ([(str(k), lambda k=k: p.grading.grade_key(k)) for k in range(5)]
                    + [("S", p.grading.switch_side), ("Ctrl+Return", win.lock_and_reveal),
                       ("H", win.toggle_heatmap), ("J", lambda: win.jump_to_joint("right")),
                       ("K", lambda: win.jump_to_joint("left"))]):
        sc = QtGui.QShortcut(QtGui.QKeySequence(key), win)
        sc.activated.connect(fn)
