"""The shipped packaging files: icons, the desktop entry and its installer, the systemd unit."""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from app import autostart
from server.lifecycle import ServerHost

ROOT = Path(__file__).resolve().parents[2]
RESOURCES = ROOT / "resources"
MAKE_ICONS = ROOT / "scripts" / "make_icons.py"
INSTALL_DESKTOP = ROOT / "scripts" / "install_desktop.sh"
UNIT = ROOT / "packaging" / "systemd" / "chatbot-backend.service"
APP_ID = "chatbot-companion"
HICOLOR_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)
ICNS_SIZES = {b"ic07": 128, b"ic08": 256, b"ic09": 512, b"ic10": 1024, b"ic11": 32, b"ic12": 64}
TRAY_STATES = ("serving", "starting", "ollama_down", "failed", "stopped")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux packaging")


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data.startswith(PNG_SIGNATURE), "not a PNG"
    chunks, pos = [], len(PNG_SIGNATURE)
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        chunks.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length  # length, type, data, CRC
    assert pos == len(data) and chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    return chunks


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk; also insists on 8-bit RGBA."""
    ihdr = png_chunks(data)[0][1]
    width, height, depth, colour = struct.unpack_from(">IIBB", ihdr)
    assert (depth, colour) == (8, 6), "expected 8-bit RGBA"
    return width, height


def png_software(data: bytes) -> str | None:
    for kind, body in png_chunks(data):
        if kind == b"tEXt" and body.startswith(b"Software\0"):
            return body.split(b"\0", 1)[1].decode("latin-1")
    return None


def hicolor_png(base: Path, size: int) -> Path:
    return base / "icons" / "hicolor" / f"{size}x{size}" / "apps" / f"{APP_ID}.png"


# --- the committed icons ---------------------------------------------------------------------


@pytest.mark.parametrize("size", HICOLOR_SIZES)
def test_hicolor_icon_exists_at_its_size(size):
    assert png_size(hicolor_png(RESOURCES, size).read_bytes()) == (size, size)


@pytest.mark.parametrize("state", TRAY_STATES)
def test_tray_state_icons_are_64_px(state):
    assert png_size((RESOURCES / "tray" / f"{state}.png").read_bytes()) == (64, 64)


def ico_entries(data: bytes) -> list[tuple[int, bytes]]:
    """(side, PNG) for each image of an .ico made of PNG entries, checking the container."""
    reserved, kind, count = struct.unpack_from("<HHH", data)
    assert (reserved, kind) == (0, 1), "not an icon file"
    entries, spans, end_of_directory = [], [], 6 + 16 * count
    for i in range(count):
        w, h, colours, res, planes, bpp, length, offset = struct.unpack_from(
            "<BBBBHHII", data, 6 + 16 * i
        )
        w, h = w or 256, h or 256  # 0 stands for 256
        assert (colours, res, planes, bpp) == (0, 0, 1, 32)
        assert offset >= end_of_directory and offset + length <= len(data)
        png = data[offset : offset + length]
        assert png_size(png) == (w, h)
        entries.append((w, png))
        spans.append((offset, offset + length))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), "entries overlap"
    return entries


def icns_entries(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, PNG) for each element of an .icns, checking the container."""
    magic, total = struct.unpack_from(">4sI", data)
    assert magic == b"icns" and total == len(data)
    entries, pos = [], 8
    while pos < len(data):
        kind, length = struct.unpack_from(">4sI", data, pos)
        assert length > 8 and pos + length <= len(data)
        entries.append((kind, data[pos + 8 : pos + length]))
        pos += length
    assert pos == len(data)
    return entries


def test_ico_is_a_valid_container_with_every_size():
    entries = ico_entries((RESOURCES / f"{APP_ID}.ico").read_bytes())
    assert sorted(side for side, _ in entries) == list(ICO_SIZES)


def test_icns_is_a_valid_container_with_the_png_sizes():
    entries = icns_entries((RESOURCES / f"{APP_ID}.icns").read_bytes())
    found = {kind: png_size(png) for kind, png in entries}
    assert {b"ic07", b"ic08", b"ic09", b"ic10"} <= found.keys()
    assert found == {kind: (side, side) for kind, side in ICNS_SIZES.items()}


