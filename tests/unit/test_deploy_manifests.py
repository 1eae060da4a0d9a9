"""Deployment files under deploy/: valid for the tools that read them, in step with the CLI.

A mistake in a manifest shows only when an institution deploys it, far from this repository.
So every file is checked here, offline: Kubernetes documents against the official OpenAPI
schemas bundled in kubernetes-validate, the Compose file against the Compose specification
vendored in check-jsonschema; the ``residency`` commands they run against the CLI; the
certificate scripts by running them and verifying their output as a TLS client would. The
semantic checks pin what a user relies on: state made by ``init`` is what ``start`` uses,
ports agree, keys come from secrets, data is mounted read-only.
"""

from __future__ import annotations

import configparser
import ipaddress
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
COMPOSE = DEPLOY / "docker" / "compose.yaml"
KUBERNETES = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
OLDEST_KUBERNETES = "1.30.0"
VENV_RESIDENCY = "/opt/residency/.venv/bin/residency"
DEFAULT_PORT = 9092

# The CLI the deploy files may call: command path -> the options they may pass (each takes a
# value). ``coordinator start --insecure`` exists for tests only, so it is not listed.
CLI: Mapping[tuple[str, ...], frozenset[str]] = {
    ("coordinator", "init"): frozenset({"--san", "--host", "--port", "--trust-launcher"}),
    ("coordinator", "start"): frozenset(),
    ("coordinator", "admit"): frozenset({"--country", "--dir"}),
    ("coordinator", "nodes"): frozenset({"--dir"}),
    ("node", "init"): frozenset(
        {
            "--country",
            "--data",
            "--labels",
            "--text-column",
            "--label-column",
            "--budget-epsilon",
            "--delta",
            "--trust-launcher",
        }
    ),
    ("node", "start"): frozenset({"--coordinator", "--ca"}),
    ("run",): frozenset({"--coordinator", "--ca", "--output", "--key"}),
    ("launcher", "init"): frozenset(),
    ("runs",): frozenset({"--coordinator", "--ca"}),
    ("runs", "stop"): frozenset({"--coordinator", "--ca"}),
}

GROUPS = {path[:1] for path in CLI if len(path) > 1}


@dataclass(frozen=True)
class Call:
    """One ``residency`` command line found in a deploy file."""

    where: str
    path: tuple[str, ...]
    arguments: tuple[str, ...]
    options: dict[str, list[str]] = field(hash=False)

    @classmethod
    def parse(cls, where: str, argv: list[str]) -> Call:
        """Split ``argv`` (after ``residency``) into command path, arguments and options."""
        path = max(
            (known for known in CLI if tuple(argv[: len(known)]) == known),
            key=len,
            default=tuple(word for word in argv if not word.startswith("-"))[:2],
        )
        arguments: list[str] = []
        options: dict[str, list[str]] = {}
        rest = iter(argv[len(path) :])
        for word in rest:
            if word.startswith("--"):
                name, _, value = word.partition("=")
                options.setdefault(name, []).append(value or next(rest, ""))
            else:
                arguments.append(word)
        return cls(where, path, tuple(arguments), options)

    def option(self, name: str) -> str:
        """The one value of option ``name``."""
        (value,) = self.options[name]
        return value


def residency_argvs(words: list[str]) -> Iterator[list[str]]:
    """The argv after each ``residency`` (or ``.../residency``) run as a program.

    Not an option's value (``sudo -u residency``, ``kubectl -n residency``), and followed by a
    command name.
    """
    for at, word in enumerate(words[:-1]):
        before = words[at - 1] if at else ""
        if (
            PurePosixPath(word).name == "residency"
            and (before == "--" or not before.startswith("-"))
            and words[at + 1][:1].isalpha()
        ):
            yield words[at + 1 :]


def shell_calls(where: str, script: str) -> list[Call]:
    """The ``residency`` commands in a POSIX shell script, one per simple command."""
    calls = []
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for word in [*lexer, ";"]:
            if word in {"{", "}", "!"} or set(word) <= set("();<>|&"):
                calls += [Call.parse(where, argv) for argv in residency_argvs(command)]
                command = []
            else:
                command.append(word)
    return calls


def container_calls(where: str, container: Mapping[str, Any]) -> list[Call]:
    """The ``residency`` commands a container runs (image entrypoint: ``residency``)."""
    command, args = container.get("command"), container.get("args")
    if command is None:
        return [Call.parse(where, list(args or []))]
    if command[:1] == ["/bin/sh"]:
        return shell_calls(where, args[-1] if args else command[-1])
    return [Call.parse(where, argv) for argv in residency_argvs([*command, *(args or [])])]


