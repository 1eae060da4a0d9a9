"""The dashboard as users run it: live in headless Chromium, and served with a token over HTTPS.

A real ``residency simulate`` run supplies the folder; the test then replays its
``results.json`` round by round (written atomically, as the coordinator writes it) while
``residency dashboard`` serves the folder and Chromium keeps the page open.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from browser import Browser
from deployment_harness import free_port, wait_until
from e2e_cli import RESIDENCY, residency
from residency.server.coordinator import init_coordinator
from residency.server.results import NodeRound, NodeStatus, Results, RunStatus
from toy_federation import write_toy_job

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROUNDS = 3
HOSTILE = '<img src=x onerror="window.pwned=1">'


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of a real three-round simulation."""
    root = tmp_path_factory.mktemp("dashboard-run")
    job = write_toy_job(
        root / "job", countries=("DE", "FR"), rounds=ROUNDS, train='update = "head"'
    )
    proc = residency("simulate", str(job), "--output", "out", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root / "out"


class Dashboard:
    """``residency dashboard`` on a folder the test fills, started when the folder is ready."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.url = f"http://127.0.0.1:{free_port()}/"
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        port = self.url.rstrip("/").rsplit(":", 1)[1]
        self.process = subprocess.Popen(
            [RESIDENCY, "dashboard", str(self.folder), "--port", port, "--poll", "0.2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_until(self.serving, timeout_s=60, what="residency dashboard serving")

    def serving(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "api/state", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)  # uvicorn's own clean stop
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail("residency dashboard did not stop on SIGINT")


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    folder = tmp_path / "live"
    folder.mkdir()
    served = Dashboard(folder)
    yield served
    served.stop()


def _partial(full: Results, rounds: int, *, hostile: bool = False) -> Results:
    """The run as the coordinator had written it after ``rounds`` rounds."""
    partial = full.model_copy(deep=True)
    partial.rounds = partial.rounds[:rounds]
    if rounds < len(full.rounds):
        partial.status, partial.final, partial.finished_at = RunStatus.RUNNING, None, None
    if hostile:
        partial.rounds[-1].nodes.append(
            NodeRound(country="ES", status=NodeStatus.REFUSED, reason=HOSTILE)
        )
    return partial


def _points(chart: str, trace: str) -> str:
    """JS: the y values plotly holds for one trace of one chart."""
    return (
        f"(() => {{ const c = document.querySelector('[id$=\"-{chart}\"]');"
        f" if (!c || !c.data) return null;"
        f" const t = c.data.find(t => t.name === '{trace}'); return t ? t.y : null; }})()"
    )


def _drawn_points(chart: str) -> str:
    """JS: the markers plotly drew for the first trace of one chart (what a user sees)."""
    return (
        f'document.querySelectorAll(\'[id$="-{chart}"] .scatterlayer .trace:first-child '
        f".point').length"
    )


def test_curves_follow_the_run_live_without_a_reload(
    finished_run: Path, dashboard: Dashboard, tmp_path: Path
) -> None:
    folder, url = dashboard.folder, dashboard.url
    for part in ("ledger", "nodes", "keys"):
        shutil.copytree(finished_run / part, folder / part)
    full = Results.model_validate_json((finished_run / "results.json").read_bytes())
    assert len(full.rounds) == ROUNDS
    _partial(full, 1).write(folder / "results.json")
    dashboard.start()

    with Browser(tmp_path / "profile") as browser:
        browser.open(url)
        assert browser.wait_for(_drawn_points("quality")) == 1
        assert browser.wait_for("document.getElementById('live').textContent === 'live'")
        assert browser.evaluate(_points("quality", "accuracy")) == [full.rounds[0].accuracy]
        for country in ("DE", "FR"):
            assert browser.evaluate(_drawn_points(f"burndown-{country}")) == 1
        browser.evaluate("window.sameLoad = 'still the first load'")
        assert "running" in browser.evaluate("document.querySelector('.status').textContent")

        _partial(full, 2, hostile=True).write(folder / "results.json")
        assert browser.wait_for(f"{_drawn_points('quality')} === 2", timeout=30)
        assert browser.evaluate(_points("quality", "accuracy")) == [
            r.accuracy for r in full.rounds[:2]
        ]
        refusal = browser.evaluate("document.querySelector('.refusal').textContent")
        assert HOSTILE in refusal  # shown as text...
        assert browser.evaluate("document.querySelectorAll('main img').length") == 0
        assert browser.evaluate("window.pwned === undefined")  # ...never run

        _partial(full, ROUNDS).write(folder / "results.json")
        assert browser.wait_for(f"{_drawn_points('quality')} === {ROUNDS}", timeout=30)
        for country in ("DE", "FR"):
            assert browser.evaluate(_points(f"burndown-{country}", "run ε")) == [
                next(n.epsilon for n in r.nodes if n.country == country) for r in full.rounds
            ]
        assert browser.evaluate("document.querySelector('.status').textContent") == "completed"
        assert browser.evaluate("window.sameLoad") == "still the first load"
        assert browser.evaluate("performance.getEntriesByType('navigation').length") == 1
        assert not [line for line in browser.console if "exception" in line], browser.console


def test_with_a_token_and_a_certificate_it_serves_https_and_only_to_the_token(
    tmp_path: Path,
) -> None:
    """The deployment recipe of docs/deploy.md: token file, certificate, cookie marked Secure."""
    coordinator = init_coordinator(tmp_path / "coordinator", names=["127.0.0.1"])
    token = tmp_path / "dashboard.token"
    token.write_text(secrets.token_hex(32) + "\n")
    token.chmod(0o600)
    tls = coordinator.tls
    port = free_port()
    process = subprocess.Popen(
        [
            RESIDENCY,
            "dashboard",
            str(coordinator.root),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--token-file",
            str(token),
            "--certfile",
            str(tls.server_cert),
            "--keyfile",
            str(tls.server_key),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    context = ssl.create_default_context(cafile=str(tls.ca_cert))
    url = f"https://127.0.0.1:{port}/"

    class Stay(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None  # show the redirect itself, as a browser's network panel would

    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), Stay)

    def get(path: str) -> tuple[int, dict[str, str]]:
        try:
            with opener.open(url + path, timeout=5) as response:
                return response.status, dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers)

    def up() -> bool:
        try:
            get("")
        except OSError:
            return False
        return True

    try:
        wait_until(up, timeout_s=60, what="the dashboard serving HTTPS")
        assert get("")[0] == 401
        assert get("api/state?token=" + "0" * 64)[0] == 401
        status, headers = get(f"?token={token.read_text().strip()}")
        assert (status, headers["location"]) == (303, "/")  # the token leaves the address
        assert "Secure" in headers["set-cookie"]
        assert "HttpOnly" in headers["set-cookie"]
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=20)
    assert process.returncode == 0, out
    assert f"https://127.0.0.1:{port}/" in out
    assert token.read_text().strip() not in out  # the token is never printed
