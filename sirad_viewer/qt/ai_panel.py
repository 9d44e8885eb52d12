"""The reading dock: grade first (locked), then the AI panel with its result, overlays and report.

:class:`GradingPanel` holds the reader's grades; :class:`AIPanel` shows the model, the run state
and, only once :attr:`Reading.ai` returns a result, the grades, probability bars, patient result
and timings. Before that the panel holds no AI text at all (the result object stays inside the
:class:`~sirad_viewer.state.reading.Reading`).
"""
from __future__ import annotations

from typing import Any, Sequence

from PyQt6 import QtCore, QtGui, QtWidgets

from sirad_viewer.errors import SiradError
from sirad_viewer.state.reading import CONFIDENCE, Reading

DISCLAIMER_SHORT = ("Demo model trained on synthetic phantoms only. Not validated on patients; "
                    "not for clinical use.")

# what each modified New York grade means (CLINICAL.md), to name a category in words
GRADE_WORDS = {0: "normal", 1: "suspicious", 2: "minimal abnormality", 3: "unequivocal abnormality",
               4: "ankylosis"}
_GROUP_WORDS = {(0, 1): "normal or suspicious", (2, 3): "definite damage", (3, 4): "marked damage or ankylosis"}


def category_words(group: Sequence[int]) -> str:
    """A grade group in words, e.g. ``[0, 1]`` -> "grades 0-1, normal or suspicious".

    The groups are the model's data (its bundle's ``groups``), never assumed here."""
    g = tuple(int(v) for v in group)
    span = f"grade {g[0]}" if len(g) == 1 else f"grades {g[0]}-{g[-1]}"
    words = _GROUP_WORDS.get(g) or " or ".join(GRADE_WORDS.get(v, str(v)) for v in g)
    return f"{span}, {words}"


