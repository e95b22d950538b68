"""The settings editor: a page built from the config registry; `SettingsPage` is the entry."""

from app.settings.page import SettingsPage

__all__ = ["SettingsPage"]
