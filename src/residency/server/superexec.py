"""The coordinator's SuperExec: Flower's, starting ``residency-serverapp`` for every run.

SuperLink launches a SuperExec that starts one ``flwr-serverapp`` process per run; this one
starts :mod:`residency.server.serverapp_task` instead, so no run executes code from its bundle.

It also bounds how many jobs run at once (``max_concurrent_runs`` in ``coordinator.toml``).
Flower's SuperExec asks its executor which task types it has room for before it claims the
oldest pending task; answering "none" while the limit's worth of ServerApps run leaves later
launches ``pending`` in the SuperLink, in launch order. That is the queue: ``runs`` lists
those runs as queued and ``runs stop`` removes one, both through Flower's own run states.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
from pathlib import Path

import psutil
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

from residency.server.launch import COORDINATOR_SETTINGS_ENV

SERVERAPP_COMMAND = "residency-serverapp"

log = logging.getLogger("residency.coordinator")


def serverapp_command() -> str:
    """The installed ``residency-serverapp`` next to this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / SERVERAPP_COMMAND
    return str(beside) if beside.exists() else shutil.which(SERVERAPP_COMMAND) or SERVERAPP_COMMAND


def concurrent_runs_limit() -> int:
    """``max_concurrent_runs`` from ``coordinator.toml`` now (its default when unreadable).

    Asked every poll (a second) while a job runs: the file is parsed again only when it
    changed, so an edit applies at once and a broken one is reported once.
    """
    path = os.environ.get(COORDINATOR_SETTINGS_ENV)
    try:
        stat = os.stat(path) if path else None
    except OSError:
        stat = None
    version = None if stat is None else (path, stat.st_mtime_ns, stat.st_size)
    return _limit_of(version)


@functools.lru_cache(maxsize=1)
def _limit_of(version: tuple[str, int, int] | None) -> int:
    from residency.common.config.loading import load_model
    from residency.common.errors import ConfigError
    from residency.server.coordinator import DEFAULT_CONCURRENT_RUNS, CoordinatorSettings

    if version is None:
        return DEFAULT_CONCURRENT_RUNS
    try:
        return load_model(Path(version[0]), CoordinatorSettings).max_concurrent_runs
    except (OSError, ConfigError) as exc:  # an edit half-written: keep serving, say why
        log.warning("%s; using max_concurrent_runs = %d", exc, DEFAULT_CONCURRENT_RUNS)
        return DEFAULT_CONCURRENT_RUNS


def running_serverapps() -> int:
    """ServerApp processes this SuperExec started that still run (reaped ones do not count)."""
    count = 0
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            if any(SERVERAPP_COMMAND in part for part in child.cmdline()):
                count += 1
        except psutil.Error:
            continue
    return count


class BoundedExecutor(SubprocessExecutor):
    """Flower's subprocess executor, with room for a ServerApp only below the run limit."""

    def get_eligible_capacity(
        self,
        supported_task_types: set[TaskType],
        *,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> tuple[set[TaskType], set[str]]:
        """No task types while the limit's worth of jobs run: the next launch stays queued."""
        types, fabs = super().get_eligible_capacity(
            supported_task_types, insecure=insecure, root_certificates_path=root_certificates_path
        )
        running = running_serverapps()
        if running and running >= concurrent_runs_limit():
            return set(), set()
        return types, fabs


def main() -> None:
    """``flower-superexec`` with the ServerApp command replaced and the run limit applied."""
    import importlib

    from flwr.supercore.cli import flower_superexec
    from flwr.supercore.constant import TASK_TYPE_TO_COMMAND

    TASK_TYPE_TO_COMMAND[TaskType.SERVER_APP] = serverapp_command()
    runner = importlib.import_module("flwr.supercore.superexec.run_superexec")
    original = runner.get_executor

    def bounded(executor_type: object, *args: object, **kwargs: object) -> object:
        from flwr.supercore.constant import ExecutorType

        if executor_type == ExecutorType.SUBPROCESS:
            return BoundedExecutor()
        return original(executor_type, *args, **kwargs)

    vars(runner)["get_executor"] = bounded  # Flower 1.42 (pinned) looks it up per call
    sys.argv[0] = "flower-superexec"
    flower_superexec()


if __name__ == "__main__":
    main()