class ProbBars(QtWidgets.QWidget):
    """Labelled horizontal probability bars; the largest is highlighted."""

    def __init__(self, labels: Sequence[str], parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.labels = list(labels)
        self.values: list[float] | None = None
        self.setMinimumHeight(16 * len(self.labels) + 4)

    def set_values(self, values: Sequence[float] | None) -> None:
        self.values = None if values is None else [float(v) for v in values]
        self.setToolTip("" if values is None else "  ".join(f"{lab}: {v:.2f}" for lab, v in zip(self.labels, self.values)))
        self.update()

    def paintEvent(self, e: QtGui.QPaintEvent) -> None:  # noqa: N802
        p = QtGui.QPainter(self)
        w = self.width()
        best = -1 if not self.values else max(range(len(self.values)), key=lambda i: self.values[i])
        for i, lab in enumerate(self.labels):
            y = 2 + i * 16
            p.setPen(QtGui.QColor("#cfcfcf"))
            p.drawText(QtCore.QRectF(0, y, 46, 14), QtCore.Qt.AlignmentFlag.AlignLeft, lab)
            p.fillRect(QtCore.QRectF(48, y + 2, w - 100, 10), QtGui.QColor("#333"))
            if self.values is not None:
                v = self.values[i]
                p.fillRect(QtCore.QRectF(48, y + 2, (w - 100) * v, 10),
                           QtGui.QColor("#e8a33d" if i == best else "#6c8ebf"))
                p.drawText(QtCore.QRectF(w - 48, y, 48, 14), QtCore.Qt.AlignmentFlag.AlignRight, f"{v:.2f}")
        p.end()


class GradingPanel(QtWidgets.QGroupBox):
    """The reader's grades: 0-4 per joint (keys 0-4 grade the highlighted joint, S switches), lock."""

    lock_requested = QtCore.pyqtSignal()

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__("Your grades (0-4)", parent)
        self.reading: Reading | None = None
        self.active_side = "right"
        lay = QtWidgets.QGridLayout(self)
        self.groups: dict[str, QtWidgets.QButtonGroup] = {}
        self.side_labels: dict[str, QtWidgets.QLabel] = {}
        for row, side in enumerate(("right", "left")):
            lab = QtWidgets.QLabel(f"{side.capitalize()} SIJ")
            self.side_labels[side] = lab
            lay.addWidget(lab, row, 0)
            grp = QtWidgets.QButtonGroup(self)
            grp.setExclusive(True)
            for g in range(5):
                b = QtWidgets.QPushButton(str(g))
                b.setCheckable(True)
                b.setFixedWidth(30)
                b.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
                grp.addButton(b, g)
                lay.addWidget(b, row, 1 + g)
            grp.idClicked.connect(lambda g, s=side: self._set(s, g))
            self.groups[side] = grp
        self.confidence = QtWidgets.QComboBox()
        self.confidence.addItems(["confidence: -"] + list(CONFIDENCE))
        self.confidence.currentIndexChanged.connect(self._on_confidence)
        lay.addWidget(self.confidence, 2, 0, 1, 6)
        self.comment = QtWidgets.QLineEdit()
        self.comment.setPlaceholderText("comment (optional)")
        self.comment.editingFinished.connect(self._commit_comment)
        self.comment.installEventFilter(self)  # Ctrl+Return in the field locks, with the comment in the record
        lay.addWidget(self.comment, 3, 0, 1, 6)
        self.lock_button = QtWidgets.QPushButton("Lock and reveal AI (Ctrl+Return)")
        self.lock_button.clicked.connect(self.lock_requested.emit)
        self.error = ""
        lay.addWidget(self.lock_button, 4, 0, 1, 6)
        self.status = QtWidgets.QLabel("")
        self.status.setWordWrap(True)
        lay.addWidget(self.status, 5, 0, 1, 6)
        self.setToolTip("Keys 0-4 grade the highlighted joint (then move to the other one); S switches joint.")
        self.bind(None)

    def bind(self, reading: Reading | None) -> None:
        if self.reading is not None and self.reading is not reading:
            self.reading.changed.disconnect(self.refresh)
        self.reading = reading
        if reading is not None:
            reading.changed.connect(self.refresh)
        self.active_side = "right"
        self.error = ""
        self.refresh()

    def eventFilter(self, obj: QtCore.QObject, e: QtCore.QEvent) -> bool:  # noqa: N802
        if obj is self.comment and e.type() in (QtCore.QEvent.Type.ShortcutOverride, QtCore.QEvent.Type.KeyPress):
            if (e.key() in (QtCore.Qt.Key.Key_Return, QtCore.Qt.Key.Key_Enter)
                    and e.modifiers() & QtCore.Qt.KeyboardModifier.ControlModifier):
                e.accept()
                if e.type() == QtCore.QEvent.Type.KeyPress:
                    self.lock_requested.emit()  # the window locks through request_lock(): the text goes along
                return e.type() == QtCore.QEvent.Type.KeyPress
        return super().eventFilter(obj, e)

    def _forward(self, action: Any, *args: Any) -> bool:
        """Forward input to the reading; a refusal is shown here (a Qt slot never raises)."""
        if self.reading is None:
            return False
        try:
            action(*args)
        except SiradError as exc:
            self.error = exc.user_message()
            self.refresh()
            return False
        self.error = ""
        self.refresh()
        return True

    def _set(self, side: str, grade: int) -> None:
        if self.reading is not None:
            self._forward(self.reading.set_grade, side, grade)

    def _on_confidence(self, i: int) -> None:
        if self.reading is not None and not self._refreshing:
            self._forward(self.reading.set_confidence, None if i == 0 else CONFIDENCE[i - 1])

    def _commit_comment(self) -> None:
        if self.reading is not None and not self._refreshing:
            self._forward(self.reading.set_comment, self.comment.text())

    def request_lock(self) -> bool:
        """Lock with what the panel holds now: a comment typed but not yet committed belongs to the lock."""
        r = self.reading
        if r is None or r.locked:
            return False
        conf = self.confidence.currentIndex()
        return self._forward(lambda: r.lock(comment=self.comment.text(),
                                            confidence=None if conf == 0 else CONFIDENCE[conf - 1]))

    def grade_key(self, grade: int) -> None:
        """Keyboard: grade the highlighted joint, then highlight the other one."""
        if self.reading is None:
            return
        if self._forward(self.reading.set_grade, self.active_side, grade):
            self.active_side = "left" if self.active_side == "right" else "right"
        self.refresh()

    def switch_side(self) -> None:
        self.active_side = "left" if self.active_side == "right" else "right"
        self.refresh()

    _refreshing = False

    def refresh(self) -> None:
        self._refreshing = True
        try:
            self._refresh()
        finally:
            self._refreshing = False

    def _refresh(self) -> None:
        r = self.reading
        enabled = r is not None and not r.paused
        current = None if r is None else (r.post if (r.locked and r.post is not None) else r.pre)
        for side, grp in self.groups.items():
            v = None if current is None else getattr(current, side)
            # an exclusive group never unchecks its checked button: without this the previous
            # case's grade stays selected on the next case while the state says "missing"
            grp.setExclusive(False)
            for b in grp.buttons():
                b.setEnabled(enabled)
                b.setChecked(v is not None and grp.id(b) == v)
            grp.setExclusive(True)
            bold = "font-weight:bold; color:#e8c547;" if side == self.active_side and enabled else ""
            self.side_labels[side].setStyleSheet(bold)
        for w in (self.confidence, self.comment):
            w.setEnabled(enabled)
        conf = None if current is None else current.confidence
        self.confidence.setCurrentIndex(0 if conf not in CONFIDENCE else 1 + CONFIDENCE.index(conf))
        text = "" if current is None else current.comment
        if self.comment.text() != text and not (self.comment.hasFocus() and r is not None and not r.locked):
            self.comment.setText(text)
        if r is None:
            self.lock_button.setEnabled(False)
            self.status.setText("Open a CT to grade it.")
            return
        if r.paused:
            self.lock_button.setEnabled(False)
            self.status.setText("Paused: grading, locking and the AI are on hold.")
            return
        if not r.locked:
            self.setTitle("Your grades, before AI (0-4)")
            self.lock_button.setEnabled(r.pre.complete())
            if not r.ai_allowed:
                self.lock_button.setText("Lock grades (Ctrl+Return)")
                self.status.setText("This case is read without AI.")
            else:
                self.lock_button.setText("Lock and reveal AI (Ctrl+Return)")
                self.status.setText("The AI result stays hidden until you lock both grades."
                                    if not r.ai_visible_at_once else "AI visible at once (clinical reading setting).")
        else:
            self.setTitle("Your grades, after AI (stored separately)")
            self.lock_button.setEnabled(False)
            self.lock_button.setText("Locked")
            when = (r.locked_at or "")[11:19]
            self.status.setText(f"Pre-AI grades locked at {when} UTC: right {r.pre.right}, left {r.pre.left}."
                                + (f" Post-AI: right {r.post.right}, left {r.post.left}." if r.post else ""))
        problem = self.error or r.last_error
        if problem:
            self.status.setText(self.status.text() + f"\n⚠ {problem}")


class AIPanel(QtWidgets.QWidget):
    """Model, device, Run/Cancel with stage progress, the result (after the reveal), overlay controls."""

    run_requested = QtCore.pyqtSignal()
    cancel_requested = QtCore.pyqtSignal()
    jump_requested = QtCore.pyqtSignal(str)
    side_by_side_requested = QtCore.pyqtSignal(bool)
    report_requested = QtCore.pyqtSignal()
    overlay_changed = QtCore.pyqtSignal(dict)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        outer = QtWidgets.QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(2)
        # pinned above the scrolling part: the disclaimer, and a flagged result's warning (#13: the
        # disclaimer scrolled out of view above the results, the warning came after the grade)
        self.pinned = QtWidgets.QWidget()
        pl = QtWidgets.QVBoxLayout(self.pinned)
        pl.setContentsMargins(6, 4, 6, 2)
        self.disclaimer = QtWidgets.QLabel(DISCLAIMER_SHORT)
        self.disclaimer.setWordWrap(True)
        self.disclaimer.setStyleSheet("color:#ffb86b;")
        pl.addWidget(self.disclaimer)
        self.ood_label = QtWidgets.QLabel("")
        self.ood_label.setWordWrap(True)
        self.ood_label.setStyleSheet("border:2px solid #ff5555; padding:4px;")
        self.ood_label.hide()
        pl.addWidget(self.ood_label)
        outer.addWidget(self.pinned)
        self.scroll = QtWidgets.QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        body = QtWidgets.QWidget()
        self.scroll.setWidget(body)
        outer.addWidget(self.scroll, 1)
        lay = QtWidgets.QVBoxLayout(body)
        lay.setContentsMargins(4, 4, 4, 4)
        self.grading = GradingPanel()
        lay.addWidget(self.grading)
        box = QtWidgets.QGroupBox("AI")
        bl = QtWidgets.QVBoxLayout(box)
        self.model_label = QtWidgets.QLabel("model: (loaded when a case opens)")
        self.model_label.setWordWrap(True)
        bl.addWidget(self.model_label)
        self.device_label = QtWidgets.QLabel("device: -")
        self.device_label.setWordWrap(True)
        bl.addWidget(self.device_label)
        from sirad_viewer.qt.segmenter_choice import SegmenterChoice

        self.segmenter_choice = SegmenterChoice()  # demo UNet / TotalSegmentator (greyed out, with why, if unusable)
        bl.addWidget(self.segmenter_choice)
        row = QtWidgets.QHBoxLayout()
        self.run_button = QtWidgets.QPushButton("Run")
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.run_button.clicked.connect(self.run_requested.emit)
        self.cancel_button.clicked.connect(self.cancel_requested.emit)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        bl.addLayout(row)
        self.progress = QtWidgets.QProgressBar()
        self.progress.setRange(0, 100)
        self.stage_label = QtWidgets.QLabel("")
        self.stage_label.setWordWrap(True)
        bl.addWidget(self.progress)
        bl.addWidget(self.stage_label)
        self.hidden_label = QtWidgets.QLabel("")
        self.hidden_label.setWordWrap(True)
        bl.addWidget(self.hidden_label)
        # result widgets: empty until the reveal
        self.result_box = QtWidgets.QWidget()
        rl = QtWidgets.QVBoxLayout(self.result_box)
        rl.setContentsMargins(0, 0, 0, 0)
        self.joint_labels: dict[str, QtWidgets.QLabel] = {}
        self.bars5: dict[str, ProbBars] = {}
        self.bars3: dict[str, ProbBars] = {}
        self.category_labels: dict[str, QtWidgets.QLabel] = {}
        for side in ("right", "left"):
            lab = QtWidgets.QLabel("")
            lab.setWordWrap(True)
            self.joint_labels[side] = lab
            rl.addWidget(lab)
            self.bars5[side] = ProbBars([f"grade {g}" for g in range(5)])
            self.bars3[side] = ProbBars(["0-1", "2-3", "4"])
            rl.addWidget(self.bars5[side])
            cat = QtWidgets.QLabel("")
            cat.setWordWrap(True)
            cat.setStyleSheet("color:#bbb;")
            self.category_labels[side] = cat
            rl.addWidget(cat)
            rl.addWidget(self.bars3[side])
        self.patient_label = QtWidgets.QLabel("")
        self.patient_label.setWordWrap(True)
        rl.addWidget(self.patient_label)
        self.timing_label = QtWidgets.QLabel("")
        self.timing_label.setWordWrap(True)
        self.timing_label.setStyleSheet("color:#999;")
        rl.addWidget(self.timing_label)
        bl.addWidget(self.result_box)
        lay.addWidget(box)
        # overlay controls
        ov = QtWidgets.QGroupBox("Overlays")
        ol = QtWidgets.QGridLayout(ov)
        self.heat_check = QtWidgets.QCheckBox("Heatmap (H)")
        self.heat_check.setChecked(True)
        self.heat_check.toggled.connect(lambda v: self.overlay_changed.emit({"heatmap_visible": v}))
        ol.addWidget(self.heat_check, 0, 0)
        self.opacity = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(45)
        self.opacity.valueChanged.connect(lambda v: self.overlay_changed.emit({"opacity": v / 100.0}))
        ol.addWidget(QtWidgets.QLabel("opacity"), 1, 0)
        ol.addWidget(self.opacity, 1, 1)
        self.threshold = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.threshold.setRange(0, 95)
        self.threshold.setValue(20)
        self.threshold.valueChanged.connect(lambda v: self.overlay_changed.emit({"threshold": v / 100.0}))
        ol.addWidget(QtWidgets.QLabel("threshold"), 2, 0)
        ol.addWidget(self.threshold, 2, 1)
        self.labels_combo = QtWidgets.QComboBox()
        self.labels_combo.addItems(["bones: off", "bones: outline", "bones: fill"])
        self.labels_combo.currentIndexChanged.connect(
            lambda i: self.overlay_changed.emit({"labels_mode": ("off", "outline", "fill")[i]}))
        ol.addWidget(self.labels_combo, 3, 0)
        self.boxes_check = QtWidgets.QCheckBox("joint boxes")
        self.boxes_check.setChecked(True)
        self.boxes_check.toggled.connect(lambda v: self.overlay_changed.emit({"boxes_visible": v}))
        ol.addWidget(self.boxes_check, 3, 1)
        self.jump_right = QtWidgets.QPushButton("Right joint (J)")
        self.jump_left = QtWidgets.QPushButton("Left joint (K)")
        self.jump_right.clicked.connect(lambda: self.jump_requested.emit("right"))
        self.jump_left.clicked.connect(lambda: self.jump_requested.emit("left"))
        ol.addWidget(self.jump_right, 4, 0)
        ol.addWidget(self.jump_left, 4, 1)
        self.side_by_side = QtWidgets.QPushButton("Both joints side by side")
        self.side_by_side.setCheckable(True)
        self.side_by_side.toggled.connect(self.side_by_side_requested.emit)
        ol.addWidget(self.side_by_side, 5, 0, 1, 2)
        self.report_button = QtWidgets.QPushButton("Case report...")
        self.report_button.clicked.connect(self.report_requested.emit)
        ol.addWidget(self.report_button, 6, 0, 1, 2)
        self.overlay_box = ov
        lay.addWidget(ov)
        lay.addStretch(1)
        self.reading: Reading | None = None
        self.running = False
        self.refresh()

    def set_model(self, name: str, version: str, device: str) -> None:
        self.model_label.setText(f"model: {name} {version}")
        self.device_label.setText(f"device: {device}")

    def bind(self, reading: Reading | None) -> None:
        self.reading = reading
        self.grading.bind(reading)
        if reading is not None:
            reading.changed.connect(self.refresh)
        self.refresh()

    def set_progress(self, fraction: float, stage: str) -> None:
        self.progress.setValue(int(100 * fraction))
        self.stage_label.setText(f"stage: {stage}")

    def set_running(self, running: bool) -> None:
        self.running = running
        self.refresh()

    def _clear_result(self) -> None:
        for side in ("right", "left"):
            self.joint_labels[side].setText("")
            self.category_labels[side].setText("")
            self.bars5[side].set_values(None)
            self.bars3[side].set_values(None)
        self.patient_label.setText("")
        self.timing_label.setText("")

    def refresh(self) -> None:
        self._refresh()
        self.hidden_label.setVisible(bool(self.hidden_label.text()))  # no empty gap above the results

    def _refresh(self) -> None:
        r = self.reading
        self.hidden_label.setStyleSheet("")
        self.ood_label.hide()
        self.ood_label.setText("")
        self.run_button.setEnabled(r is not None and not self.running)
        self.cancel_button.setEnabled(self.running)
        res = None if r is None else r.ai
        revealed = res is not None
        for w in (self.overlay_box,):
            w.setEnabled(revealed)
        self.result_box.setVisible(revealed)
        if r is None:
            self.hidden_label.setText("")
            self._clear_result()
            return
        if not r.ai_allowed:
            self._clear_result()
            self.run_button.setEnabled(False)
            self.hidden_label.setText("This case is read without AI (unaided study arm).")
            return
        if not r.ai_revealed:
            self._clear_result()
            state = "running in the background" if self.running else ("ready" if not r.ai_pending else "not run yet")
            self.hidden_label.setText(f"AI {state}; its result is hidden until you lock your grades.")
            return
        if r.ai_error:
            self._clear_result()
            self.hidden_label.setText(f"AI failed: {r.ai_error}")
            return
        if res is None:
            self._clear_result()
            self.hidden_label.setText("AI running ..." if self.running else "AI not run yet (press Run).")
            return
        d = res.to_dict()
        self.show_reliability(d)
        for side in ("right", "left"):
            j = d["joints"][side]
            groups = _groups(res, side)
            flag = ("<span style='color:#ff5555'>\u26a0 unlike the training data \u2014 not reliable</span><br>"
                    if (j.get("ood") or {}).get("flagged") else "")
            group = groups[j["category3"]] if j.get("category3") is not None else [int(j["grade"])]
            cat = f"; category: {category_words(group)}" if len(group) > 1 else ""  # a one-grade group says nothing more
            self.joint_labels[side].setText(f"{flag}<b>{side.capitalize()} SIJ: AI grade {j['grade']}</b> "
                                            f"({GRADE_WORDS.get(int(j['grade']), '')}){cat}")
            self.bars5[side].set_values(j["probabilities"])
            self.bars3[side].labels = [f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]) for g in groups]
            self.bars3[side].set_values(j["category3_probabilities"])
            self.category_labels[side].setText(
                "Probability per category: " + "; ".join(category_words(g) for g in groups))
        pt = d["patient"]
        text = (f"Patient (modified New York): {'(not reliable) ' if d.get('ood_flagged') else ''}"
                f"<b>{'positive' if pt['as_positive'] else 'negative'}</b>, P = {pt['probability']:.2f} "
                "(positive when P &ge; 0.5)")
        if pt.get("explanation"):
            text += f"<br><i>{pt['explanation']}</i>"
        self.patient_label.setText(text)
        self.timing_label.setText("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in d["timings_s"].items()))

    def show_reliability(self, d: dict[str, Any]) -> None:
        """A flagged result: the warning is pinned under the disclaimer, above every grade (it never scrolls away)."""
        self.hidden_label.setText("")
        if d.get("ood_flagged"):
            self.ood_label.setText(f"<b style='color:#ff5555'>\u26a0 {d['reliability']}</b>")
            self.ood_label.show()
        else:
            self.ood_label.setText("")
            self.ood_label.hide()

    def visible_texts(self) -> list[str]:
        """Every text any child widget holds (labels, tooltips, buttons): for the blinding test."""
        out = []
        for w in self.findChildren(QtWidgets.QWidget):
            for attr in ("text", "toolTip", "title", "placeholderText"):
                fn = getattr(w, attr, None)
                if callable(fn):
                    try:
                        v = fn()
                    except TypeError:
                        continue
                    if isinstance(v, str) and v:
                        out.append(v)
        return out


def _groups(result: Any, side: str) -> list[list[int]]:
    """The model's grade groups for a joint (bundle metadata), or the default 0-1 / 2-3 / 4."""
    from sirad_viewer.ai.grading import DEFAULT_GROUPS

    j = getattr(result, "joints", {}).get(side)
    return [list(g) for g in (getattr(j, "groups", None) or DEFAULT_GROUPS)]


def grade_summary(result: Any) -> dict[str, Any]:
    return {s: j.grade for s, j in result.joints.items()}