def markdown_calls(path: Path) -> list[Call]:
    """The ``residency`` commands in a Markdown file's code blocks and inline code."""
    text = path.read_text(encoding="utf-8")
    fenced = re.findall(r"^```\w*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    inline = [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    return [call for block in [*fenced, *inline] for call in shell_calls(str(path), block)]


def read_unit(path: Path) -> configparser.ConfigParser:
    """A systemd unit as sections of settings (a repeated setting keeps its last value)."""
    unit = configparser.ConfigParser(
        strict=False, interpolation=None, delimiters=("=",), comment_prefixes=("#", ";")
    )
    unit.optionxform = str  # type: ignore[assignment, method-assign]
    unit.read(path, encoding="utf-8")
    return unit


def unit_call(path: Path) -> Call:
    (call,) = [
        Call.parse(str(path), argv)
        for argv in residency_argvs(shlex.split(read_unit(path)["Service"]["ExecStart"]))
    ]
    return call


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def compose_calls(name: str, service: Mapping[str, Any]) -> list[Call]:
    entrypoint = service.get("entrypoint")
    return container_calls(
        f"{COMPOSE}:{name}",
        {"command": entrypoint, "args": service["command"]}
        if entrypoint
        else {"args": service.get("command")},
    )


SHORT_VOLUME = re.compile(r"(?P<source>\$\{[^}]*\}|[^:]+):(?P<target>[^:]+)(?::(?P<mode>\w+))?")


def compose_mounts(service: Mapping[str, Any]) -> dict[str, tuple[str, bool]]:
    """Mount target -> (source, read-only) for a service's short-syntax volumes."""
    mounts = {}
    for volume in service.get("volumes", []):
        parsed = SHORT_VOLUME.fullmatch(volume)
        assert parsed, f"{volume}: not a short-syntax volume"
        mounts[parsed["target"]] = (parsed["source"], parsed["mode"] == "ro")
    return mounts


def kubernetes_documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in KUBERNETES
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc
    ]


def kubernetes_object(kind: str, component: str) -> dict[str, Any]:
    (found,) = [
        doc
        for _, doc in kubernetes_documents()
        if doc["kind"] == kind
        and doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
    ]
    return found


