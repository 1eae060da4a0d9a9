"""Talk to a coordinator's SuperLink through Flower's own ``flwr`` CLI.

``flwr`` reads connections from ``$FLWR_HOME/config.toml``; each call here gets a private,
temporary home holding one connection, so a user's own Flower settings are neither read nor
changed, and the CA to trust is always the one given.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

CONNECTION = "residency"


class CoordinatorUnavailable(RuntimeError):
    """The coordinator could not be reached or refused the request."""


def flwr_binary() -> str:
    """Flower's CLI from this environment."""
    local = Path(sys.executable).parent / "flwr"
    return str(local) if local.exists() else (shutil.which("flwr") or "flwr")


@dataclass(frozen=True)
class Coordinator:
    """Where a coordinator listens and how to trust it."""

    address: str
    ca: Path | None
    insecure: bool = False

    @contextmanager
    def home(self) -> Iterator[dict[str, str]]:
        """Environment for one ``flwr`` call, with its temporary ``FLWR_HOME``."""
        connection: dict[str, Any] = {"address": self.address}
        if self.insecure:
            connection["insecure"] = True
        elif self.ca is not None:
            connection["root-certificates"] = str(self.ca.resolve())
        config = {"superlink": {"default": CONNECTION, CONNECTION: connection}}
        with tempfile.TemporaryDirectory(prefix="residency-flwr-") as home:
            (Path(home) / "config.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
            yield {**os.environ, "FLWR_HOME": home, "NO_COLOR": "1", "TERM": "dumb"}

    def call_json(self, *args: str, timeout_s: float = 60) -> dict[str, Any]:
        """Run ``flwr ARGS --format json``; its JSON answer, or one clear error."""
        with self.home() as env:
            try:
                done = subprocess.run(
                    [flwr_binary(), *args, "--format", "json"],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=timeout_s,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise CoordinatorUnavailable(
                    f"{self.address}: {explain(f'no answer within {timeout_s:g} s, unavailable')}"
                ) from exc
        return self._answer(done)

    def _answer(self, done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
        text = done.stdout.strip()
        start = text.find("{")
        try:
            answer: dict[str, Any] = json.loads(text[start:]) if start >= 0 else {}
        except json.JSONDecodeError:
            answer = {}
        if done.returncode == 0 and answer.get("success", False):
            return answer
        detail = str(answer.get("error-message") or "") or done.stderr or done.stdout
        raise CoordinatorUnavailable(f"{self.address}: {flower_message(detail)}")


_BOX = str.maketrans("", "", "│╭╮╰╯─┌┐└┘━┃")


def flattened(text: str) -> str:
    """Flower's output on one line, without the boxes its error panels are drawn with."""
    return " ".join(text.translate(_BOX).split())


def flower_message(text: str) -> str:
    """Flower's last message in ``text`` (its error panel, or the last line), on one line."""
    lines = [line.translate(_BOX).strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("Using SuperLink")]
    if not lines:
        return "no answer"
    panel = [i for i, line in enumerate(lines) if line.startswith(("Error", "[code:"))]
    chosen = lines[panel[-1] :] if panel else lines[-1:]
    message = " ".join(" ".join(chosen).split()).removeprefix("Error ").strip()
    return explain(message)


def explain(detail: str) -> str:
    """Flower's message plus what to do about the usual causes."""
    flat = " ".join(detail.split())
    if "CERTIFICATE_VERIFY_FAILED" in flat:
        return (
            f"{flat}; fix: pass the coordinator's own tls/ca.pem with --ca, and an address "
            "named in its certificate"
        )
    if "unavailable" in flat.lower() or "refused" in flat.lower() or "onnect" in flat:
        return (
            f"{flat}; fix: check that `residency coordinator start` runs there, the port is "
            "open, and --ca is that coordinator's own tls/ca.pem"
        )
    return flat
