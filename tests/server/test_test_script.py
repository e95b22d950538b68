"""scripts/test.sh, the README's test command: every check runs, and any failure fails it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="a bash script")

# Stands in for .venv/bin/{python,ruff,mypy}: logs its arguments, fails where told to.
STUB = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$LOG"
for word in "$@"; do
  case " $FAIL " in *" $word "*) exit 1 ;; esac
done
exit 0
"""


def run_script(tmp_path: Path, fail: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    tree = tmp_path / "checkout"
    (tree / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "test.sh", tree / "scripts" / "test.sh")
    shutil.copy(ROOT / "scripts" / "lib.sh", tree / "scripts" / "lib.sh")
    (tree / "scripts" / "bootstrap.sh").write_text("exit 0\n")  # the venv is "there"
    (tree / "tests" / "js").mkdir(parents=True)  # npm ci runs there (stubbed below)
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "npm").write_text("#!/bin/sh\nexit 0\n")
    (tools / "npm").chmod(0o755)
    bin_dir = tree / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "ruff", "mypy"):
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    result = subprocess.run(
        ["bash", str(tree / "scripts" / "test.sh"), "-q"],
        env={
            **os.environ,
            "LOG": str(log),
            "FAIL": fail,
            "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, log.read_text().splitlines()


def test_a_failing_server_suite_still_runs_the_gui_suite_then_fails(tmp_path):
    result, calls = run_script(tmp_path, fail="tests/server")
    assert "python -m pytest tests/server -q" in calls
    assert "python -m pytest tests/app -q" in calls  # not hidden behind the first failure
    assert result.returncode != 0
    assert "FAILED: server tests" in result.stderr


def test_lint_failures_do_not_hide_test_results(tmp_path):
    result, calls = run_script(tmp_path, fail="check")  # `ruff check .` fails
    assert {"python -m pytest tests/server -q", "python -m pytest tests/app -q"} <= set(calls)
    assert result.returncode != 0
    assert "FAILED: ruff check" in result.stderr


def test_all_green_passes(tmp_path):
    result, calls = run_script(tmp_path, fail="")
    assert result.returncode == 0, result.stderr
    assert "python -m pytest tests/app -q" in calls
