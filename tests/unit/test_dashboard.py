"""The dashboard's page and API: what it reads, what it escapes, who may see it."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request
from typer.testing import CliRunner

from residency.cli.main import app as cli
from residency.common.clock import now
from residency.common.errors import ConfigError
from residency.server.admitted_nodes import AdmittedNode, record_admission
from residency.server.coordinator import init_coordinator
from residency.server.dashboard.hosts import host_allowed, served_hosts
from residency.server.dashboard.state import read_state
from residency.server.dashboard.web import (
    COOKIE,
    UNKNOWN_HOST,
    address_without_token,
    create_app,
)
from residency.server.results import (
    CountryPrivacy,
    FinalResult,
    NodeRound,
    NodeStatus,
    Results,
    RoundResult,
    RunStatus,
)

pytestmark = pytest.mark.unit

PORT = 8050
LOOPBACK = served_hosts(host="127.0.0.1", port=PORT)
HOSTILE = '<img src=x onerror="window.pwned=1"></script><script>window.pwned=2</script>'
TOKEN = "t" * 40


def _client(folder: Path, *, token: str | None = None) -> TestClient:
    """A browser on the dashboard served at 127.0.0.1:8050."""
    app = create_app(folder, hosts=LOOPBACK, token=token)
    return TestClient(app, base_url=f"http://127.0.0.1:{PORT}", follow_redirects=False)


def results(rounds: int, *, status: RunStatus = RunStatus.RUNNING, refusal: str = "") -> Results:
    """A run of DE and FR after ``rounds`` rounds; FR refuses round 2 with ``refusal``."""
    done = []
    for number in range(1, rounds + 1):
        nodes = [
            NodeRound(
                country="DE",
                status=NodeStatus.OK,
                examples=100,
                epsilon=2.0 * number,
                epsilon_round=2.0,
                bytes_up=1_000,
                bytes_down=1_100,
            )
        ]
        if refusal and number == 2:
            nodes.append(NodeRound(country="FR", status=NodeStatus.REFUSED, reason=refusal))
        else:
            nodes.append(
                NodeRound(country="FR", status=NodeStatus.OK, examples=90, epsilon=2.0 * number)
            )
        done.append(
            RoundResult(
                round=number,
                accuracy=0.5 + 0.1 * number,
                macro_f1=0.4 + 0.1 * number,
                test_loss=1.0,
                nodes=nodes,
                bytes_up=2_000,
                bytes_down=2_200,
                seconds=1.5,
                update="head",
                dropped=["ES"] if number == 3 else [],
            )
        )
    return Results(
        job="toy",
        status=status,
        residency_version="test",
        started_at=now(),
        config={"train": {"rounds": 4}, "privacy": {"target_epsilon": 8.0}},
        rounds=done,
        privacy={
            country: CountryPrivacy(
                epsilon=2.0 * rounds,
                delta=1e-5,
                target_epsilon=8.0,
                accountant="prv",
                rounds_charged=rounds,
                epsilon_dataset=2.0 * rounds + 1,
                budget_epsilon=10.0,
            )
            for country in ("DE", "FR")
        },
    )


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    results(2).write(folder / "results.json")
    return folder


def points(figure: dict[str, object], trace: str) -> list[float | None]:
    data = figure["data"]
    assert isinstance(data, list)
    (found,) = [t for t in data if t["name"] == trace]
    return list(found["y"])


def test_each_curve_has_one_point_per_completed_round(run_folder: Path) -> None:
    state = read_state(run_folder)
    (run,) = state.runs
    assert [r.round for r in run.rounds] == [1, 2]
    assert points(run.figures["quality"], "accuracy") == pytest.approx([0.6, 0.7])
    assert points(run.figures["quality"], "macro-F1") == pytest.approx([0.5, 0.6])
    assert points(run.figures["bytes"], "up (nodes → coordinator)") == [2000, 2000]
    for country in ("DE", "FR"):
        burndown = run.figures[f"burndown-{country}"]
        assert points(burndown, "run ε") == [2.0, 4.0]
        assert points(burndown, "job target ε") == [8.0, 8.0]
        assert points(burndown, "lifetime budget ε") == [10.0, 10.0]
    assert [c.country for c in run.countries] == ["DE", "FR"]
    assert run.rounds_planned == 4


def test_refusals_and_dropped_rounds_are_shown_per_country(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    results(3, refusal="dataset budget 10.00 would be exceeded").write(folder / "results.json")
    (run,) = read_state(folder).runs
    france = next(c for c in run.countries if c.country == "FR")
    assert [(r.round, r.status, r.reason) for r in france.refusals] == [
        (2, "refused", "dataset budget 10.00 would be exceeded")
    ]
    assert run.rounds[2].dropped == ["ES"]
    spain = next(c for c in run.countries if c.country == "ES")  # never replied, still shown
    assert spain.dropped_rounds == [3]
    assert spain.last_reply_round is None
    names = [t["name"] for t in run.figures["burndown-FR"]["data"]]
    assert "refused" in names


def test_hostile_text_is_escaped_in_the_page_and_its_figures(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    hostile = results(2, refusal=HOSTILE)
    hostile.error = HOSTILE
    hostile.write(folder / "results.json")
    page = _client(folder).get("/").text
    assert "<img" not in page
    assert "window.pwned=2</script>" not in page
    assert page.count("&lt;img src=x onerror=") == 2  # the error and the refusal, as text
    # The figures' JSON block holds no text a node wrote, and nothing that closes the block.
    block = re.search(r'<script type="application/json" id="figures">(.*?)</script>', page, re.S)
    assert block is not None
    assert "onerror" not in block.group(1)
    assert len(json.loads(block.group(1))) == 3 + 1 + 2  # run charts, the ε overview, burn-downs


def test_the_page_allows_scripts_from_its_own_server_only(run_folder: Path) -> None:
    client = _client(run_folder)
    for path in ("/", "/api/state", "/static/dashboard.js"):
        response = client.get(path)
        assert response.status_code == 200, path
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "unsafe-eval" not in policy
    page = client.get("/").text
    assert re.findall(r"<script src=\"([^\"]+)\"", page) == [
        "static/plotly.min.js",
        "static/dashboard.js",
    ]
    assert "http://" not in page
    assert "https://" not in page


def test_plotly_js_is_served_from_the_installed_package(run_folder: Path) -> None:
    response = _client(run_folder).get("/static/plotly.min.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert len(response.content) > 1_000_000
    assert b"plotly.js v" in response.content[:300]


@pytest.mark.parametrize(
    "name", ["..%2F..%2Fresults.json", "page.html.j2", "missing.js", "..%2Fstate.py"]
)
def test_no_route_serves_a_file_by_name(run_folder: Path, name: str) -> None:
    assert _client(run_folder).get(f"/static/{name}").status_code == 404


def test_no_route_writes(run_folder: Path) -> None:
    client = _client(run_folder)
    for path in ("/", "/api/state", "/events"):
        assert client.post(path).status_code == 405
        assert client.delete(path).status_code == 405


def test_a_token_is_needed_when_one_is_set_and_is_kept_in_a_cookie(run_folder: Path) -> None:
    client = _client(run_folder, token=TOKEN)
    refused = client.get("/api/state")
    assert refused.status_code == 401
    assert "token" in refused.text
    assert TOKEN not in refused.text
    assert client.get("/?token=" + "x" * 40).status_code == 401
    assert client.get("/api/state").status_code == 401  # a wrong token sets no cookie
    assert client.get("/api/state").status_code == 401
    assert _client(run_folder, token=TOKEN).get("/static/plotly.min.js").status_code == 401


def test_the_token_in_an_address_is_exchanged_for_a_cookie_and_leaves_the_address(
    run_folder: Path,
) -> None:
    """The address bar, the history and any Referer keep the address without the token."""
    client = _client(run_folder, token=TOKEN)
    exchanged = client.get(f"/?token={TOKEN}")
    assert exchanged.status_code == 303
    assert exchanged.headers["location"] == "/"
    assert exchanged.headers["referrer-policy"] == "no-referrer"
    assert exchanged.headers["cache-control"] == "no-store"
    assert TOKEN not in exchanged.text
    cookie = exchanged.headers["set-cookie"]
    assert f"{COOKIE}=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Secure" not in cookie  # plain HTTP: see the HTTPS case below
    page = client.get("/")  # the cookie alone, as the browser follows the redirect
    assert page.status_code == 200
    assert TOKEN not in page.text
    assert "set-cookie" not in page.headers
    assert client.get("/api/state").status_code == 200
    deep = client.get(f"/api/state?token={TOKEN}&since=3")
    assert (deep.status_code, deep.headers["location"]) == (303, "/api/state?since=3")
    # A path that reads as another host's address is redirected to this server's own path.
    scope = {
        "type": "http",
        "path": "//evil.example/x",
        "query_string": b"token=t&since=3",
        "headers": [],
    }
    assert address_without_token(Request(scope)) == "/evil.example/x?since=3"
    secure = TestClient(
        create_app(run_folder, hosts=LOOPBACK, token=TOKEN, https=True),
        base_url=f"https://127.0.0.1:{PORT}",
        follow_redirects=False,
    ).get(f"/?token={TOKEN}")
    assert "Secure" in secure.headers["set-cookie"]


@pytest.mark.parametrize("token", [None, TOKEN], ids=["loopback without a token", "with a token"])
@pytest.mark.parametrize(
    "host",
    [
        "evil.example:8050",
        "evil.example",
        "127.0.0.1.evil.example:8050",
        "8050",
        "",
        "[::1",
    ],
)
def test_a_request_naming_another_host_is_refused_and_learns_nothing(
    run_folder: Path, host: str, token: str | None
) -> None:
    """DNS rebinding: the attacker's page reaches 127.0.0.1, but its Host is still its own."""
    client = _client(run_folder, token=token)
    for path in ("/", "/api/state", "/events", f"/?token={TOKEN}", "/static/plotly.min.js"):
        response = client.get(path, headers={"host": host})
        assert response.status_code == 400, (host, path)
        assert response.text == UNKNOWN_HOST
        assert "set-cookie" not in response.headers
    served = _client(run_folder, token=token).get("/api/state", cookies={COOKIE: TOKEN}).text
    for secret in ("DE", "FR", "4.0"):  # what the served state shows: countries, their ε
        assert secret in served
        assert secret not in UNKNOWN_HOST


