"""The pieces of a deployment, checked without starting servers."""

from __future__ import annotations

import inspect
import ipaddress
import json
import os
import ssl
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from cryptography.x509.verification import PolicyBuilder, Store
from flwr.cli.config_utils import load_and_validate
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec import run_superexec

from node_harness import TEST_LAUNCHER
from residency.cli.bundle import write_bundle
from residency.cli.flower import Coordinator
from residency.client.daemon import NodeDir, explain_supernode_exit, init_node, supernode_command
from residency.client.executor import ForkExecutor
from residency.client.identity import create_identity
from residency.common.config.job import Job, load_job
from residency.common.config.kinds import UpdateKind
from residency.common.config.signed_job import sign_job
from residency.common.errors import ConfigError
from residency.server.admitted_nodes import key_fingerprint
from residency.server.events import RoundStarted, emit, parse
from residency.server.launch import JOB_KEY, JOB_LAUNCHER_KEY, JOB_SIGNATURE_KEY
from residency.server.launch_check import LaunchRefused, accepted_job
from residency.server.tls import create_tls
from toy_federation import write_toy_job

pytestmark = pytest.mark.unit


def test_server_certificate_chains_to_the_ca_for_every_name(tmp_path: Path) -> None:
    files = create_tls(tmp_path, names=["coord.example.org", "10.0.0.5"], common_name="t")
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    leaf = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    verifier = (
        PolicyBuilder().store(Store([ca])).build_server_verifier(x509.DNSName("coord.example.org"))
    )
    verifier.verify(leaf, [])
    ip_verifier = (
        PolicyBuilder()
        .store(Store([ca]))
        .build_server_verifier(x509.IPAddress(ipaddress.ip_address("10.0.0.5")))
    )
    ip_verifier.verify(leaf, [])
    ssl.create_default_context(cafile=str(files.ca_cert))  # loadable as a trust store
    for key in ("ca.key", "server.key"):
        assert (tmp_path / key).stat().st_mode & 0o777 == 0o600


def test_certificate_does_not_verify_for_another_name(tmp_path: Path) -> None:
    files = create_tls(tmp_path, names=["a.example.org"], common_name="t")
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    leaf = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    verifier = (
        PolicyBuilder().store(Store([ca])).build_server_verifier(x509.DNSName("b.example.org"))
    )
    with pytest.raises(x509.verification.VerificationError):
        verifier.verify(leaf, [])


def test_node_identity_is_what_flower_loads(tmp_path: Path) -> None:
    private, public = create_identity(tmp_path, comment="residency-node-DE")
    assert private.stat().st_mode & 0o777 == 0o600
    load_ssh_private_key(private.read_bytes(), password=None)  # SuperNode's loader
    from flwr.cli.supernode.register import try_load_public_key

    assert try_load_public_key(public)  # `flwr supernode register`'s loader
    assert key_fingerprint(public.read_bytes()) == key_fingerprint(
        public.read_bytes().replace(b"residency-node-DE", b"other comment")
    )


