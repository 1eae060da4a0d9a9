"""``residency-serverapp``: Flower's ``flwr-serverapp``, always running Residency's ServerApp.

Flower installs each run's app bundle (FAB) on the coordinator and loads the ServerApp it
names from it, so whoever can submit a run would run their own code next to the coordinator's
ledger key, CA key and data folder. The coordinator's SuperExec starts this command instead
(:mod:`residency.server.superexec`): the bundle still supplies the run config (the signed
job), but the code that reads it is the installed ``residency.server.deployment:app``.
"""

from __future__ import annotations

import importlib
from typing import Any


def pin_serverapp() -> None:
    """Make Flower's ServerApp runtime run the installed app, whatever the FAB names."""
    from residency.server.deployment import app

    runtime = importlib.import_module("flwr.superlink.runtime.run_serverapp")
    original = runtime.run_

    def installed_app(**kwargs: Any) -> Any:
        kwargs.pop("server_app_attr", None)
        return original(**kwargs, loaded_server_app=app)

    vars(runtime)["run_"] = installed_app  # Flower 1.42 (pinned) calls it by keywords, once


def main() -> None:
    """Pin the app, then run Flower's own ``flwr-serverapp`` with the same arguments."""
    from flwr.superlink.cli import flwr_serverapp

    pin_serverapp()
    flwr_serverapp()


if __name__ == "__main__":
    main()