@pytest.mark.parametrize(
    "host", ["127.0.0.1:8050", "localhost:8050", "[::1]:8050", "LOCALHOST:8050", "localhost:9000"]
)
def test_the_hosts_it_serves_are_answered(run_folder: Path, host: str) -> None:
    response = _client(run_folder).get("/api/state", headers={"host": host})
    assert response.status_code == 200


def test_served_hosts_follow_the_address_the_certificate_and_the_operator(
    tmp_path: Path,
) -> None:
    everywhere = served_hosts(host="0.0.0.0", port=8443, extra=["dash.example.org"])
    assert host_allowed("localhost:8443", everywhere, https=True)
    assert host_allowed(f"{socket.gethostname()}:8443", everywhere, https=True)
    assert host_allowed("dash.example.org", everywhere, https=True)  # a proxy's port 443
    assert host_allowed("Dash.Example.Org:9000", everywhere, https=True)
    assert host_allowed("localhost:9000", everywhere, https=True)  # an SSH tunnel's port
    assert not host_allowed(f"{socket.gethostname()}:8050", everywhere, https=True)
    one = served_hosts(host="10.1.2.3", port=443, extra=["proxy.example:8443"])
    assert host_allowed("10.1.2.3", one, https=True)  # the default port, left out
    assert not host_allowed("10.1.2.3", one, https=False)  # plain HTTP's default is 80
    assert not host_allowed("localhost:443", one, https=True)
    assert host_allowed("proxy.example:8443", one, https=True)
    assert not host_allowed("proxy.example", one, https=True)
    folder = init_coordinator(tmp_path / "coordinator", names=["coord.example.org", "10.9.8.7"])
    signed = served_hosts(host="0.0.0.0", port=8050, certfile=folder.tls.server_cert)
    assert host_allowed("coord.example.org:8050", signed, https=True)
    assert host_allowed("10.9.8.7:8050", signed, https=True)
    with pytest.raises(ConfigError, match="--allow-host a b: not a host name"):
        served_hosts(host="127.0.0.1", port=8050, extra=["a b"])