def test_node_init_refuses_to_replace_an_admitted_key(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("text,label\na,b\n", encoding="utf-8")
    node = init_node(
        tmp_path / "n", country="DE", data=data, labels=["b", "c"], budget_epsilon=8, delta=1e-5
    )
    key = node.private_key.read_bytes()
    with pytest.raises(ConfigError, match="a node already lives here"):
        init_node(
            tmp_path / "n", country="DE", data=data, labels=["b", "c"], budget_epsilon=8, delta=1e-5
        )
    assert node.private_key.read_bytes() == key
    settings = node.load()
    assert (settings.country, settings.budget_epsilon, settings.delta) == ("DE", 8.0, 1e-5)


def test_supernode_command_authenticates_unless_insecure(tmp_path: Path) -> None:
    data = tmp_path / "d.csv"
    data.write_text("text,label\na,b\n", encoding="utf-8")
    node = init_node(
        tmp_path / "n", country="DE", data=data, labels=["b", "c"], budget_epsilon=8, delta=1e-5
    )
    secure = supernode_command(
        node, node.load(), coordinator="h:1", ca=tmp_path / "ca.pem", insecure=False
    )
    assert "--auth-supernode-private-key" in secure
    assert "--insecure" not in secure
    assert secure[secure.index("--isolation") + 1] == "process"
    assert secure[secure.index("--host") + 1] == "127.0.0.1"
    plain = supernode_command(node, node.load(), coordinator="h:1", ca=None, insecure=True)
    assert "--auth-supernode-private-key" not in plain
    with pytest.raises(ConfigError, match="--ca: missing"):
        supernode_command(node, node.load(), coordinator="h:1", ca=None, insecure=False)


@pytest.mark.parametrize(
    ("log", "phrase"),
    [
        (
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed",
            "not signed by the given CA",
        ),
        ("[code: 2004] Failed to activate SuperNode.", "refused this node's key"),
        ("Exit Code: 303", "needs TLS"),
        ("something else\n", "the SuperNode stopped (something else)"),
    ],
)
def test_supernode_exits_are_explained(log: str, phrase: str) -> None:
    assert phrase in explain_supernode_exit(log, NodeDir(Path("n")), "DE")


def test_bundle_is_a_valid_flower_app_carrying_the_job(tmp_path: Path) -> None:
    job = load_job(write_toy_job(tmp_path / "job"))
    signed = sign_job(job, TEST_LAUNCHER)
    write_bundle(signed, tmp_path / "app")
    config, _ = load_and_validate(tmp_path / "app" / "pyproject.toml", check_module=True)
    shipped = config["tool"]["flwr"]["app"]["config"]
    sent = Job.model_validate(json.loads(shipped[JOB_KEY]))
    assert shipped[JOB_LAUNCHER_KEY] == TEST_LAUNCHER.public_hex
    assert signed.signature == shipped[JOB_SIGNATURE_KEY]
    assert sent.launch is not None  # each signing is a new launch, with its own nonce
    assert sent.train == job.train
    assert sent.privacy == job.privacy
    assert [n.country for n in sent.nodes] == ["DE", "FR", "ES"]
    assert all(n.data is None for n in sent.nodes)  # the launcher's data paths stay home


def test_events_round_trip_and_ignore_other_lines(capsys: pytest.CaptureFixture[str]) -> None:
    emit(RoundStarted(round=2, nodes=3, update=UpdateKind.HEAD))
    line = capsys.readouterr().out
    assert parse(line) == RoundStarted(round=2, nodes=3, update=UpdateKind.HEAD)
    assert parse("INFO : configure_train: Sampled 2 nodes") is None
    assert parse('residency-event {"kind": "round_started", "round": "x"}') is None


def test_a_node_runs_only_its_installed_clientapp_whatever_a_bundle_names(
    tmp_path: Path,
) -> None:
    """A run's bundle names its own ClientApp module; the node never writes or imports it."""
    from flwr.supernode.runtime import run_clientapp as runtime

    import residency.client.client_app

    source = inspect.getsource(runtime.run_clientapp)  # where Flower 1.42 loads the app
    assert "install_from_fab(fab.content" in source
    assert "get_load_client_app_fn(" in source
    ForkExecutor()

    load = runtime.get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
    assert load("attacker/app", "1.0.0", "0" * 64) is residency.client.client_app.app
    before = sorted(tmp_path.rglob("*"))
    runtime.install_from_fab(b"PK not even a zip", tmp_path, skip_prompt=True)
    assert sorted(tmp_path.rglob("*")) == before  # nothing of the bundle lands on the node


def test_the_coordinator_runs_only_its_installed_serverapp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run's bundle names its own ServerApp; the coordinator's runtime never loads it."""
    import importlib

    from residency.server import deployed_app, superlink
    from residency.server.serverapp_task import pin_serverapp
    from residency.server.superexec import SERVERAPP_COMMAND

    runtime = importlib.import_module("flwr.superlink.runtime.run_serverapp")
    assert "server_app_attr=server_app_attr" in inspect.getsource(runtime.run_serverapp)
    called: dict[str, object] = {}
    monkeypatch.setitem(vars(runtime), "run_", lambda **kwargs: called.update(kwargs))
    pin_serverapp()
    runtime.run_(grid=None, server_app_dir="/fab", server_app_attr="evil:app", context=None)
    assert called["loaded_server_app"] is deployed_app.app
    assert "server_app_attr" not in called

    cli = importlib.import_module("flwr.superlink.cli.flower_superlink")
    monkeypatch.setitem(vars(cli), "_get_superexec_command", cli._get_superexec_command)
    superlink.launch_residency_superexec()
    command = cli._get_superexec_command("127.0.0.1:1", None, None, 7, False)
    assert command[1:3] == ["-m", "residency.server.superexec"]
    assert command[-2:] == ["--parent-pid", "7"]
    assert SERVERAPP_COMMAND == "residency-serverapp"


def test_the_coordinator_reads_a_bundle_in_memory_and_never_writes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's bundle gives the run config; no file of it lands in Flower's app folder."""
    import importlib
    import io
    import zipfile

    from residency.server.serverapp_task import pin_serverapp

    runtime = importlib.import_module("flwr.superlink.runtime.run_serverapp")
    source = inspect.getsource(runtime.run_serverapp)
    for call in (
        "install_from_fab(fab.content",
        "get_project_config(app_path)",
        "get_fused_config_from_dir(",
    ):
        assert call in source  # the points Flower 1.42 (pinned) reads the bundle at
    for name in ("run_", "install_from_fab", "get_project_config", "get_fused_config_from_dir"):
        monkeypatch.setitem(vars(runtime), name, vars(runtime)[name])
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    signed = sign_job(load_job(write_toy_job(tmp_path / "job", countries=("DE",))), TEST_LAUNCHER)
    pyproject = write_bundle(signed, tmp_path / "bundle")
    fab = io.BytesIO()
    with zipfile.ZipFile(fab, "w") as archive:
        archive.write(pyproject, "pyproject.toml")

    pin_serverapp()
    app_path = runtime.install_from_fab(fab.getvalue(), skip_prompt=True)
    config = runtime.get_project_config(str(app_path))
    fused = runtime.get_fused_config_from_dir(Path(app_path), {})

    assert not (tmp_path / "flwr").exists()
    assert config["tool"]["flwr"]["app"]["components"]["serverapp"]
    assert fused[JOB_KEY] == signed.body
    assert fused[JOB_SIGNATURE_KEY] == signed.signature


def test_fork_executor_plugs_into_flower_superexec() -> None:
    # Flower builds its executor at exactly one point; the node daemon replaces it there.
    assert "get_executor(" in inspect.getsource(run_superexec.run_superexec)
    executor = ForkExecutor()
    eligible, _ = executor.get_eligible_capacity(set(TaskType))
    assert eligible == {TaskType.CLIENT_APP}


def test_flower_connection_home_is_private_and_temporary(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x", encoding="utf-8")
    with Coordinator(address="h:9092", ca=ca).home() as env:
        home = Path(env["FLWR_HOME"])
        config = tomllib.loads((home / "config.toml").read_text("utf-8"))
        assert config["superlink"]["residency"] == {
            "address": "h:9092",
            "root-certificates": str(ca.resolve()),
        }
        assert env["FLWR_HOME"] != os.environ.get("FLWR_HOME")
    assert not home.exists()


def test_coordinator_refuses_a_job_it_cannot_use(tmp_path: Path) -> None:
    job = load_job(write_toy_job(tmp_path / "job"))
    remote = load_job(tmp_path / "job" / "job.toml", remote=True)
    assert remote.data.test == Path("test.csv")  # as written: the coordinator's folder decides
    trusted = [TEST_LAUNCHER.public_hex]

    def shipped(job: Job) -> dict[str, str]:
        signed = sign_job(job, TEST_LAUNCHER)
        return {
            JOB_KEY: signed.body,
            JOB_LAUNCHER_KEY: signed.launcher,
            JOB_SIGNATURE_KEY: signed.signature,
        }

    got, _ = accepted_job(shipped(remote), tmp_path / "job", trusted)
    assert (got.data, got.model, got.train) == (job.data, job.model, job.train)

    elsewhere = remote.model_copy(
        update={"model": remote.model.model_copy(update={"path": "only-on-the-launcher"})}
    )
    with pytest.raises(LaunchRefused, match=r"^job: model\.path: "):
        accepted_job(shipped(elsewhere), tmp_path / "job", trusted)

    with pytest.raises(LaunchRefused, match="not signed"):
        accepted_job({}, tmp_path / "job", trusted)
