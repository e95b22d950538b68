"""One editor widget per kind of setting, chosen from the registry's description of the key.

Every editor offers the same small interface: an `edited` signal on any change, `raw()` for what
it holds now (typed where the text parses, the text itself where it does not, so validation can
quote it) and `set_value()`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QValidator
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QLineEdit,
    QPlainTextEdit,
    QSizePolicy,
    QSpinBox,
)

from app.settings.hosts_editor import HostsCheck, HostsEditor
from app.settings.keys import KeysEditor
from app.settings.list_editor import ItemCheck, ListEditor
from server.config import ConfigError, Key, validate_value

# Keys whose editor the registry's types alone do not pick: a model name is offered from the
# list Ollama reports, a system prompt may run over several lines, and API keys are created
# (and shown once) rather than typed.
MODEL_KEY = ("ollama", "model")
PROMPT_KEY = ("ollama", "system_prompt")
KEYS_KEY = ("auth", "keys")
COMPACT_WIDTH = 150


class BoolEditor(QCheckBox):
    edited = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.toggled.connect(self.edited)

    def raw(self) -> bool:
        return self.isChecked()

    def set_value(self, value: Any) -> None:
        self.setChecked(bool(value))


class _TypedText:
    """What a spin box holds when its text is not a value within its range: kept as typed.

    QAbstractSpinBox quietly rewrites such text to its last value: it drops a keystroke that
    would leave the range ("99999" became "9999" in a port field) or the sign ("-5" became "5"),
    and on focus-out, Enter or hide it puts the previous value back ("" became "8080") without
    telling anyone, so the field showed one value while the page judged another. Here a number
    out of range, a lone sign or an empty field stays as the user left it (the page shows the
    server's message naming the key and range, and Save stays disabled) until they type a value
    in range, step with the arrows, or the form is filled again. Characters that cannot be part
    of a number are still refused as they are typed.
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = re.compile(pattern)
        self.held: str | None = None  # the text to show instead of the value, if any

    def validate(self, state: QValidator.State, text: str) -> QValidator.State:
        if state == QValidator.State.Invalid and self.pattern.fullmatch(text.strip()):
            return QValidator.State.Intermediate  # out of range, not wrong: let the page say so
        return state

    def typed(self, state: QValidator.State, text: str) -> None:
        self.held = None if state == QValidator.State.Acceptable else text


class IntEditor(QSpinBox):
    edited = Signal()

    def __init__(self, key: Key) -> None:
        super().__init__()
        self._typed = _TypedText(r"[+-]?\d*")
        lo = int(key.min) if key.min is not None else -(2**31)
        hi = int(key.max) if key.max is not None else 2**31 - 1
        self.setRange(lo, hi)
        # Both: the spin box's signal misses typed text out of range ("0" below a minimum of 1),
        # which validation should report as typed; the line edit's misses setValue().
        self.textChanged.connect(self.edited)
        self.lineEdit().textChanged.connect(self._on_typed)
        self.lineEdit().textChanged.connect(self.edited)

    def validate(self, text: str, pos: int) -> tuple[QValidator.State, str, int]:
        state, text, pos = super().validate(text, pos)
        return self._typed.validate(state, text), text, pos

    def textFromValue(self, value: int) -> str:
        held = self._typed.held
        if held is not None and value == self.value():
            return held  # QAbstractSpinBox asks for the text to show: what was typed
        return super().textFromValue(value)

    def stepBy(self, steps: int) -> None:
        _step_from_typed(self, self._typed)
        super().stepBy(steps)
        self.edited.emit()  # the text may have been replaced with signals blocked

    def setValue(self, value: int) -> None:
        held, self._typed.held = self._typed.held, None
        super().setValue(value)
        if held is not None:
            self.edited.emit()

    def raw(self) -> int | str:
        text = self.cleanText()
        number, ok = self.locale().toInt(text)
        if not ok and re.fullmatch(r"[+-]?\d+", text.strip()):
            return int(text)  # too large for Qt's int; the page reports it out of range
        return number if ok else text

    def set_value(self, value: Any) -> None:
        self.setValue(int(value))

    def _on_typed(self, text: str) -> None:
        self._typed.typed(super().validate(text, 0)[0], text)


class FloatEditor(QDoubleSpinBox):
    edited = Signal()

    def __init__(self, key: Key) -> None:
        super().__init__()
        point = re.escape(self.locale().decimalPoint())
        self._typed = _TypedText(rf"[+-]?\d*({point}\d*)?")
        self.setDecimals(3)  # before the range, which is rounded to it
        self.setRange(
            key.min if key.min is not None else -1e9, key.max if key.max is not None else 1e9
        )
        self.setStepType(QAbstractSpinBox.StepType.AdaptiveDecimalStepType)
        self.textChanged.connect(self.edited)  # both signals: see IntEditor
        self.lineEdit().textChanged.connect(self._on_typed)
        self.lineEdit().textChanged.connect(self.edited)

    def validate(self, text: str, pos: int) -> tuple[QValidator.State, str, int]:
        state, text, pos = super().validate(text, pos)
        return self._typed.validate(state, text), text, pos

    def textFromValue(self, value: float) -> str:
        held = self._typed.held
        if held is not None and value == self.value():
            return held  # see IntEditor
        # 300, not 300.000; 0.25, not 0.250.
        text = self.locale().toString(value, "f", self.decimals())
        point = self.locale().decimalPoint()
        return text.rstrip("0").rstrip(point) if point in text else text

    def stepBy(self, steps: int) -> None:
        _step_from_typed(self, self._typed)
        super().stepBy(steps)
        self.edited.emit()

    def setValue(self, value: float) -> None:
        held, self._typed.held = self._typed.held, None
        super().setValue(value)
        if held is not None:
            self.edited.emit()

    def raw(self) -> float | str:
        text = self.cleanText()
        number, ok = self.locale().toDouble(text)
        return number if ok else text

    def set_value(self, value: Any) -> None:
        self.setValue(float(value))

    def _on_typed(self, text: str) -> None:
        self._typed.typed(super().validate(text, 0)[0], text)


def _step_from_typed(spin: IntEditor | FloatEditor, typed: _TypedText) -> None:
    """An arrow pressed on text held as typed steps from that number, brought into the range
    (from "99999" in a port field, up gives 65535); from no number, from the last value."""
    held, typed.held = typed.held, None
    if held is None:
        return
    number = spin.raw()
    if isinstance(number, (int, float)):
        spin.setValue(min(max(number, spin.minimum()), spin.maximum()))  # type: ignore[arg-type]


class ChoiceEditor(QComboBox):
    edited = Signal()

    def __init__(self, key: Key) -> None:
        super().__init__()
        self.addItems(list(key.choices or ()))
        self.currentTextChanged.connect(self.edited)

    def raw(self) -> str:
        return self.currentText()

    def set_value(self, value: Any) -> None:
        self.setCurrentText(str(value))


class TextEditor(QLineEdit):
    edited = Signal()

    def __init__(self, key: Key) -> None:
        super().__init__()
        if key.default not in ("", None):
            self.setPlaceholderText(f"e.g. {key.default}")
        self.textChanged.connect(self.edited)

    def raw(self) -> str:
        return self.text()

    def set_value(self, value: Any) -> None:
        self.setText(str(value))


class PromptEditor(QPlainTextEdit):
    edited = Signal()

    def __init__(self, key: Key) -> None:
        super().__init__()
        self.setTabChangesFocus(True)
        self.setPlaceholderText("None: requests are sent as they come")
        lines = 3
        margins = self.contentsMargins()
        height = self.fontMetrics().lineSpacing() * lines + 2 * self.document().documentMargin()
        self.setFixedHeight(int(height) + margins.top() + margins.bottom() + 2)
        self.textChanged.connect(self.edited)

    def raw(self) -> str:
        return self.toPlainText()

    def set_value(self, value: Any) -> None:
        self.setPlainText(str(value))


class ModelEditor(QComboBox):
    """Editable: the models Ollama reports are offered, any other name may be typed."""

    edited = Signal()

    def __init__(self, key: Key) -> None:
        super().__init__()
        self.setEditable(True)
        self.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        completer = self.completer()
        if completer is not None:  # an editable combo box has one
            completer.setCaseSensitivity(Qt.CaseSensitivity.CaseSensitive)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setMinimumContentsLength(24)
        self.editTextChanged.connect(self.edited)

    def raw(self) -> str:
        return self.currentText()

    def set_value(self, value: Any) -> None:
        self.setEditText(str(value))

    def set_models(self, models: list[str]) -> None:
        """Offer `models`, keeping whatever name the field holds."""
        text = self.currentText()
        self.blockSignals(True)
        try:
            self.clear()
            self.addItems(models)
            self.setEditText(text)
        finally:
            self.blockSignals(False)


Editor = (
    BoolEditor
    | IntEditor
    | FloatEditor
    | ChoiceEditor
    | TextEditor
    | PromptEditor
    | ModelEditor
    | ListEditor
    | KeysEditor
    | HostsEditor
)
COMPACT = (BoolEditor, IntEditor, FloatEditor, ChoiceEditor)


def make_editor(key: Key) -> Editor:
    """The editor that fits `key`."""
    editor: Editor
    if key.type == "bool":
        editor = BoolEditor()
    elif key.type == "int":
        editor = IntEditor(key)
    elif key.type == "float":
        editor = FloatEditor(key)
    elif key.choices:
        editor = ChoiceEditor(key)
    elif key.type == "hosts":
        editor = HostsEditor(_hosts_check(key))
    elif (key.section, key.name) == KEYS_KEY:
        editor = KeysEditor(_item_check(key))
    elif key.type == "list":
        editor = ListEditor(_item_check(key))
    elif (key.section, key.name) == MODEL_KEY:
        editor = ModelEditor(key)
    elif (key.section, key.name) == PROMPT_KEY:
        editor = PromptEditor(key)
    else:
        editor = TextEditor(key)
    editor.setToolTip(key.help)
    editor.setAccessibleName(key.dotted)
    return editor


def _item_check(key: Key) -> ItemCheck:
    """Judge one list entry the way the server judges the whole list."""

    def check(text: str) -> str | None:
        try:
            validate_value(key, [text])
        except ConfigError as exc:
            # The message quotes the key and the one-entry list; next to the entry, the reason
            # is what matters.
            prefix = f"{key.dotted} = {json.dumps([text], ensure_ascii=False)}: "
            return exc.problems[0].removeprefix(prefix)
        return None

    return check


def _hosts_check(key: Key) -> HostsCheck:
    """Every problem the server finds in the host tables, each naming `ollama.hosts[N].field`."""

    def check(tables: list[dict[str, Any]]) -> list[str]:
        try:
            validate_value(key, tables)
        except ConfigError as exc:
            return list(exc.problems)
        return []

    return check