def test_a_coordinator_folder_shows_its_admitted_nodes_and_runs(tmp_path: Path) -> None:
    folder = init_coordinator(tmp_path / "coordinator", names=["localhost"])
    for node_id, country in (("11", "DE"), ("12", "FR")):
        record_admission(
            folder.admitted, AdmittedNode(node_id=node_id, country=country, key_sha256="ab" * 32)
        )
    results(1).write(folder.runs / "4242" / "results.json")
    state = read_state(folder.root)
    assert state.kind == "coordinator"
    assert [(n.country, n.node_id, n.online) for n in state.nodes] == [
        ("DE", "11", False),
        ("FR", "12", False),
    ]
    assert [run.id for run in state.runs] == ["4242"]
    page = _client(folder.root).get("/").text
    assert "4242" in page
    assert "never" in page


def test_an_unreadable_results_file_is_a_problem_shown_not_a_crash(tmp_path: Path) -> None:
    folder = init_coordinator(tmp_path / "coordinator", names=["localhost"])
    results(1).write(folder.runs / "1" / "results.json")
    (folder.runs / "2").mkdir()
    (folder.runs / "2" / "results.json").write_text("{not json")
    state = read_state(folder.root)
    assert [run.id for run in state.runs] == ["1"]
    (problem,) = state.problems
    assert "runs/2/results.json" in problem