# --- scripts/make_icons.py -------------------------------------------------------------------


def _qt_env() -> dict[str, str]:
    return {**os.environ, "QT_QPA_PLATFORM": "offscreen"}


@pytest.fixture(scope="module")
def qt_python() -> str:
    """The interpreter, once it is known to render with Qt (PySide6 and its system libraries)."""
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "from PySide6.QtGui import QGuiApplication; import PySide6.QtSvg; QGuiApplication([])",
        ],
        env=_qt_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"PySide6 cannot render here ({reason}); install the gui extra")
    return sys.executable


def _make_icons(python: str, out: Path) -> dict[str, bytes]:
    subprocess.run(
        [python, str(MAKE_ICONS), "--out", str(out)],
        env=_qt_env(),
        check=True,
        capture_output=True,
        timeout=120,
    )
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def fresh_icons(qt_python, tmp_path_factory) -> dict[str, bytes]:
    return _make_icons(qt_python, tmp_path_factory.mktemp("icons"))


def test_make_icons_is_deterministic(qt_python, fresh_icons, tmp_path):
    again = _make_icons(qt_python, tmp_path)
    assert again.keys() == fresh_icons.keys()
    differing = [name for name in again if again[name] != fresh_icons[name]]
    assert not differing, f"two runs differ in {differing}"


def test_make_icons_writes_every_shipped_file(fresh_icons):
    expected = {str(hicolor_png(Path(), size)) for size in HICOLOR_SIZES}
    expected |= {f"{APP_ID}.ico", f"{APP_ID}.icns"}
    expected |= {f"tray/{state}.png" for state in TRAY_STATES}
    assert set(fresh_icons) == expected
    assert all((RESOURCES / name).is_file() for name in expected), "missing from resources/"


# The same Qt on another CPU antialiases a few edge pixels differently (seen: 1-26 pixels an
# image, each channel off by 1), so the committed icons are compared with a fresh render pixel by
# pixel: every channel within MAX_CHANNEL_DELTA, in at most allowed_pixels() pixels. A new colour
# or a moved edge changes channels by far more than that (the tests below show it).
MAX_CHANNEL_DELTA = 2


