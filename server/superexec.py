"""The coordinator's SuperExec: Flower's, starting ``residency-serverapp`` for every run.

SuperLink launches a SuperExec that starts one ``flwr-serverapp`` process per run; this one
starts :mod:`residency.server.serverapp_task` instead, so no run executes code from its bundle.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

SERVERAPP_COMMAND = "residency-serverapp"


def serverapp_command() -> str:
    """The installed ``residency-serverapp`` next to this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / SERVERAPP_COMMAND
    return str(beside) if beside.exists() else shutil.which(SERVERAPP_COMMAND) or SERVERAPP_COMMAND


def main() -> None:
    """``flower-superexec`` with the ServerApp task command replaced; arguments pass through."""
    from flwr.supercore.cli import flower_superexec
    from flwr.supercore.constant import TASK_TYPE_TO_COMMAND, TaskType

    TASK_TYPE_TO_COMMAND[TaskType.SERVER_APP] = serverapp_command()
    sys.argv[0] = "flower-superexec"
    flower_superexec()


if __name__ == "__main__":
    main()
