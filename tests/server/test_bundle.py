"""Smoke test of the PyInstaller bundle: build it, run it headless and as the tray app, and check
the licences it carries.

Marked `bundle`; it runs with the server suite (CI included). Skipped, saying why, only where
PyInstaller is not installed (`pip install -e '.[package]'`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, wait_json

pytestmark = [
    pytest.mark.bundle,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    pytest.importorskip("PyInstaller", reason="PyInstaller is not installed (the package extra)")
    pytest.importorskip("PySide6", reason="the bundle is the desktop app: needs the gui extra")
    out = tmp_path_factory.mktemp("bundle")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--log-level",
            "ERROR",
            "--distpath",
            str(out / "dist"),
            "--workpath",
            str(out / "work"),
            str(ROOT / "packaging" / "chatbot-companion.spec"),
        ],
        check=True,
        cwd=ROOT,
        timeout=900,
    )
    exe = out / "dist" / "chatbot-companion" / "chatbot-companion"
    assert exe.is_file() and os.access(exe, os.X_OK)
    return exe


@pytest.fixture(scope="module")
def sim_url():
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.simulator",
            "--port",
            str(port),
            "--token-delay-ms",
            "0",
            "--first-token-delay-ms",
            "0",
        ],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_json(url + "/api/version", proc)
    yield url
    proc.terminate()
    proc.wait(10)


def chat(base: str) -> dict:
    body = json.dumps(
        {"messages": [{"role": "user", "content": "bundle"}], "stream": False}
    ).encode()
    req = urllib.request.Request(
        base + "/api/chat-optimized", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def run(exe: Path, args: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.Popen:
    # Its own runtime directory (0700, as the single-instance lock expects): a companion already
    # running for this user must not turn a launch into "raise the other one and exit".
    runtime = tempfile.mkdtemp(prefix="runtime-", dir=tmp_path)
    return subprocess.Popen(
        [str(exe), *args],
        cwd=tmp_path,
        env={**os.environ, "XDG_RUNTIME_DIR": runtime, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    return proc.returncode, err


def test_bundle_serves_headless_with_a_cached_round_trip(bundle, sim_url, tmp_path):
    port = free_port()
    proc = run(
        bundle,
        ["--headless", "--port", str(port)],
        {"CHATBOT_OLLAMA_API_URL": sim_url, "CHATBOT_OLLAMA_WARM_UP": "false"},
        tmp_path,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_json(base + "/health", proc)["status"] == "ok"
        first, second = chat(base), chat(base)
        assert first["cached"] is False and second["cached"] is True
        assert first["content"] == second["content"] and first["content"]
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert "Traceback" not in err


def test_bundle_runs_the_tray_app_and_quits_cleanly(bundle, sim_url, tmp_path):
    port = free_port()
    env = {
        "CHATBOT_OLLAMA_API_URL": sim_url,
        "CHATBOT_OLLAMA_WARM_UP": "false",
        "PORT": str(port),
        "QT_QPA_PLATFORM": "offscreen",
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
    }
    proc = run(bundle, [], env, tmp_path)
    try:
        assert wait_json(f"http://127.0.0.1:{port}/health", proc)["status"] == "ok"
        assert chat(f"http://127.0.0.1:{port}")["done"] is True
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert "Traceback" not in err
    # First run wrote the user's config from the bundled default.
    made = tmp_path / "xdg" / "chatbot-companion" / "config.toml"
    assert made.read_text() == (ROOT / "config.toml").read_text()


# --- the licences it carries -----------------------------------------------------------------

SHARED_LIBRARY = re.compile(r"\.so(\.\d+)*$")


def licence_index(internal: Path) -> list[dict]:
    """licenses/README.txt as components: title, licence, texts, libraries, notes."""
    components: list[dict] = []
    section = None
    for line in (internal / "licenses" / "README.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("== "):
            components.append({"title": line[3:], "texts": [], "libraries": [], "notes": []})
        elif not components:
            continue
        elif line.startswith("licence: "):
            components[-1]["licence"] = line[9:]
        elif line.startswith("note: "):
            components[-1]["notes"].append(line[6:])
        elif line in ("licence text:", "shared libraries:"):
            section = "texts" if line == "licence text:" else "libraries"
        elif line.startswith("  ") and section:
            components[-1][section].append(line[2:])
    return components


@pytest.fixture(scope="module")
def licences(bundle) -> tuple[Path, list[dict]]:
    internal = bundle.parent / "_internal"
    return internal, licence_index(internal)


def _library_owners(index: list[dict]) -> dict[str, dict]:
    owners: dict[str, dict] = {}
    for component in index:
        for lib in component["libraries"]:
            assert lib not in owners, f"{lib} listed twice"
            owners[lib] = component
    return owners


def test_bundle_carries_the_lgpl_for_qt_pyside6_and_shiboken6(licences):
    internal, index = licences
    (qt,) = [c for c in index if c["title"].startswith("Qt 6 and Qt for Python")]
    assert qt["licence"].startswith("LGPL-3.0-only")
    for prefix in (
        "PySide6/Qt/lib/libQt6Core.so",
        "PySide6/Qt/lib/libQt6Gui.so",
        "PySide6/Qt/plugins/platforms/libqxcb.so",
        "PySide6/libpyside6.abi3.so",
        "shiboken6/libshiboken6.abi3.so",
        "PySide6/QtCore.abi3.so",
    ):
        assert any(lib.startswith(prefix) for lib in qt["libraries"]), prefix
    texts = [(internal / "licenses" / t).read_text(encoding="utf-8") for t in qt["texts"]]
    # The LGPL-3.0 is a set of permissions added to the GPL-3.0: both texts must be there.
    assert any(
        "GNU LESSER GENERAL PUBLIC LICENSE" in t and "Version 3, 29 June" in t for t in texts
    )
    assert any(
        "GNU GENERAL PUBLIC LICENSE" in t and "Version 3, 29 June" in t and "LESSER" not in t
        for t in texts
    )


def test_every_bundled_shared_library_has_its_licence_in_the_index(licences):
    internal, index = licences
    bundled = {
        str(p.relative_to(internal))
        for p in internal.rglob("*")
        if SHARED_LIBRARY.search(p.name) and p.is_file() and not p.is_symlink()
    }
    owners = _library_owners(index)
    assert bundled - owners.keys() == set(), "shared libraries missing from licenses/README.txt"
    assert owners.keys() - bundled == set(), "listed but not in the bundle"
    for component in index:
        for text in component["texts"]:
            assert (internal / "licenses" / text).stat().st_size > 0, text
    # The PySide6 wheel ships ICU's libraries without ICU's licence text: the build machine's
    # Debian ICU package supplies it where there is one, else the index says it is missing.
    # Every other component with libraries has its text in the bundle.
    missing = {c["title"] for c in index if c["libraries"] and not c["texts"]}
    if list(Path("/usr/share/doc").glob("libicu[0-9]*/copyright")):
        assert not missing, missing
    else:
        assert all(title.startswith("ICU ") for title in missing), missing
    python = next(c for c in index if c["title"].startswith("Python "))
    license_txt = (internal / "licenses" / python["texts"][0]).read_text(encoding="utf-8")
    assert "PYTHON SOFTWARE FOUNDATION LICENSE" in license_txt


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libraries from a Linux system")
def test_every_system_library_carries_its_debian_copyright(licences):
    internal, index = licences
    owners = _library_owners(index)
    # Libraries copied from the system land at the top of _internal/ as files; those from wheels
    # are symlinks there (into PySide6/ and shiboken6/), and libpython is Python's.
    system = sorted(
        p.name
        for p in internal.iterdir()
        if SHARED_LIBRARY.search(p.name)
        and p.is_file()
        and not p.is_symlink()
        and not p.name.startswith("libpython")
    )
    assert system, "no system libraries in the bundle?"
    if not shutil.which("dpkg-query"):
        for lib in system:
            assert owners[lib]["licence"].startswith("NOT COLLECTED"), lib
        return
    for lib in system:
        component = owners[lib]
        assert component["title"].endswith("(Debian package)"), (lib, component["title"])
        package = component["title"].split()[0]
        (text,) = component["texts"]
        assert text == f"debian/{package}/copyright"
        shipped = (internal / "licenses" / text).read_bytes()
        assert shipped == (Path("/usr/share/doc") / package / "copyright").read_bytes()
        listed = subprocess.run(
            ["dpkg-query", "-L", package], capture_output=True, text=True, check=True, timeout=60
        ).stdout.splitlines()
        assert any(path.endswith(f"/{lib}") for path in listed), f"{package} does not ship {lib}"
