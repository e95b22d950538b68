"""The `[auth].keys` field: stored entries shown as "name (role)", with Create key… and Revoke."""

from __future__ import annotations

import logging

from PySide6.QtWidgets import QPushButton, QWidget

from app.settings.key_dialog import CreateKeyDialog
from app.settings.list_editor import ItemCheck, ListEditor
from server.auth import parse_key_entry

log = logging.getLogger("chatbot.ui")


def describe_entry(entry: str) -> str:
    """'alice (admin)' for a stored entry; anything else as it is, for its error to explain."""
    try:
        parsed = parse_key_entry(entry)
    except ValueError:
        return entry
    return f"{parsed.name} ({parsed.role})"


class KeysEditor(ListEditor):
    """The list of stored key entries. Revoking is removing an entry; a new key comes from the
    Create key dialog, which adds its entry here as an unsaved edit."""

    def __init__(self, item_check: ItemCheck | None = None, parent: QWidget | None = None) -> None:
        super().__init__(item_check, parent, display=describe_entry)
        self.dialog: CreateKeyDialog | None = None
        self.create_button = QPushButton("Create key…")
        self.create_button.setToolTip("Make a new key, shown once; the list keeps only its hash")
        self.buttons.insertWidget(0, self.create_button)
        self.add_button.setToolTip(
            "Add a stored entry (name:role:sha256:…) copied from another config file"
        )
        self.remove_button.setText("Revoke")
        self.remove_button.setToolTip(
            "Remove the selected keys: once saved, clients using them are refused (401)"
        )
        self.create_button.clicked.connect(self.open_create_dialog)

    def names(self) -> list[str]:
        """The names of the entries that parse."""
        out = []
        for entry in self.raw():
            try:
                out.append(parse_key_entry(entry).name)
            except ValueError:
                continue
        return out

    def open_create_dialog(self) -> CreateKeyDialog:
        if self.dialog is not None:
            self.dialog.raise_()
            self.dialog.activateWindow()
            return self.dialog
        dialog = CreateKeyDialog(self.names(), self)
        dialog.created.connect(self.append_entry)
        dialog.finished.connect(self._on_dialog_finished)
        self.dialog = dialog
        # open(), never exec(): a nested loop would stall the server sharing this event loop.
        dialog.open()
        return dialog

    def close_dialog(self) -> None:
        """Dismiss the Create key dialog, if open (the key it shows goes with it)."""
        if self.dialog is not None:
            self.dialog.reject()

    def _on_dialog_finished(self) -> None:
        dialog, self.dialog = self.dialog, None
        if dialog is not None:
            dialog.deleteLater()
