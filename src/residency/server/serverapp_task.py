"""``residency-serverapp``: Flower's ``flwr-serverapp``, always running Residency's ServerApp.

Flower installs each run's app bundle (FAB) on the coordinator and loads the ServerApp it
names from it, so whoever can submit a run would run their own code next to the coordinator's
ledger key, CA key and data folder. The coordinator's SuperExec starts this command instead
(:mod:`residency.server.superexec`): the bundle still supplies the run config (the signed
job), read from the bundle in memory, but the code that reads it is the installed
``residency.server.deployed_app:app``, and the bundle is never written to the coordinator's
disk (a launcher's files would otherwise pile up in Flower's app folder, one per run).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any


def pin_serverapp() -> None:
    """Make Flower's ServerApp runtime run the installed app, whatever the FAB names.

    Flower 1.42 (pinned) installs the bundle into its app folder and reads the project
    config back from there; here the bundle's bytes are kept in memory and its config read
    from them (Flower's own ``get_fab_config``), so nothing of a run's bundle is kept.
    """
    from flwr.common.config import flatten_dict as flat
    from flwr.common.config import fuse_dicts, get_fab_config

    from residency.server.deployed_app import app

    runtime = importlib.import_module("flwr.superlink.runtime.run_serverapp")
    original = runtime.run_
    bundle: dict[str, bytes] = {}

    def installed_app(**kwargs: Any) -> Any:
        kwargs.pop("server_app_attr", None)
        return original(**kwargs, loaded_server_app=app)

    def keep_in_memory(fab_file: Path | bytes, *args: object, **kwargs: object) -> Path:
        del args, kwargs
        if not isinstance(fab_file, bytes):
            raise TypeError("the ServerApp runtime passes the bundle's bytes")
        bundle["content"] = fab_file
        return Path(os.devnull)

    def bundle_config(project_dir: str | Path) -> dict[str, Any]:
        del project_dir
        config: dict[str, Any] = get_fab_config(bundle["content"])
        return config

    def fused_config(project_dir: Path, override_config: dict[str, Any]) -> dict[str, Any]:
        defaults = bundle_config(project_dir)["tool"]["flwr"]["app"].get("config", {})
        fused: dict[str, Any] = fuse_dicts(flat(defaults), override_config)
        return fused

    vars(runtime)["run_"] = installed_app  # Flower 1.42 (pinned) calls it by keywords, once
    vars(runtime)["install_from_fab"] = keep_in_memory
    vars(runtime)["get_project_config"] = bundle_config
    vars(runtime)["get_fused_config_from_dir"] = fused_config


def main() -> None:
    """Pin the app, then run Flower's own ``flwr-serverapp`` with the same arguments."""
    from flwr.superlink.cli import flwr_serverapp

    pin_serverapp()
    flwr_serverapp()


if __name__ == "__main__":
    main()
