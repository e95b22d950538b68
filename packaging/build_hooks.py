"""Wheel build step: ship resources/ and config.toml inside the app package.

pyproject.toml names this module's BuildPy as setuptools' build_py. The files stay at the top of
the repository, where the scripts, the PyInstaller spec and the tests use them; a wheel gets a
copy under app/shipped/, where app/resources.py looks after the bundle and before the checkout.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = Path("app") / "shipped"
FILES = ("config.toml",)
TREES = ("resources",)


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        # An editable install reads the checkout, which app/resources.py finds on its own.
        if getattr(self, "editable_mode", False):
            return
        dest = Path(self.build_lib) / SHIPPED
        if dest.exists():
            shutil.rmtree(dest)  # nothing left over from an earlier build
        dest.mkdir(parents=True)
        for name in FILES:
            shutil.copy2(ROOT / name, dest / name)
        for name in TREES:
            shutil.copytree(ROOT / name, dest / name)
