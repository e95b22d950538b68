"""One editor widget per kind of setting, chosen from the registry's description of the key.

Every editor offers the same small interface: an `edited` signal on any change, `raw()` for what
it holds now (typed where the text parses, the text itself where it does not, so validation can
quote it) and `set_value()`.
"""

from __future__ import annotations

import json
from typing import Any

from PySide6.QtCore import Qt, Signal
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


class IntEditor(QSpinBox):
    edited = Signal()

    def __init__(self, key: Key) -> None:
        super().__init__()
        lo = int(key.min) if key.min is not None else -(2**31)
        hi = int(key.max) if key.max is not None else 2**31 - 1
        self.setRange(lo, hi)
        # Both: the spin box's signal misses typed text out of range ("0" below a minimum of 1),
        # which validation should report as typed; the line edit's misses setValue().
        self.textChanged.connect(self.edited)
        self.lineEdit().textChanged.connect(self.edited)

    def raw(self) -> int | str:
        text = self.cleanText()
        number, ok = self.locale().toInt(text)
        return number if ok else text

    def set_value(self, value: Any) -> None:
        self.setValue(int(value))


class FloatEditor(QDoubleSpinBox):
    edited = Signal()

    def __init__(self, key: Key) -> None:
        super().__init__()
        self.setDecimals(3)  # before the range, which is rounded to it
        self.setRange(
            key.min if key.min is not None else -1e9, key.max if key.max is not None else 1e9
        )
        self.setStepType(QAbstractSpinBox.StepType.AdaptiveDecimalStepType)
        self.textChanged.connect(self.edited)  # both signals: see IntEditor
        self.lineEdit().textChanged.connect(self.edited)

    def textFromValue(self, value: float) -> str:
        # 300, not 300.000; 0.25, not 0.250.
        text = self.locale().toString(value, "f", self.decimals())
        point = self.locale().decimalPoint()
        return text.rstrip("0").rstrip(point) if point in text else text

    def raw(self) -> float | str:
        text = self.cleanText()
        number, ok = self.locale().toDouble(text)
        return number if ok else text

    def set_value(self, value: Any) -> None:
        self.setValue(float(value))


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
