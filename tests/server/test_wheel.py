"""The wheel and the sdist are whole: an installed wheel finds its icons, desktop entry template
and default config in site-packages, and a wheel built from the sdist carries the same files.

Marked `wheel`: it builds with `build` in a throwaway virtual environment and installs the
wheel's dependencies, so it needs the package index (~20 s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from server.config import default_toml
from tests.conftest import ROOT

pytestmark = pytest.mark.wheel

APP_ID = "chatbot-companion"
HICOLOR_SIZES = [16, 24, 32, 48, 64, 128, 256, 512]
TRAY_STATES = ["serving", "starting", "ollama_down", "failed", "stopped"]
# Not part of a checkout a build should see: what .gitignore lists, and the repository itself.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".env", "results"
)


def _bin(venv: Path, name: str) -> Path:
    return venv / ("Scripts" if sys.platform == "win32" else "bin") / name


def _run(*args: str | Path, cwd: Path) -> str:
    # pip (also inside build's isolated environments) caches under the test's tmp directory.
    env = {**os.environ, "PIP_CACHE_DIR": str(cwd / "pip-cache")}
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, Path]:
    """A wheel built from the checkout, and the sdist with the wheel built from it."""
    tmp = tmp_path_factory.mktemp("wheel")
    # A copy, so the build's build/ and *.egg-info land there and not in the checkout.
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE)
    tools = tmp / "tools"
    _run(sys.executable, "-m", "venv", tools, cwd=tmp)
    _run(_bin(tools, "python"), "-m", "pip", "install", "--quiet", "build", cwd=tmp)
    # With no option, build makes the sdist and then the wheel from the unpacked sdist.
    _run(_bin(tools, "python"), "-m", "build", "--outdir", tmp / "from-sdist", src, cwd=tmp)
    _run(_bin(tools, "python"), "-m", "build", "--wheel", "--outdir", tmp / "direct", src, cwd=tmp)
    (wheel,) = (tmp / "direct").glob("*.whl")
    (sdist,) = (tmp / "from-sdist").glob("*.tar.gz")
    (sdist_wheel,) = (tmp / "from-sdist").glob("*.whl")
    return {"tools": tools, "wheel": wheel, "sdist": sdist, "sdist_wheel": sdist_wheel}


# Run by the installed package's interpreter: what the lookup finds, and the Start at Login entry.
PROBE = """
import json, sys, sysconfig
from app import autostart, resources
from server.config import default_toml

tray = {state: resources.find(f"resources/tray/{state}.png") for state in sys.argv[1:]}
print(json.dumps({
    "purelib": sysconfig.get_paths()["purelib"],
    "roots": [str(root) for root in resources.roots()],
    "hicolor": {side: str(png) for side, png in resources.hicolor_icons().items()},
    "tray": {state: str(png) if png else None for state, png in tray.items()},
    "template": str(resources.find(resources.DESKTOP_TEMPLATE)),
    "config": str(resources.default_config_path()),
    "config_text": resources.default_config_text(),
    "registry_text": default_toml(),
    "entry": autostart.desktop_entry(["/opt/chatbot-companion/chatbot-companion"]),
}))
"""


@pytest.fixture(scope="module")
def installed(builds, tmp_path_factory) -> dict:
    """What the lookup reports in a fresh venv holding the wheel and its dependencies (not the
    gui extra: the lookup needs no Qt), run outside the checkout."""
    tmp = tmp_path_factory.mktemp("installed")
    venv = tmp / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp)
    pip = [_bin(builds["tools"], "python"), "-m", "pip", "--python", _bin(venv, "python")]
    _run(*pip, "install", "--quiet", builds["wheel"], cwd=tmp)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "XDG_"))}
    # No icon theme has the app's icon: the entry must then name the shipped PNG.
    env.update(XDG_DATA_HOME=str(tmp / "share"), XDG_DATA_DIRS=str(tmp / "system-share"))
    result = subprocess.run(
        [_bin(venv, "python"), "-I", "-c", PROBE, *TRAY_STATES],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _in_site_packages(installed: dict, path: str) -> bool:
    site = Path(installed["purelib"]).resolve()
    resolved = Path(path).resolve()
    return resolved.is_relative_to(site) and not resolved.is_relative_to(ROOT)


def test_installed_wheel_looks_only_in_its_own_package_data(installed):
    assert [Path(root).relative_to(installed["purelib"]) for root in installed["roots"]] == [
        Path("app", "shipped")
    ]


def test_installed_wheel_finds_the_icons_in_site_packages(installed):
    hicolor = {int(side): path for side, path in installed["hicolor"].items()}
    assert sorted(hicolor) == HICOLOR_SIZES
    for side, path in hicolor.items():
        assert _in_site_packages(installed, path), path
        shipped = ROOT / "resources" / "icons" / "hicolor" / f"{side}x{side}" / "apps"
        assert Path(path).read_bytes() == (shipped / f"{APP_ID}.png").read_bytes()
    assert sorted(installed["tray"]) == sorted(TRAY_STATES)
    for state, path in installed["tray"].items():
        assert path and _in_site_packages(installed, path), (state, path)
        shipped = ROOT / "resources" / "tray" / f"{state}.png"
        assert Path(path).read_bytes() == shipped.read_bytes()


def test_installed_wheel_finds_the_desktop_template_and_the_default_config(installed):
    template = installed["template"]
    assert _in_site_packages(installed, template)
    desktop_in = ROOT / "resources" / f"{APP_ID}.desktop.in"
    assert Path(template).read_text(encoding="utf-8") == desktop_in.read_text(encoding="utf-8")
    assert _in_site_packages(installed, installed["config"])
    assert installed["config_text"] == installed["registry_text"] == default_toml()
    assert Path(installed["config"]).read_text(encoding="utf-8") == default_toml()


def test_start_at_login_from_a_wheel_names_an_icon_that_exists(installed):
    icon = next(line for line in installed["entry"].splitlines() if line.startswith("Icon="))[5:]
    assert Path(icon).is_absolute() and Path(icon).is_file(), icon
    assert _in_site_packages(installed, icon)


def _names(archive: Path) -> set[str]:
    return set(zipfile.ZipFile(archive).namelist())


def test_wheel_built_from_the_sdist_carries_the_same_files(builds):
    from_sdist, direct = _names(builds["sdist_wheel"]), _names(builds["wheel"])
    assert from_sdist == direct
    shipped = {name for name in direct if name.startswith("app/shipped/")}
    assert "app/shipped/config.toml" in shipped
    assert "app/shipped/resources/chatbot-companion.desktop.in" in shipped
    assert {f"app/shipped/resources/tray/{state}.png" for state in TRAY_STATES} <= shipped
    assert {
        f"app/shipped/resources/icons/hicolor/{n}x{n}/apps/{APP_ID}.png" for n in HICOLOR_SIZES
    } <= shipped


def test_the_wheel_carries_the_web_dashboard(builds):
    static = ROOT / "server" / "web" / "static"
    files = {f"server/web/static/{p.name}" for p in static.iterdir()}
    assert files and files <= _names(builds["wheel"])
