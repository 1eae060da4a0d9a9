"""``residency dashboard DIR``: the coordinator's live, read-only web page."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import stat
from pathlib import Path
from typing import Annotated

import typer

from residency.cli.common import EXIT_INPUT, console, err_console, fail
from residency.common.errors import ConfigError

DEFAULT_PORT = 8050
MIN_TOKEN_CHARS = 32


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: Path) -> str:
    """The token in ``path``: long enough to resist guessing, readable by its owner only."""
    try:
        mode = path.stat().st_mode
        text = path.read_text("utf-8").strip()
    except OSError as error:
        raise ConfigError(
            f"{path}: cannot read the token ({error.strerror}); fix: --token-file FILE"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path}: others can read the token; fix: chmod 600 {path}")
    if len(text) < MIN_TOKEN_CHARS or any(c.isspace() for c in text):
        raise ConfigError(
            f"{path}: the token must be one word of at least {MIN_TOKEN_CHARS} characters; "
            f"fix: umask 077; openssl rand -hex 32 > {path}"
        )
    return text


def check_tls(certfile: Path, keyfile: Path) -> None:
    """Load the pair now, so a wrong file is one line before anything listens."""
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ConfigError(
            f"--certfile {certfile} --keyfile {keyfile}: cannot load them ({reason}); fix: "
            "a PEM certificate and the PEM private key that matches it"
        ) from None


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ConfigError(
            f"--host {host} --port {port}: cannot listen ({error.strerror}); fix: pick a free "
            "port with --port, or an address of this host with --host"
        ) from None
    sock.listen(64)
    return sock


def dashboard(
    folder: Annotated[
        Path, typer.Argument(help="A coordinator folder, or a `simulate --output` folder.")
    ],
    port: Annotated[int, typer.Option(help="TCP port (0: any free port).", min=0, max=65535)] = (
        DEFAULT_PORT
    ),
    host: Annotated[
        str, typer.Option(help="Address to listen on; beyond loopback needs --token-file.")
    ] = "127.0.0.1",
    token_file: Annotated[
        Path | None,
        typer.Option(help="File holding the token a browser must present (mode 600)."),
    ] = None,
    certfile: Annotated[
        Path | None, typer.Option(help="TLS certificate (PEM) to serve HTTPS with.")
    ] = None,
    keyfile: Annotated[
        Path | None, typer.Option(help="TLS private key (PEM) for --certfile.")
    ] = None,
    poll: Annotated[
        float, typer.Option(help="Seconds between checks of the folder's files.", min=0.1)
    ] = 1.0,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Another name browsers reach it by (NAME, or NAME:PORT), e.g. a proxy's; "
            "repeatable. Requests naming any other host are refused."
        ),
    ] = None,
) -> None:
    """Serve a read-only page of runs, rounds, countries' ε and nodes that updates live."""
    import uvicorn

    from residency.server.dashboard.hosts import served_hosts
    from residency.server.dashboard.web import create_app

    try:
        token = read_token(token_file) if token_file is not None else None
        if token is None and not _loopback(host):
            raise ConfigError(
                f"--host {host}: beyond loopback the page shows every country's ε and refusals "
                "to anyone who can reach it; fix: add --token-file FILE (see docs/deploy.md), "
                "or keep the default --host 127.0.0.1"
            )
        if (certfile is None) != (keyfile is None):
            raise ConfigError("--certfile and --keyfile go together; fix: give both or neither")
        if certfile is not None and keyfile is not None:
            check_tls(certfile, keyfile)
        sock = _bind(host, port)
        bound = sock.getsockname()[1]
        try:
            hosts = served_hosts(host=host, port=bound, certfile=certfile, extra=allow_host or ())
            app = create_app(
                folder.resolve(),
                hosts=hosts,
                token=token,
                poll_s=poll,
                https=certfile is not None,
            )
        except ConfigError:
            sock.close()
            raise
    except ConfigError as error:
        raise fail(str(error), EXIT_INPUT) from None
    scheme = "https" if certfile else "http"
    shown = f"[{host}]" if ":" in host else host
    console.print(
        f"dashboard for {folder} at {scheme}://{shown}:{bound}/ (read-only; Ctrl-C stops it)",
        markup=False,
        soft_wrap=True,
    )
    if token is not None:
        console.print(f"open it with ?token=<the token in {token_file}>", markup=False)
        if certfile is None:
            err_console.print(
                "warning: without --certfile the token crosses the network in clear; serve "
                "HTTPS or put a TLS proxy in front (docs/deploy.md)",
                markup=False,
            )
    config = uvicorn.Config(
        app,
        log_level="warning",
        timeout_graceful_shutdown=2,
        ssl_certfile=str(certfile) if certfile else None,
        ssl_keyfile=str(keyfile) if keyfile else None,
    )
    # Ctrl-C is how a server is stopped: uvicorn finishes its shutdown, then re-raises it.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run(sockets=[sock])
    console.print("dashboard stopped", markup=False)
