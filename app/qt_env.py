"""Process environment for creating the QApplication: what Qt's start-up must not pay for."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

# GDK reads this once, in gdk_init; "disable" skips its OpenGL probe (gdkgl.c, GTK 3.24).
GDK_GL = "GDK_GL"


@contextlib.contextmanager
def gdk_without_gl() -> Iterator[None]:
    """Keep GTK from loading OpenGL while the QApplication is created.

    With Qt's GTK platform theme (`QT_QPA_PLATFORMTHEME=gtk3`, what GNOME and dark-GTK setups
    use), gtk_init opens the X display, and GDK probes GLX for its default visuals unless some
    earlier GTK program left them on the root window (the `GDK_VISUALS` property). That probe
    loads the Mesa driver, and with it libLLVM: +52 MB of RSS that stays for the process's life
    (bench/README.md, "Desktop memory"). The theme only needs GTK's colours, fonts and dialogs,
    none of which use GL, and Qt itself draws without it.

    The variable is set only for the duration (children the app starts later, such as the
    editor Open Config launches, get the user's environment), and a value the user set wins.
    """
    if GDK_GL in os.environ:
        yield
        return
    os.environ[GDK_GL] = "disable"
    try:
        yield
    finally:
        os.environ.pop(GDK_GL, None)