def test_the_version_changes_when_a_round_completes(run_folder: Path) -> None:
    before = read_state(run_folder).version
    assert read_state(run_folder).version == before
    results(3).write(run_folder / "results.json")
    assert read_state(run_folder).version != before


def test_a_folder_that_is_neither_kind_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither a coordinator folder") as error:
        create_app(tmp_path, hosts=LOOPBACK)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="no such folder"):
        create_app(tmp_path / "missing", hosts=LOOPBACK)


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["dashboard", *args])
    return result.exit_code, result.output


def test_beyond_loopback_the_command_needs_a_token(run_folder: Path) -> None:
    code, output = _invoke(str(run_folder), "--host", "0.0.0.0", "--port", "0")
    assert code == 2
    assert "--token-file" in output
    assert "127.0.0.1" in output


def test_an_allowed_host_that_is_not_a_name_is_refused(run_folder: Path) -> None:
    code, output = _invoke(str(run_folder), "--allow-host", "dash.example.org/x:1", "--port", "0")
    assert code == 2
    assert "--allow-host dash.example.org/x:1: not a host name" in output


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        (TOKEN, 0o644, "others can read the token; fix: chmod 600"),
        ("short", 0o600, "at least 32 characters"),
        ("a" * 20 + " " + "b" * 20, 0o600, "one word"),
    ],
)
def test_a_weak_or_exposed_token_file_is_refused(
    run_folder: Path, tmp_path: Path, content: str, mode: int, message: str
) -> None:
    token = tmp_path / "token"
    token.write_text(content)
    os.chmod(token, mode)
    code, output = _invoke(str(run_folder), "--token-file", str(token), "--port", "0")
    assert code == 2
    assert message in output
    assert content not in output