def all_calls() -> list[Call]:
    calls = [unit_call(path) for path in sorted(SYSTEMD.glob("*.service"))]
    calls += [c for name, s in compose()["services"].items() for c in compose_calls(name, s)]
    for where, doc in kubernetes_documents():
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            calls += container_calls(f"{where}:{container['name']}", container)
    return calls + markdown_calls(DEPLOY / "README.md")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Expand ``$(NAME)`` (Kubernetes), ``${NAME}`` and ``$NAME`` (shell) from ``env``."""
    return re.sub(
        r"\$\((\w+)\)|\$\{(\w+)\}|\$(\w+)", lambda m: env[next(g for g in m.groups() if g)], value
    )


def under(path: str, folder: str) -> bool:
    return PurePosixPath(path).is_relative_to(folder)


# The CLI ------------------------------------------------------------------------------------


def test_deploy_files_call_only_the_documented_commands() -> None:
    calls = all_calls()

    used = {call.path for call in calls}
    assert used >= {
        ("coordinator", "init"),
        ("coordinator", "start"),
        ("coordinator", "admit"),
        ("node", "init"),
        ("node", "start"),
    }
    for call in calls:
        if call.path in GROUPS and not (call.arguments or call.options):
            continue  # prose naming a command group
        assert call.path in CLI, f"{call.where}: unknown command residency {' '.join(call.path)}"
        unknown = set(call.options) - CLI[call.path]
        assert not unknown, f"{call.where}: residency {' '.join(call.path)}: {sorted(unknown)}"
        assert all(call.options.values()), f"{call.where}: an option without a value"


def test_deploy_commands_exist_in_the_installed_cli() -> None:
    """Resolve every command line on the real Typer app: its help lists these commands."""
    import click
    import typer.main

    from residency.cli.main import app

    root = typer.main.get_command(app)
    for call in all_calls():
        command: click.Command = root
        for name in call.path:
            assert isinstance(command, click.Group), f"{call.where}: {name}: not a command group"
            found = command.get_command(click.Context(command), name)
            assert found is not None, f"{call.where}: `residency {' '.join(call.path)}` is missing"
            command = found
        known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        missing = set(call.options) - known
        assert not missing, f"{call.where}: residency {' '.join(call.path)}: no {sorted(missing)}"
        required = {
            param.opts[0]
            for param in command.params
            if isinstance(param, click.Option) and param.required
        }
        if call.options or call.arguments:  # a full command line, not prose naming it
            lacking = required - set(call.options)
            assert not lacking, f"{call.where}: residency {' '.join(call.path)}: {sorted(lacking)}"


# systemd ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "unit_file",
    sorted(SYSTEMD.glob("*.service")),
    ids=lambda path: path.name,
)
def test_systemd_unit_runs_hardened_as_a_dedicated_user(unit_file: Path) -> None:
    unit = read_unit(unit_file)
    service = unit["Service"]
    call = unit_call(unit_file)
    (folder,) = call.arguments

    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in unit["Unit"]["After"]
    assert shlex.split(service["ExecStart"])[0] == VENV_RESIDENCY
    assert call.path[1] == "start"
    assert service["User"] == "residency"
    assert service["KillSignal"] == "SIGINT"
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    assert service["ProtectHome"] == "yes"
    assert service["CapabilityBoundingSet"] == ""
    assert folder == f"/var/lib/{service['StateDirectory']}"
    assert folder in service["ReadWritePaths"].split()


def test_systemd_node_unit_takes_its_settings_from_the_instance_env_file() -> None:
    unit_file = SYSTEMD / "residency-node@.service"
    service = read_unit(unit_file)["Service"]
    call = unit_call(unit_file)
    example = dict(
        line.split("=", 1)
        for line in (SYSTEMD / "node.env.example").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    )

    assert service["EnvironmentFile"] == "/etc/residency/node-%i.env"
    assert call.arguments == ("/var/lib/residency/node-%i",)
    assert call.options == {
        "--coordinator": ["${RESIDENCY_COORDINATOR}"],
        "--ca": ["${RESIDENCY_CA}"],
    }
    host, _, port = expand(call.option("--coordinator"), example).rpartition(":")
    assert host
    assert int(port) == DEFAULT_PORT
    assert expand(call.option("--ca"), example).endswith(".pem")


# Docker -------------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    """check-jsonschema validates against the Compose schema vendored in its wheel: offline."""
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            COMPOSE,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_compose_services_stop_with_sigint_and_start_from_their_init_state() -> None:
    spec = compose()
    services = spec["services"]
    once = {
        name
        for service in services.values()
        for name, wait in service.get("depends_on", {}).items()
        if wait["condition"] == "service_completed_successfully"
    }
    starts = [
        (name, call)
        for name, service in services.items()
        for call in compose_calls(name, service)
        if call.path[1:] == ("start",)
    ]

    assert {call.path for _, call in starts} == {("coordinator", "start"), ("node", "start")}
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name}: depends on unknown {dependency}"
        for source, _ in compose_mounts(service).values():
            assert source.startswith(("$", ".", "/")) or source in spec["volumes"], source
        if name not in once:
            assert service.get("stop_signal") == "SIGINT", f"{name}: SuperLink needs SIGINT"
            assert service.get("restart") == "unless-stopped", name
    inits = {
        (call.path[0], call.arguments[0], compose_mounts(services[name])[call.arguments[0]][0])
        for name in once
        for call in compose_calls(name, services[name])
        if call.path[1:] == ("init",)
    }
    states = []
    for name, call in starts:
        (folder,) = call.arguments
        volume = compose_mounts(services[name])[folder][0]
        assert (call.path[0], folder, volume) in inits, f"{name}: {folder} ({volume}) not made"
        states.append(volume)
    assert len(set(states)) == len(states), f"two processes share one state volume: {states}"


def test_compose_nodes_reach_the_coordinator_by_a_certificate_name() -> None:
    services = compose()["services"]
    calls = [c for name, s in services.items() for c in compose_calls(name, s)]
    (init,) = [call for call in calls if call.path == ("coordinator", "init")]
    port = int(init.options.get("--port", [DEFAULT_PORT])[0])
    health = " ".join(services["coordinator"]["healthcheck"]["test"])
    node_starts = [call for call in calls if call.path == ("node", "start")]

    assert f", {port})" in health
    assert f"127.0.0.1:{port}:{port}" in services["coordinator"]["ports"]
    assert len(node_starts) == 2
    for call in node_starts:
        host, _, dialled = call.option("--coordinator").rpartition(":")
        assert host in init.options["--san"], call.where
        assert int(dialled) == port, call.where
        assert call.option("--ca") in services["coordinator-init"]["command"][0], call.where


def test_compose_node_data_is_read_only_and_private_keys_stay_with_their_role() -> None:
    services = compose()["services"]
    node_volumes = {"node-de", "node-fr"}

    for name, service in services.items():
        mounts = compose_mounts(service)
        roles = {call.path[0] for call in compose_calls(name, service)}
        if "/data" in mounts:
            assert mounts["/data"][1], f"{name}: node data must be mounted read-only"
        sources = {source for source, _ in mounts.values()}
        if roles == {"node"}:
            assert "coordinator" not in sources, name
            assert len(sources & node_volumes) == 1, name
        if roles == {"coordinator"}:
            assert not sources & node_volumes, name


def test_docker_image_is_non_root_and_owns_every_volume_it_mounts() -> None:
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text(encoding="utf-8")
    ignored = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]
    spec = compose()
    targets = {
        target
        for service in spec["services"].values()
        for target, (source, _) in compose_mounts(service).items()
        if source in spec["volumes"]
    }

    assert "\nFROM python:3.11-slim\n" in dockerfile
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in dockerfile
    assert "\nUSER residency\n" in dockerfile
    assert '\nENTRYPOINT ["residency"]\n' in dockerfile
    assert "--uid 10001" in dockerfile
    for target in targets:
        assert target in dockerfile, f"{target}: not created for the residency user"
    for folder in {*setuptools["setuptools"]["packages"]["find"]["where"], "pyproject.toml"}:
        assert f"\n!{folder}\n" in ignored, f"{folder}: left out of the build context"


# Kubernetes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, kubernetes_validate.latest_version()])
@pytest.mark.parametrize(
    "document", [pytest.param(doc, id=name) for name, doc in kubernetes_documents()]
)
def test_kubernetes_document_matches_the_official_schema(
    document: dict[str, Any], version: str
) -> None:
    """Strict: unknown fields fail too. The schemas ship in kubernetes-validate: offline."""
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{'.'.join(map(str, error.path))}: {error.message}")
    except kubernetes_validate.utils.SchemaNotFoundError as error:
        pytest.fail(error.message)


@pytest.mark.parametrize("component", ["coordinator", "node"])
def test_kubernetes_pods_run_confined_with_limits_and_time_to_stop(component: str) -> None:
    kind = "StatefulSet" if component == "coordinator" else "Deployment"
    workload = kubernetes_object(kind, component)
    pod = workload["spec"]["template"]["spec"]

    assert workload["spec"]["replicas"] == 1
    assert workload["spec"]["selector"]["matchLabels"].items() <= (
        workload["spec"]["template"]["metadata"]["labels"].items()
    )
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["terminationGracePeriodSeconds"] >= 30
    for container in [*pod["initContainers"], *pod["containers"]]:
        confined = container["securityContext"]
        assert confined["readOnlyRootFilesystem"] is True, container["name"]
        assert confined["allowPrivilegeEscalation"] is False, container["name"]
        assert confined["capabilities"]["drop"] == ["ALL"], container["name"]
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) == {"cpu", "memory"}, container["name"]


def test_kubernetes_coordinator_keeps_its_folder_on_a_claim_and_serves_its_port() -> None:
    workload = kubernetes_object("StatefulSet", "coordinator")
    service = kubernetes_object("Service", "coordinator")
    pod = workload["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (main,) = pod["containers"]
    (start,) = container_calls("coordinator", main)
    (made,) = container_calls("coordinator init", init)
    (folder,) = start.arguments
    claims = {claim["metadata"]["name"] for claim in workload["spec"]["volumeClaimTemplates"]}
    (port,) = main["ports"]
    (exposed,) = service["spec"]["ports"]
    labels = workload["spec"]["template"]["metadata"]["labels"]

    assert start.path == ("coordinator", "start")
    assert made.path == ("coordinator", "init")
    assert made.arguments == (folder,)
    for container in (init, main):
        mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounted.get(folder) in claims, f"{container['name']}: {folder} not on the claim"
    assert port["containerPort"] == int(made.options.get("--port", [DEFAULT_PORT])[0])
    assert exposed["port"] == DEFAULT_PORT
    assert exposed["targetPort"] in {port["name"], port["containerPort"]}
    assert main["readinessProbe"]["tcpSocket"]["port"] in {port["name"], port["containerPort"]}
    assert service["spec"]["selector"].items() <= labels.items()
    assert workload["spec"]["serviceName"] == service["metadata"]["name"]


def test_kubernetes_node_key_comes_from_a_secret_and_data_is_read_only() -> None:
    workload = kubernetes_object("Deployment", "node")
    settings = kubernetes_object("ConfigMap", "node")["data"]
    pod = workload["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    (init,) = pod["initContainers"]
    (main,) = pod["containers"]
    (start,) = container_calls("node", main)
    (made,) = container_calls("node init", init)
    (folder,) = start.arguments
    script = init["args"][0]

    def mounts(container: Mapping[str, Any], kind: str) -> dict[str, Mapping[str, Any]]:
        return {m["mountPath"]: m for m in container["volumeMounts"] if kind in volumes[m["name"]]}

    assert workload["spec"]["strategy"]["type"] == "Recreate"
    assert start.path == ("node", "start")
    assert made.path == ("node", "init")
    assert made.arguments == (folder,)
    for container in (init, main):
        assert {ref["configMapRef"]["name"] for ref in container["envFrom"]} == {
            kubernetes_object("ConfigMap", "node")["metadata"]["name"]
        }
        claims = mounts(container, "persistentVolumeClaim")
        assert folder in claims, f"{container['name']}: node state must outlive the pod"
        assert not claims[folder].get("readOnly", False)
    secret_dirs = list(mounts(init, "secret"))
    assert len(secret_dirs) == 1, "init: the node key must come from one Secret volume"
    (secret_dir,) = secret_dirs
    assert f"{secret_dir}/node.key {folder}/keys/node.key" in script
    assert "install -m 600" in script
    assert any(under(start.option("--ca"), path) for path in mounts(main, "secret"))
    host, _, port = expand(start.option("--coordinator"), settings).rpartition(":")
    assert host
    assert int(port) == DEFAULT_PORT
    data = expand(made.option("--data"), settings)
    data_mounts = [
        mount
        for container in (init, main)
        for path, mount in mounts(container, "persistentVolumeClaim").items()
        if under(data, path)
    ]
    assert len(data_mounts) == 2, f"{data}: not on a claim in both containers"
    for mount in data_mounts:
        assert mount.get("readOnly") is True, f"{data}: data must be mounted read-only"
        assert volumes[mount["name"]]["persistentVolumeClaim"].get("readOnly") is True, data


# Certificates -------------------------------------------------------------------------------


def public_der(key: Any) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def run_script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not on PATH; deploy/certs/*.sh need it: apt-get install openssl")
    return subprocess.run(
        [str(DEPLOY / "certs" / name), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_cert_scripts_make_a_server_certificate_a_tls_client_accepts(tmp_path: Path) -> None:
    hosts = ["coordinator.example.org", "localhost", "10.0.0.5", "::1"]

    for made in (
        run_script("make-ca.sh", "-d", "tls", cwd=tmp_path),
        run_script("make-server-cert.sh", "-d", "tls", *hosts, cwd=tmp_path),
    ):
        assert made.returncode == 0, made.stdout + made.stderr
    tls = tmp_path / "tls"
    ca = x509.load_pem_x509_certificate((tls / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((tls / "server.pem").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    usages = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value

    assert sorted(path.name for path in tls.iterdir()) == [
        "ca.key",
        "ca.pem",
        "server.key",
        "server.pem",
    ]
    for cert, key in ((ca, "ca.key"), (server, "server.key")):
        assert stat.S_IMODE((tls / key).stat().st_mode) == 0o600, key
        private = serialization.load_pem_private_key((tls / key).read_bytes(), password=None)
        assert public_der(private.public_key()) == public_der(cert.public_key()), key
    assert set(names.get_values_for_type(x509.DNSName)) == set(hosts[:2])
    assert set(names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(host) for host in hosts[2:]
    }
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    store = Store([ca])
    for subject in [x509.DNSName(host) for host in hosts[:2]] + [
        x509.IPAddress(ipaddress.ip_address(host)) for host in hosts[2:]
    ]:
        chain = PolicyBuilder().store(store).build_server_verifier(subject).verify(server, [])
        assert chain[-1] == ca
    with pytest.raises(VerificationError):
        PolicyBuilder().store(store).build_server_verifier(x509.DNSName("other.org")).verify(
            server, []
        )


def test_cert_scripts_refuse_bad_arguments_and_never_replace_keys(tmp_path: Path) -> None:
    no_host = run_script("make-server-cert.sh", cwd=tmp_path)
    stray = run_script("make-ca.sh", "extra", cwd=tmp_path)
    bad_host = run_script("make-server-cert.sh", "not a host", cwd=tmp_path)
    no_ca = run_script("make-server-cert.sh", "example.org", cwd=tmp_path)

    for refused in (no_host, stray, bad_host):
        assert refused.returncode == 2, refused.stderr
        assert "usage:" in refused.stderr
    assert no_ca.returncode == 1
    assert "make-ca.sh" in no_ca.stderr
    assert run_script("make-ca.sh", cwd=tmp_path).returncode == 0
    key = (tmp_path / "ca.key").read_bytes()
    again = run_script("make-ca.sh", cwd=tmp_path)
    assert again.returncode == 1
    assert "refusing" in again.stderr
    assert (tmp_path / "ca.key").read_bytes() == key
