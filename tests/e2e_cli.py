"""Running the ``residency`` command as a user does, for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

RESIDENCY = shutil.which("residency") or str(Path(sys.executable).parent / "residency")


def residency(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``residency ARGS`` in ``cwd`` with a wide terminal; never raises on failure."""
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [RESIDENCY, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one non-blank line a refused command printed to stderr."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]
