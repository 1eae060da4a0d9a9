"""A warm executor for the node's ClientApp: import torch once, fork once per message.

Flower's SuperExec starts a fresh ``flwr-clientapp`` process per message, which re-imports
torch, transformers and Opacus (about 6-10 s here, every round, every phase). This executor
implements Flower's SuperExec ``Executor`` protocol: its parent process imports the ClientApp
once, then each task runs Flower's own ``run_clientapp`` in a forked child. Isolation per
message is kept (a crash or leak in one round dies with its child); only the import is shared.
The parent never runs a torch operation or touches CUDA, so forking it is safe.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from flwr.clientapp import ClientApp
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec import run_superexec as superexec
from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult

from residency.common.parent_watch import when_orphaned

log = logging.getLogger("residency.node")


def only_residency_runs() -> None:
    """Make every task run the installed Residency ClientApp, whatever the run's FAB holds.

    Flower installs each run's app bundle (FAB) on the node and imports the ClientApp it
    names from it: whoever can submit a run to the SuperLink could otherwise execute their own
    code next to the node's data, past every check Residency's ClientApp makes (signed jobs,
    budgets, the egress guard). A Residency node runs one program, the one its operator
    installed; the FAB is neither written to disk nor imported. Flower 1.42 (pinned) loads the
    app at one point in ``run_clientapp``; both names are replaced there.
    """
    from flwr.supernode.runtime import run_clientapp as runtime

    from residency.client.client_app import app

    def installed_app(
        default_app_ref: str, app_path: str | None, multi_app: bool
    ) -> Callable[[str, str, str], ClientApp]:
        del default_app_ref, app_path, multi_app
        return lambda fab_id, fab_version, fab_hash: app

    def no_install(fab_file: Path | bytes, *args: object, **kwargs: object) -> Path:
        del fab_file, args, kwargs
        return Path(os.devnull)

    vars(runtime)["get_load_client_app_fn"] = installed_app
    vars(runtime)["install_from_fab"] = no_install


class ForkExecutor:
    """Runs each ClientApp task in a child forked from a process that already imported it."""

    def __init__(self) -> None:
        only_residency_runs()  # imports the ClientApp too: the warm import children inherit
        self.children: set[int] = set()

    def get_eligible_capacity(
        self,
        supported_task_types: set[TaskType],
        *,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> tuple[set[TaskType], set[str]]:
        """Only ClientApp tasks: a node runs nothing else."""
        del insecure, root_certificates_path
        return supported_task_types & {TaskType.CLIENT_APP}, set()

    def wait_for_capacity(
        self,
        task_type: TaskType | None = None,
        *,
        fab_hash: str | None = None,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> None:
        """Forking has no capacity gate."""
        del task_type, fab_hash, insecure, root_certificates_path

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        """Fork; the child runs Flower's ClientApp runtime for this one token and exits."""
        if spec.task_type is not TaskType.CLIENT_APP:
            return LaunchResult.failed(
                f"a Residency node runs ClientApps only, not {spec.task_type}"
            )
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # child
            _die_with(parent)
            os._exit(_run_task(spec))
        self.children.add(pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap finished children so none linger as zombies."""
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if not done:
                    continue
            self.children.discard(pid)

    def close(self) -> None:
        """Leave running children alone: each ends with its task or with the SuperNode."""


def _die_with(parent: int) -> None:
    """End this task the moment its executor is gone.

    Without its SuperNode a task can only retry pushing a reply nobody will take (Flower's
    retries have no end), so it exits at once instead of lingering as an orphan.
    """
    when_orphaned(parent, lambda: os._exit(1))


def _run_task(spec: ExecutionSpec) -> int:
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    certificates = (
        Path(spec.root_certificates_path).read_bytes() if spec.root_certificates_path else None
    )
    try:
        run_clientapp(
            runtime_api_address=spec.runtime_api_address,
            token=spec.token,
            insecure=spec.insecure,
            certificates=certificates,
            parent_pid=spec.parent_pid,
            runtime_dependency_install=False,
        )
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        log.exception("ClientApp task failed")
        return 1
    return 0


def run(runtime_api_address: str, parent_pid: int | None) -> None:
    """Run Flower's SuperExec loop with the fork executor (loopback, so no TLS).

    ``parent_pid`` is the ``residency node start`` supervisor: if it dies, so does this loop.
    """
    executor = ForkExecutor()
    # Flower 1.42 picks executors by name only; hand it ours at its one construction point.
    superexec.get_executor = lambda *args, **kwargs: executor  # type: ignore[attr-defined]
    superexec.run_superexec(
        runtime_api_address=runtime_api_address,
        insecure=True,
        parent_pid=parent_pid,
        runtime_dependency_install=False,
    )


def main() -> None:
    """``python -m residency.client.executor --runtime-api-address 127.0.0.1:9094``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--parent-pid", type=int, default=None)
    args = parser.parse_args()
    run(args.runtime_api_address, args.parent_pid)


if __name__ == "__main__":
    main()
