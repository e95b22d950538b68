"""Render resources/icon.svg into the shipped icon set: hicolor PNGs, .ico, .icns, tray states."""

from __future__ import annotations

import argparse
import os
import struct
import sys
from pathlib import Path

# Before Qt loads: rendering needs no display, and a fixed platform keeps the output identical.
os.environ["QT_QPA_PLATFORM"] = "offscreen"
for var in ("QT_SCALE_FACTOR", "QT_SCREEN_SCALE_FACTORS", "QT_ENABLE_HIGHDPI_SCALING"):
    os.environ.pop(var, None)

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QRectF, Qt, qVersion  # noqa: E402
from PySide6.QtGui import QGuiApplication, QImage, QImageWriter, QPainter  # noqa: E402
from PySide6.QtSvg import QSvgRenderer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # app.icons, when run as scripts/make_icons.py

APP_ID = "chatbot-companion"
SOURCE = ROOT / "resources" / "icon.svg"
HICOLOR_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)  # 256 is the largest an ICO entry can describe
# PNG-bearing ICNS types and their pixel sizes: ic07..ic10 are 128..512 pt (ic10 = 512 pt @2x),
# ic11/ic12 are 16 and 32 pt @2x, so Finder's small views are not scaled down from 128 px.
ICNS_TYPES = (
    (b"ic11", 32),
    (b"ic12", 64),
    (b"ic07", 128),
    (b"ic08", 256),
    (b"ic09", 512),
    (b"ic10", 1024),
)
TRAY_STATES = ("serving", "starting", "ollama_down", "failed", "stopped")
TRAY_SIZE = 64
# Stamped into every PNG to say which Qt drew it. The test compares the committed files with a
# fresh render pixel by pixel, with a small tolerance: this text and the encoding do not count.
SOFTWARE = f"scripts/make_icons.py, Qt {qVersion()}"


def hicolor_path(size: int) -> Path:
    return Path("icons") / "hicolor" / f"{size}x{size}" / "apps" / f"{APP_ID}.png"


def render_svg(renderer: QSvgRenderer, size: int) -> QImage:
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
    renderer.render(painter, QRectF(0, 0, size, size))
    painter.end()
    return image


def png_bytes(image: QImage) -> bytes:
    """The image as a maximally compressed PNG carrying only the Software text."""
    image = image.convertToFormat(QImage.Format.Format_ARGB32)
    image.setText("Software", SOFTWARE)
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    writer = QImageWriter(buffer, b"png")
    # Qt 6 takes 0..100 for PNG (100 = zlib level 9): the files are committed, smaller is better.
    writer.setCompression(100)
    if not writer.write(image):
        raise RuntimeError(f"PNG encoding failed: {writer.errorString()}")
    buffer.close()
    return bytes(data.data())


def ico_bytes(pngs: dict[int, bytes]) -> bytes:
    """A Windows .ico holding PNG entries (Vista and later read them at every size).

    Written by hand because Qt's ico plugin writes a single image per file.
    """
    sizes = sorted(pngs)
    header = struct.pack("<HHH", 0, 1, len(sizes))  # reserved, type 1 = icon, count
    offset = len(header) + 16 * len(sizes)
    entries, blobs = [], []
    for size in sizes:
        blob = pngs[size]
        dim = 0 if size >= 256 else size  # 0 stands for 256
        # width, height, palette colours, reserved, colour planes, bits per pixel, length, offset
        entries.append(struct.pack("<BBBBHHII", dim, dim, 0, 0, 1, 32, len(blob), offset))
        blobs.append(blob)
        offset += len(blob)
    return header + b"".join(entries) + b"".join(blobs)


def icns_bytes(pngs: dict[bytes, bytes]) -> bytes:
    """A macOS .icns of PNG entries; by hand because Qt's icns plugin writes one image per file."""
    body = b"".join(kind + struct.pack(">I", 8 + len(blob)) + blob for kind, blob in pngs.items())
    return b"icns" + struct.pack(">I", 8 + len(body)) + body


def build(out: Path) -> list[Path]:
    """Write every icon file under `out`; returns the paths written, relative to `out`."""
    _app = QGuiApplication.instance() or QGuiApplication([])  # QPixmap (the tray icons) needs it
    renderer = QSvgRenderer(str(SOURCE))
    if not renderer.isValid():
        raise SystemExit(f"cannot render {SOURCE}")
    sizes = sorted({*HICOLOR_SIZES, *ICO_SIZES, *(size for _, size in ICNS_TYPES)})
    pngs = {size: png_bytes(render_svg(renderer, size)) for size in sizes}

    files: dict[Path, bytes] = {hicolor_path(size): pngs[size] for size in HICOLOR_SIZES}
    files[Path(f"{APP_ID}.ico")] = ico_bytes({size: pngs[size] for size in ICO_SIZES})
    files[Path(f"{APP_ID}.icns")] = icns_bytes({kind: pngs[size] for kind, size in ICNS_TYPES})

    from app.icons import state_icon

    for state in TRAY_STATES:
        image = state_icon(state, TRAY_SIZE).pixmap(TRAY_SIZE, TRAY_SIZE).toImage()
        if image.width() != TRAY_SIZE or image.height() != TRAY_SIZE:
            raise SystemExit(f"tray icon {state}: {image.width()}x{image.height()} px")
        files[Path("tray") / f"{state}.png"] = png_bytes(image)

    for rel, data in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return list(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "resources",
        help="output directory (default: resources/ in the repository)",
    )
    args = parser.parse_args(argv)
    for rel in build(args.out):
        path = args.out / rel
        print(f"{path.stat().st_size:>8}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
