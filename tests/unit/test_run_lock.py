"""One live ServerApp per run folder, seen by the next start whatever killed the last one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from residency.server import run_lock
from residency.server.run_lock import RunDriven, driver, hold_run, wait_undriven

pytestmark = pytest.mark.unit

HOLDER = (
    "import sys, time; from pathlib import Path; "
    "from residency.server.run_lock import hold_run; "
    "hold_run(Path(sys.argv[1])); print('held', flush=True); time.sleep(120)"
)


def hold_elsewhere(folder: Path) -> subprocess.Popen[str]:
    """A process that holds ``folder``'s lock, as a ServerApp does, until it is killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_run_has_one_serverapp_and_its_lock_dies_with_it(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "41"
    assert driver(folder) is None  # no lock file yet
    holder = hold_elsewhere(folder)
    try:
        assert driver(folder) == str(holder.pid)
        with pytest.raises(
            RunDriven, match=f"run 41 is driven by another ServerApp \\(pid {holder.pid}\\)"
        ):
            hold_run(folder)
        with pytest.raises(RunDriven, match=f"run 41 is still driven .*pid {holder.pid}"):
            wait_undriven([folder], 0.3)
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel drops the lock
        holder.wait()
    assert driver(folder) is None
    wait_undriven([folder], 0.3)
    hold_run(folder)  # the next ServerApp takes it
    assert driver(folder) == str(os.getpid())
    os.close(run_lock._held.pop())  # let it go, as this process's end would