def allowed_pixels(total: int) -> int:
    return max(32, total // 50)


# Decodes each pair of PNGs with Qt and reports how their pixels differ. Premultiplied, so a
# colour at 1 % opacity weighs 1 %: what the eye sees once the icon is drawn.
PIXEL_DIFF = """
import json, sys
from PySide6.QtGui import QImage

def load(path):
    image = QImage(path)
    if image.isNull():
        raise SystemExit(f"cannot decode {path}")
    image = image.convertToFormat(QImage.Format.Format_RGBA8888_Premultiplied)
    return image.width(), image.height(), bytes(image.constBits())

report = {}
with open(sys.argv[1]) as f:
    pairs = json.load(f)
for name, a, b in pairs:
    (wa, ha, pa), (wb, hb, pb) = load(a), load(b)
    if (wa, ha) != (wb, hb):
        report[name] = {"sizes": [[wa, ha], [wb, hb]]}
        continue
    differing = worst = 0
    stride = 4 * wa
    for top in range(0, len(pa), stride):
        ra, rb = pa[top : top + stride], pb[top : top + stride]
        if ra == rb:
            continue
        for i in range(0, stride, 4):
            delta = max(abs(x - y) for x, y in zip(ra[i : i + 4], rb[i : i + 4]))
            if delta:
                differing += 1
                worst = max(worst, delta)
    report[name] = {"pixels": wa * ha, "differing": differing, "max_delta": worst}
print(json.dumps(report))
"""


def _images(name: str, data: bytes) -> dict[str, bytes]:
    """The PNG images a shipped icon file holds, by a name saying where each sits."""
    if name.endswith(".ico"):
        return {f"{name}[{side}]": png for side, png in ico_entries(data)}
    if name.endswith(".icns"):
        return {f"{name}[{kind.decode()}]": png for kind, png in icns_entries(data)}
    return {name: data}


def pixel_report(python: str, pairs: dict[str, tuple[bytes, bytes]], work: Path) -> dict:
    """For each name, how the two PNGs differ: pixels, differing pixels, largest channel delta
    (or the two sizes, when they differ)."""
    work.mkdir(parents=True, exist_ok=True)
    manifest = []
    for i, (name, (a, b)) in enumerate(pairs.items()):
        (work / f"{i}a.png").write_bytes(a)
        (work / f"{i}b.png").write_bytes(b)
        manifest.append([name, str(work / f"{i}a.png"), str(work / f"{i}b.png")])
    (work / "pairs.json").write_text(json.dumps(manifest))
    result = subprocess.run(
        [python, "-c", PIXEL_DIFF, str(work / "pairs.json")],
        env=_qt_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def icon_differences(
    python: str, committed: Path, fresh: dict[str, bytes], work: Path
) -> list[str]:
    """The icons under `committed` that differ from the fresh render by more than another
    machine's antialiasing would; [] when all match."""
    problems, pairs = [], {}
    for name, data in fresh.items():
        path = committed / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        old, new = _images(name, path.read_bytes()), _images(name, data)
        if old.keys() != new.keys():
            problems.append(f"{name}: holds {sorted(old)}, a fresh render {sorted(new)}")
            continue
        pairs.update({image: (old[image], new[image]) for image in old if old[image] != new[image]})
    for image, diff in pixel_report(python, pairs, work).items() if pairs else ():
        if "sizes" in diff:
            problems.append(f"{image}: {diff['sizes'][0]} px, a fresh render {diff['sizes'][1]}")
        elif diff["max_delta"] > MAX_CHANNEL_DELTA or diff["differing"] > allowed_pixels(
            diff["pixels"]
        ):
            problems.append(
                f"{image}: {diff['differing']} of {diff['pixels']} pixels differ, "
                f"by up to {diff['max_delta']}"
            )
    return problems


def test_committed_icons_match_the_svg(qt_python, fresh_icons, tmp_path):
    """resources/ holds what make_icons.py renders now (regenerate after editing icon.svg)."""
    stale = icon_differences(qt_python, RESOURCES, fresh_icons, tmp_path)
    assert not stale, f"run .venv/bin/python scripts/make_icons.py: {stale}"


# Rewrites PNGs in place as another encoder would: no compression, another Software text. The
# edit first: reencode, none; nudge, one pixel's green channel by 1; recolour, red and blue
# swapped; shift, the drawing one pixel to the right.
EDIT_PNG = """
import sys
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QImage, QImageWriter, QPainter

edit, paths = sys.argv[1], sys.argv[2:]
for path in paths:
    image = QImage(path).convertToFormat(QImage.Format.Format_ARGB32)
    if edit == "nudge":
        x, y = image.width() // 2, image.height() // 2
        colour = image.pixelColor(x, y)
        assert colour.alpha() == 255, "nudge an opaque pixel"
        colour.setGreen(colour.green() - 1 if colour.green() else 1)
        image.setPixelColor(x, y, colour)
    elif edit == "recolour":
        image = image.rgbSwapped()
    elif edit == "shift":
        moved = QImage(image.size(), image.format())
        moved.fill(Qt.GlobalColor.transparent)
        painter = QPainter(moved)
        painter.drawImage(QPoint(1, 0), image)
        painter.end()
        image = moved
    image.setText("Software", "another encoder")
    writer = QImageWriter(path, b"png")
    writer.setCompression(0)
    if not writer.write(image):
        raise SystemExit(f"{path}: {writer.errorString()}")
"""


def _edit_pngs(python: str, edit: str, paths: list[Path]) -> None:
    subprocess.run(
        [python, "-c", EDIT_PNG, edit, *map(str, paths)],
        env=_qt_env(),
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_icon_comparison_passes_reencoded_icons_and_a_one_step_change(
    qt_python, fresh_icons, tmp_path
):
    copy = tmp_path / "resources"
    shutil.copytree(RESOURCES, copy)
    pngs = sorted(copy.rglob("*.png"))
    _edit_pngs(qt_python, "reencode", pngs)
    nudged = copy / "tray" / "serving.png"
    _edit_pngs(qt_python, "nudge", [nudged])
    for png in pngs:
        original = (RESOURCES / png.relative_to(copy)).read_bytes()
        assert png.read_bytes() != original
        assert png_software(png.read_bytes()) != png_software(original)
    pair = {"serving": (nudged.read_bytes(), (RESOURCES / "tray" / "serving.png").read_bytes())}
    assert pixel_report(qt_python, pair, tmp_path / "one")["serving"] == {
        "pixels": 64 * 64,
        "differing": 1,
        "max_delta": 1,
    }
    assert icon_differences(qt_python, copy, fresh_icons, tmp_path / "all") == []


@pytest.mark.parametrize(
    ("edit", "icon"),
    [
        ("recolour", "tray/serving.png"),
        ("recolour", str(hicolor_png(Path(), 16))),
        ("shift", "tray/failed.png"),
        ("shift", str(hicolor_png(Path(), 512))),
    ],
)
def test_icon_comparison_catches_a_new_colour_or_shape(
    qt_python, fresh_icons, tmp_path, edit, icon
):
    copy = tmp_path / "resources"
    shutil.copytree(RESOURCES, copy)
    _edit_pngs(qt_python, edit, [copy / icon])
    problems = icon_differences(qt_python, copy, fresh_icons, tmp_path / "diff")
    assert len(problems) == 1 and problems[0].startswith(f"{icon}: "), problems


def test_qt_reads_every_image_in_the_ico_and_icns(qt_python):
    script = (
        "import sys\n"
        "from PySide6.QtGui import QGuiApplication, QImageReader\n"
        "app = QGuiApplication([])\n"
        "for path in sys.argv[1:]:\n"
        "    r = QImageReader(path)\n"
        "    sizes = []\n"
        "    for i in range(r.imageCount()):\n"
        "        r.jumpToImage(i)\n"
        "        sizes.append(r.read().width())\n"
        "    print(' '.join(map(str, sorted(sizes))))\n"
    )
    out = subprocess.run(
        [
            qt_python,
            "-c",
            script,
            str(RESOURCES / f"{APP_ID}.ico"),
            str(RESOURCES / f"{APP_ID}.icns"),
        ],
        env=_qt_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    assert out[0].split() == [str(s) for s in ICO_SIZES]
    assert out[1].split() == [str(s) for s in sorted(ICNS_SIZES.values())]


# --- the desktop entry -----------------------------------------------------------------------


@pytest.fixture
def icon_theme(tmp_path, monkeypatch) -> Path:
    """This test's own XDG data directories, with no icon theme holding the app's icon."""
    data = tmp_path / "share"
    monkeypatch.setenv("XDG_DATA_HOME", str(data))
    monkeypatch.setenv("XDG_DATA_DIRS", str(tmp_path / "system-share"))
    return data


def test_autostart_entry_is_the_shipped_template(icon_theme):
    # Where the icon theme has the app's icon (as scripts/install_desktop.sh installs it).
    png = hicolor_png(icon_theme, 48)
    png.parent.mkdir(parents=True)
    png.write_bytes(hicolor_png(RESOURCES, 48).read_bytes())
    template = (RESOURCES / f"{APP_ID}.desktop.in").read_text(encoding="utf-8")
    entry = autostart.desktop_entry(["/opt/chatbot companion/chatbot-companion"])
    assert entry == template.replace("@EXEC@", '"/opt/chatbot companion/chatbot-companion"')
    for line in (
        "Type=Application",
        "Name=Chatbot Companion",
        f"Icon={APP_ID}",
        "Terminal=false",
        "Categories=Development;Utility;Network;",
        "StartupNotify=false",
        "X-GNOME-Autostart-enabled=true",
    ):
        assert line in entry.splitlines()


def test_autostart_entry_names_the_shipped_png_where_no_icon_theme_has_it(icon_theme, tmp_path):
    """A pip install or an uninstalled bundle: the Icon is a path to an existing PNG."""
    entry = autostart.desktop_entry(["/opt/chatbot-companion/chatbot-companion"])
    icon = next(line for line in entry.splitlines() if line.startswith("Icon="))[5:]
    assert Path(icon).is_absolute() and Path(icon).is_file(), icon
    assert Path(icon).read_bytes() == hicolor_png(RESOURCES, 256).read_bytes()
    template = (RESOURCES / f"{APP_ID}.desktop.in").read_text(encoding="utf-8")
    assert entry == template.replace("@EXEC@", "/opt/chatbot-companion/chatbot-companion").replace(
        f"Icon={APP_ID}\n", f"Icon={icon}\n"
    )
    if shutil.which("desktop-file-validate"):
        (tmp_path / f"{APP_ID}.desktop").write_text(entry, encoding="utf-8")
        result = subprocess.run(
            ["desktop-file-validate", str(tmp_path / f"{APP_ID}.desktop")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        problems = [line for line in result.stdout.splitlines() if ": hint: " not in line]
        assert result.returncode == 0 and not problems, result.stdout


def test_exec_field_quotes_as_the_desktop_entry_spec_says():
    assert autostart.exec_field(["/usr/bin/app", "--flag"]) == "/usr/bin/app --flag"
    # Reserved characters need double quotes; " ` $ \ inside them a backslash, and then every
    # backslash is doubled again by the string escape rules; % is doubled to stay literal.
    assert autostart.exec_field(["/a b/c", "it's", 'x"y', "$v", "a\\b", "50%", ""]) == (
        '"/a b/c" "it\'s" "x\\\\"y" "\\\\$v" "a\\\\\\\\b" 50%% ""'
    )


def _run_install(args: list[str], data: Path, tmp: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "CHATBOT_EXEC"}
    environ.update(
        XDG_DATA_HOME=str(data), XDG_CONFIG_HOME=str(tmp / "config"), HOME=str(tmp / "home"), **env
    )
    return subprocess.run(
        ["bash", str(INSTALL_DESKTOP), *args],
        env=environ,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def launcher(tmp_path) -> Path:
    # Characters the Exec quoting must survive, in the kind of place a bundle might be unpacked.
    path = tmp_path / 'my apps $HOME "x" 100%' / APP_ID
    path.parent.mkdir()
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


@linux_only
def test_install_desktop_installs_the_entry_and_icons_and_uninstalls_them(
    tmp_path, launcher, monkeypatch
):
    data = tmp_path / "data"
    result = _run_install([str(launcher)], data, tmp_path)
    assert result.returncode == 0, result.stderr
    entry = data / "applications" / f"{APP_ID}.desktop"
    text = entry.read_text(encoding="utf-8")
    # The same entry as Start at Login writes once the icons are installed, with Exec the given
    # launcher's absolute path.
    monkeypatch.setenv("XDG_DATA_HOME", str(data))
    assert text == autostart.desktop_entry([str(launcher)])
    exec_line = next(line for line in text.splitlines() if line.startswith("Exec="))
    assert exec_line == f"Exec={autostart.exec_field([str(launcher)])}"
    assert exec_line.startswith('Exec="/')
    for size in HICOLOR_SIZES:
        installed = hicolor_png(data, size)
        assert installed.read_bytes() == hicolor_png(RESOURCES, size).read_bytes()

    result = _run_install(["--uninstall"], data, tmp_path)
    assert result.returncode == 0, result.stderr
    assert not entry.exists()
    assert not list(data.rglob(f"{APP_ID}*")), "left behind by --uninstall"


@linux_only
def test_install_desktop_takes_the_launcher_from_the_environment_and_makes_it_absolute(tmp_path):
    launcher = tmp_path / "dist" / APP_ID / APP_ID
    launcher.parent.mkdir(parents=True)
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(0o755)
    data = tmp_path / "data"
    relative = str(launcher.relative_to(tmp_path))  # the script runs in tmp_path
    result = _run_install([], data, tmp_path, CHATBOT_EXEC=relative)
    assert result.returncode == 0, result.stderr
    text = (data / "applications" / f"{APP_ID}.desktop").read_text(encoding="utf-8")
    assert f"Exec={launcher}\n" in text


@linux_only
def test_install_desktop_refuses_a_missing_launcher(tmp_path):
    data = tmp_path / "data"
    result = _run_install([str(tmp_path / "nothing-here")], data, tmp_path)
    assert result.returncode == 1 and "no executable launcher" in result.stderr
    assert not (data / "applications" / f"{APP_ID}.desktop").exists()


@linux_only
@pytest.mark.skipif(not shutil.which("desktop-file-validate"), reason="no desktop-file-validate")
def test_installed_entry_passes_desktop_file_validate(tmp_path, launcher):
    data = tmp_path / "data"
    assert _run_install([str(launcher)], data, tmp_path).returncode == 0
    entry = data / "applications" / f"{APP_ID}.desktop"
    result = subprocess.run(
        ["desktop-file-validate", str(entry)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Hints are advice (three main categories, as asked for); warnings and errors are not.
    problems = [line for line in result.stdout.splitlines() if ": hint: " not in line]
    assert not problems


# --- the bundle's licences (packaging/bundle_licenses.py; the bundle itself: test_bundle.py) ----


@pytest.fixture
def bundle_licenses():
    """packaging/bundle_licenses.py, loaded as the spec loads it."""
    spec = importlib.util.spec_from_file_location(
        "_test_bundle_licenses", ROOT / "packaging" / "bundle_licenses.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def _loaded_libc() -> Path:
    """The C library this process runs on: a library the system installed."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split()[-1]
        if re.search(r"/libc\.so\.6$", path):
            return Path(path)
    pytest.skip("no libc.so.6 in /proc/self/maps")


@linux_only
def test_bundle_licences_say_so_where_the_build_machine_has_no_dpkg(
    bundle_licenses, tmp_path, monkeypatch
):
    libc = _loaded_libc()
    monkeypatch.setenv("PATH", str(tmp_path))  # no dpkg-query to be found
    entries = bundle_licenses.collect(
        [], [("libc.so.6", str(libc), "BINARY")], [], root=ROOT, workdir=tmp_path / "work"
    )
    dests = {dest for dest, _src, _kind in entries}
    assert "licenses/README.txt" in dests and "licenses/chatbot-companion/LICENSE" in dests
    assert not any(dest.startswith("licenses/debian/") for dest in dests)
    index = (tmp_path / "work" / "licenses-README.txt").read_text(encoding="utf-8")
    block = index.split("== Libraries copied from the build machine's operating system\n")[1]
    assert block.startswith("licence: NOT COLLECTED: the build machine has no dpkg")
    assert "shared libraries:\n  libc.so.6\n" in block
    assert f"note: libc.so.6 (from {libc})" in block


@linux_only
@pytest.mark.skipif(not shutil.which("dpkg-query"), reason="not a Debian-like system")
def test_bundle_licences_find_a_library_by_either_name_on_a_merged_usr_system(
    bundle_licenses, tmp_path
):
    libc = _loaded_libc()
    names = [libc, Path(os.path.realpath(libc))]
    # Where /lib is a link to /usr/lib, dpkg knows only one of the two names.
    other = str(libc)[4:] if str(libc).startswith("/usr/") else f"/usr{libc}"
    if Path(other).exists():
        names.append(Path(other))
    owners = bundle_licenses.debian_packages(names)
    assert {owners.get(name) for name in names} == {"libc6"}, owners
    entries = bundle_licenses.collect(
        [], [("libc.so.6", str(names[-1]), "BINARY")], [], root=ROOT, workdir=tmp_path
    )
    assert ("licenses/debian/libc6/copyright", "/usr/share/doc/libc6/copyright", "DATA") in entries


# --- the systemd unit ------------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    """Key → every value it is given (systemd allows repeats, e.g. SystemCallFilter)."""
    settings: dict[str, list[str]] = {}
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_runs_the_server_as_its_own_user_and_restarts_on_failure():
    s = unit_settings()
    assert s["User"] == ["chatbot-backend"] and s["Group"] == ["chatbot-backend"]
    assert "DynamicUser" not in s
    assert s["ExecStart"] == [
        "/opt/chatbot-companion/venv/bin/chatbot-backend --config /etc/chatbot-backend/config.toml"
    ]
    assert s["Restart"] == ["on-failure"] and s["RestartSec"]
    assert "PYTHONUNBUFFERED=1" in s["Environment"]
    assert s["KillSignal"] == ["SIGTERM"]
    # The drain on SIGTERM, then aiohttp's shutdown bounded by the same time, before SIGKILL.
    drain = inspect.signature(ServerHost).parameters["drain_seconds"].default
    stop = re.fullmatch(r"(\d+)s?", s["TimeoutStopSec"][0])
    assert stop and int(stop.group(1)) > 2 * drain


def test_unit_has_the_hardening_directives():
    s = unit_settings()
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
        "ReadOnlyPaths": "/etc/chatbot-backend",
    }
    assert {key: s.get(key, [None])[-1] for key in expected} == expected
    assert "@system-service" in s["SystemCallFilter"]


def _verify_root(tmp_path: Path, unit_text: str) -> Path:
    """A file system root where the unit's ExecStart exists, for `systemd-analyze --root`."""
    root = tmp_path / "root"
    exe = root / "opt" / "chatbot-companion" / "venv" / "bin" / "chatbot-backend"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    units = root / "usr" / "lib" / "systemd" / "system"
    host_units = next(
        (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
        None,
    )
    if host_units is not None:  # the targets the unit is ordered against, as the host has them
        shutil.copytree(host_units, units, symlinks=True)
    else:
        units.mkdir(parents=True)
        for target in ("sysinit", "basic", "shutdown", "multi-user", "network-online"):
            (units / f"{target}.target").write_text(f"[Unit]\nDescription={target}\n")
    dest = root / "etc" / "systemd" / "system" / UNIT.name
    dest.parent.mkdir(parents=True)
    dest.write_text(unit_text, encoding="utf-8")
    return root


def _verify(root: Path) -> list[str]:
    """Problems `systemd-analyze verify` reports about the unit. It exits 0 on unknown keys and
    bad values and only prints them, so its output counts as much as its exit code."""
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", UNIT.name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = (result.stdout + result.stderr).splitlines()
    problems = [line for line in lines if UNIT.name in line]
    if result.returncode != 0:
        problems.append(f"exit code {result.returncode}: {lines}")
    return problems


needs_systemd_analyze = pytest.mark.skipif(
    not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed"
)


@needs_systemd_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path):
    assert _verify(_verify_root(tmp_path, UNIT.read_text(encoding="utf-8"))) == []


@needs_systemd_analyze
def test_verify_as_run_here_catches_mistakes(tmp_path):
    """The check above is meaningful: a misspelt value and a missing binary both fail it."""
    text = UNIT.read_text(encoding="utf-8")
    bad_value = text.replace("ProtectSystem=strict", "ProtectSystem=stricter")
    assert any("stricter" in p for p in _verify(_verify_root(tmp_path / "a", bad_value)))
    root = _verify_root(tmp_path / "b", text)
    (root / "opt" / "chatbot-companion" / "venv" / "bin" / "chatbot-backend").unlink()
    assert any("not executable" in p for p in _verify(root))


@needs_systemd_analyze
def test_unit_security_exposure_stays_low(tmp_path):
    root = _verify_root(tmp_path, UNIT.read_text(encoding="utf-8"))
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", f"--root={root}", UNIT.name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    if match is None:
        pytest.skip(f"no offline security analysis here (systemd < 250?): {result.stderr[-200:]}")
    assert float(match.group(1)) <= 2.0, result.stdout


@linux_only
def test_server_runs_with_memory_deny_write_execute(tmp_path):
    """MemoryDenyWriteExecute=yes: the interpreter and the C extensions serve HTTP without
    writable+executable memory, under the kernel's PR_SET_MDWE (what newer systemd uses)."""
    script = (
        "import ctypes, os, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN\n"
        "    sys.exit(77)\n"
        "os.execv(sys.executable, [sys.executable, '-c', sys.argv[1]])\n"
    )
    serve = (
        "import asyncio, mmap, aiohttp, psutil\n"
        "from aiohttp import _http_parser, _http_writer, web\n"  # the C parser and writer
        "from server.config import load\n"
        "from server.gateway import Gateway\n"
        "from server.lifecycle import ServerHost\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "    raise SystemExit('W+X memory was allowed: the restriction is not in force')\n"
        "except PermissionError:\n"
        "    pass\n"
        "async def main():\n"
        "    config = load(None, env={'CHATBOT_OLLAMA_WARM_UP': 'false'})\n"
        "    host = ServerHost(Gateway(config), port_override=0)\n"
        "    await host.start()\n"
        "    try:\n"
        "        url = f'http://127.0.0.1:{host.port}'\n"
        "        async with aiohttp.ClientSession() as s, s.get(url + '/api/cache-stats') as r:\n"
        "            assert r.status == 200 and 'memory' in await r.json(), r.status\n"
        "    finally:\n"
        "        await host.stop()\n"
        "asyncio.run(main())\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, serve],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode == 77:
        pytest.skip("the kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
