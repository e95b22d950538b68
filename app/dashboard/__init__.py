"""The dashboard window and its widgets; `DashboardWindow` is the public entry point."""

from app.dashboard.window import DashboardWindow

__all__ = ["DashboardWindow"]
