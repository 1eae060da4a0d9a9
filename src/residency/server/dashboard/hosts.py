"""The host names the dashboard answers to: its defence against DNS rebinding.

A page on ``evil.example`` can have its name re-resolved to 127.0.0.1 and then read the
dashboard with the browser's same-origin blessing; the one thing it cannot change is the
``Host`` header, which still names ``evil.example``. So every request must name a host the
dashboard serves, with the port it serves: the address it listens on, the names in its
certificate, and the names the operator adds. When it listens on loopback (or everywhere),
``localhost``, ``127.0.0.1`` and ``[::1]`` are allowed on any port, as an SSH tunnel's local
port is the user's choice. A name the operator adds as ``NAME`` is allowed on any port (a
proxy in front may listen elsewhere); ``NAME:PORT`` on that port only.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509

from residency.common.errors import ConfigError

AllowedHost = tuple[str, int | None]
"""A lower-case name (IPv6 in brackets) and its port; ``None``: any port."""

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
_WILDCARDS = ("0.0.0.0", "::", "")


def _name(host: str) -> str:
    """``host`` as it appears in a Host header: lower case, an IPv6 address in brackets."""
    host = host.strip().lower().removesuffix(".")
    if host.startswith("["):
        return host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    return f"[{address.compressed}]" if address.version == 6 else address.compressed


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_host(header: str) -> tuple[str, int | None] | None:
    """A Host header's name and port (``None`` when it names none); ``None`` if malformed."""
    value = header.strip()
    port: str | None
    if value.startswith("["):
        name, closed, rest = value.partition("]")
        name += "]"
        if not closed or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else None
    elif value.count(":") > 1:
        return None
    else:
        name, colon, port = value.partition(":")
        port = port if colon else None
    if not name.strip("[]") or any(c.isspace() or c in "/@\\" for c in name):
        return None
    if port is None:
        return _name(name), None
    if not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return _name(name), int(port)


def operator_host(value: str) -> AllowedHost:
    """One ``--allow-host`` value: ``NAME`` (any port) or ``NAME:PORT``."""
    parsed = parse_host(value)
    if parsed is None:
        raise ConfigError(
            f"--allow-host {value}: not a host name; fix: a name as browsers type it, "
            "e.g. --allow-host dash.example.org or --allow-host dash.example.org:443"
        )
    return parsed


def certificate_names(certfile: Path) -> list[str]:
    """The DNS names and IP addresses in the certificate's subject alternative names."""
    try:
        certificate = x509.load_pem_x509_certificate(certfile.read_bytes())
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (OSError, ValueError, x509.ExtensionNotFound):
        return []  # a certificate without names: the operator names hosts with --allow-host
    dns = names.value.get_values_for_type(x509.DNSName)
    addresses = names.value.get_values_for_type(x509.IPAddress)
    return [*dns, *(str(a) for a in addresses)]


def served_hosts(
    *,
    host: str,
    port: int,
    certfile: Path | None = None,
    extra: Iterable[str] = (),
) -> frozenset[AllowedHost]:
    """Every (name, port) a request may name when the dashboard listens on ``host:port``.

    Listening on every interface (``0.0.0.0``, ``::``) adds this machine's host names; its
    other names and addresses are the operator's to add (``extra``).
    """
    names = [host] if host not in _WILDCARDS else [socket.gethostname(), socket.getfqdn()]
    if certfile is not None:
        names.extend(certificate_names(certfile))
    allowed: set[AllowedHost] = {(_name(name), port) for name in names if name}
    if host in _WILDCARDS or _loopback(host):
        # Any port: an SSH tunnel (ssh -L 9000:127.0.0.1:8050) picks its own local port, and
        # a rebinding page can never make a browser name a loopback host for its own origin.
        allowed.update((name, None) for name in _LOOPBACK_NAMES)
    allowed.update(operator_host(value) for value in extra)
    return frozenset(allowed)


def host_allowed(header: str | None, allowed: frozenset[AllowedHost], *, https: bool) -> bool:
    """Whether a request's Host header names a host the dashboard serves.

    A header without a port names the scheme's default port, as browsers leave it out.
    """
    parsed = parse_host(header or "")
    if parsed is None:
        return False
    name, port = parsed
    if (name, None) in allowed:
        return True
    return (name, port if port is not None else (443 if https else 80)) in allowed