def test_a_port_in_use_is_refused_with_a_fix(run_folder: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code, output = _invoke(str(run_folder), "--port", str(port))
    assert code == 2
    assert f"--port {port}: cannot listen" in output
    assert "fix:" in output


def test_a_certificate_that_does_not_load_is_refused_before_listening(
    run_folder: Path, tmp_path: Path
) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    code, output = _invoke(
        str(run_folder),
        "--certfile",
        str(tmp_path / "cert.pem"),
        "--keyfile",
        str(tmp_path / "missing.key"),
        "--port",
        "0",
    )
    assert code == 2
    assert "cannot load them" in output
    assert "fix: a PEM certificate" in output


def test_the_page_names_the_round_whose_model_was_kept(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    done = results(3, status=RunStatus.COMPLETED)
    done.final = FinalResult(
        accuracy=0.7, macro_f1=0.6, per_class={}, model_dir=str(folder / "model"), round=2
    )
    done.write(folder / "results.json")
    page = _client(folder).get("/").text
    assert "final accuracy 70.0%" in page
    assert "(round 2's model, best on the held-out part)" in page


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_prometheus_scrapes_each_runs_rounds_spend_and_outcomes(tmp_path: Path) -> None:
    """Issue 26, point 6: the coordinator's metrics, with the dashboard's token as a bearer."""
    folder = tmp_path / "out"
    results(3, refusal="FR refused round 2: dataset budget 10.00").write(folder / "results.json")
    client = _client(folder, token=TOKEN)
    assert client.get("/metrics").status_code == 401
    answer = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    got = _samples(answer.text)
    (run_id,) = {
        dict(labels)["run"] for name, labels in got if name == "residency_run_rounds_total"
    }
    run = (("run", run_id),)
    assert got[("residency_run_rounds_total", run)] == 3
    assert got[("residency_run_rounds_planned", run)] == 4
    assert got[("residency_run_round_seconds_total", run)] == pytest.approx(4.5)
    assert got[("residency_run_accuracy", run)] == pytest.approx(0.8)
    assert got[("residency_run_bytes_total", (("direction", "up"), *run))] == 6_000
    assert got[("residency_run_dropped_nodes_total", run)] == 1
    assert got[("residency_run_status", (("job", "toy"), *run, ("status", "running")))] == 1
    france = (("country", "FR"), *run)
    assert got[("residency_country_epsilon", france)] == 6.0
    assert got[("residency_country_target_epsilon", france)] == 8.0
    assert got[("residency_country_rounds_total", (*france[:1], ("outcome", "refused"), *run))] == 1
    assert got[("residency_runs_running", ())] == 1


def test_many_countries_share_one_epsilon_chart_and_their_burndowns_fold(tmp_path: Path) -> None:
    """At 30 countries one chart holds every line; each burn-down stays one click away."""
    many = results(2)
    many.privacy = {}
    countries = [f"{a}{b}" for a in "ABC" for b in "ABCDEFGHIJ"]
    for number, done in enumerate(many.rounds, start=1):
        done.nodes = [
            NodeRound(country=c, status=NodeStatus.OK, examples=100, epsilon=number * (1 + i / 30))
            for i, c in enumerate(countries)
        ]
    many.write(tmp_path / "out" / "results.json")

    (run,) = read_state(tmp_path / "out").runs
    overview = run.figures["epsilon"]
    lines = [t for t in overview["data"] if t["name"] != "job target ε"]
    assert [t["name"] for t in lines] == countries
    assert points(overview, "AC") == pytest.approx([1 + 2 / 30, 2 * (1 + 2 / 30)])
    assert points(overview, "job target ε") == [8.0, 8.0]
    assert overview["layout"]["showlegend"] is False  # hover names a line among thirty
    page = _client(tmp_path / "out").get("/").text
    assert re.search(r'id="chart-[^"]+-epsilon"', page)
    assert '<details class="burndowns" data-run="' in page
    assert " open>" not in page  # thirty burn-downs folded under the overview
    assert all(f"burndown-{c}" in run.figures for c in countries)


def test_a_few_countries_show_their_burndowns_open(run_folder: Path) -> None:
    page = _client(run_folder).get("/").text
    assert re.search(r'<details class="burndowns" data-run="[^"]+" open>', page)
