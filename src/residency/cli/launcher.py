"""``residency launcher``: the key a person launching jobs signs them with."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from residency.cli.common import EXIT_INPUT, console, fail
from residency.common.privacy.signing import create_signer, key_id

launcher_app = typer.Typer(
    help="Make the key you sign jobs with; coordinators and nodes run only jobs from keys "
    "their operators trust.",
    no_args_is_help=True,
)

KEY_FILE = "launcher.key"


@launcher_app.command()
def init(
    folder: Annotated[Path, typer.Argument(help="Folder for the new key (created if absent).")],
) -> None:
    """Create an Ed25519 launcher key (private key owner-only) and print its public key."""
    private = folder / KEY_FILE
    if private.exists():
        raise fail(
            f"{private}: a launcher key already lives here; fix: pick a new folder (operators "
            "who trust this key would stop trusting its replacement)",
            EXIT_INPUT,
        )
    folder.mkdir(parents=True, exist_ok=True)
    signer = create_signer(private, comment="residency-launcher")
    console.print(
        f"launcher key {private} (id {key_id(signer.public_hex)}); launch with "
        f"`residency run JOB --key {private}`\n"
        "ask the coordinator and each node operator to add this public key to "
        f'trusted_launchers in coordinator.toml and node.toml:\n"{signer.public_hex}"',
        markup=False,
        soft_wrap=True,
    )
