"""Deployment commands given bad input: one line naming the file/flag and the fix, no debris."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deployment_harness import free_port
from toy_federation import write_toy_job

pytestmark = [pytest.mark.e2e]

RESIDENCY = shutil.which("residency") or str(Path(sys.executable).parent / "residency")


def residency(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [RESIDENCY, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def error_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.fixture
def coordinator(tmp_path: Path) -> Path:
    done = residency("coordinator", "init", "coord", "--san", "127.0.0.1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return tmp_path / "coord"


def test_coordinator_init_writes_ca_and_private_keys(coordinator: Path) -> None:
    assert (coordinator / "coordinator.toml").is_file()
    for key in ("ca.key", "server.key"):
        assert (coordinator / "tls" / key).stat().st_mode & 0o777 == 0o600
    assert (coordinator / "tls" / "ca.pem").is_file()


def test_coordinator_init_twice_keeps_the_ca(coordinator: Path, tmp_path: Path) -> None:
    ca = (coordinator / "tls" / "ca.pem").read_bytes()
    line = error_line(
        residency("coordinator", "init", "coord", "--san", "127.0.0.1", cwd=tmp_path), 2
    )
    assert "coordinator.toml: a coordinator already lives here; fix:" in line
    assert (coordinator / "tls" / "ca.pem").read_bytes() == ca


def test_coordinator_init_rejects_bad_names(tmp_path: Path) -> None:
    line = error_line(residency("coordinator", "init", "c", "--san", "bad name!", cwd=tmp_path), 2)
    assert "--san" in line
    assert "fix:" in line
    assert not (tmp_path / "c").exists()


def test_coordinator_start_without_init(tmp_path: Path) -> None:
    line = error_line(residency("coordinator", "start", "nowhere", cwd=tmp_path), 2)
    assert "coordinator.toml: not found; fix: run `residency coordinator init" in line


def test_coordinator_refuses_tls_without_node_auth(coordinator: Path, tmp_path: Path) -> None:
    line = error_line(residency("coordinator", "start", "coord", "--no-node-auth", cwd=tmp_path), 2)
    assert "--no-node-auth" in line


def test_commands_needing_a_running_coordinator_say_so(coordinator: Path, tmp_path: Path) -> None:
    line = error_line(residency("coordinator", "nodes", "--dir", "coord", cwd=tmp_path), 4)
    assert "coordinator start" in line


@pytest.mark.parametrize(
    ("flags", "phrase"),
    [
        (["--country", "Germany"], "--country"),
        (["--budget-epsilon", "-1"], "--budget-epsilon"),
        (["--delta", "2"], "--delta"),
    ],
    ids=["country", "budget", "delta"],
)
def test_node_init_bad_flags(tmp_path: Path, flags: list[str], phrase: str) -> None:
    (tmp_path / "d.csv").write_text("text,label\na,b\n", encoding="utf-8")
    base = {
        "--country": "DE",
        "--data": "d.csv",
        "--labels": "b,c",
        "--budget-epsilon": "8",
        "--delta": "1e-5",
    }
    base.update(dict(zip(flags[::2], flags[1::2], strict=True)))
    args = [item for pair in base.items() for item in pair]
    line = error_line(residency("node", "init", "n", *args, cwd=tmp_path), 2)
    assert phrase in line
    assert "fix:" in line
    assert not (tmp_path / "n" / "node.toml").exists()


def test_node_init_missing_data(tmp_path: Path) -> None:
    line = error_line(
        residency(
            "node",
            "init",
            "n",
            "--country",
            "DE",
            "--data",
            "none.csv",
            "--labels",
            "b,c",
            "--budget-epsilon",
            "8",
            "--delta",
            "1e-5",
            cwd=tmp_path,
        ),
        2,
    )
    assert "--data: none.csv: file not found; fix:" in line
    assert not (tmp_path / "n").exists()


def test_node_init_writes_operator_settings_and_key(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("text,label\na,b\n", encoding="utf-8")
    init = ("node", "init", "n", "--data", "d.csv", "--labels", "b,c")
    init += ("--budget-epsilon", "4", "--delta", "1e-6")
    done = residency(*init, "--country", "de", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    settings = (tmp_path / "n" / "node.toml").read_text("utf-8")
    assert 'country = "DE"' in settings
    assert "budget_epsilon = 4.0" in settings
    assert (tmp_path / "n" / "keys" / "node.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "n" / "keys" / "node.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    again = residency(*init, "--country", "DE", cwd=tmp_path)
    assert "a node already lives here" in error_line(again, 2)

    missing_ca = residency(
        "node", "start", "n", "--coordinator", "127.0.0.1:1", "--ca", "ca.pem", cwd=tmp_path
    )
    assert "--ca: ca.pem: file not found; fix:" in error_line(missing_ca, 2)


def test_admit_bad_input(coordinator: Path, tmp_path: Path) -> None:
    line = error_line(
        residency(
            "coordinator", "admit", "x.pub", "--country", "DE", "--dir", "coord", cwd=tmp_path
        ),
        2,
    )
    assert "x.pub: file not found; fix:" in line
    line = error_line(
        residency(
            "coordinator", "admit", "x.pub", "--country", "DEU", "--dir", "coord", cwd=tmp_path
        ),
        2,
    )
    assert "--country" in line


def test_run_bad_input(tmp_path: Path) -> None:
    job = write_toy_job(tmp_path / "job", countries=("DE",))
    port = free_port()
    line = error_line(
        residency("run", str(job), "--coordinator", f"127.0.0.1:{port}", cwd=tmp_path), 2
    )
    assert "--ca: missing; fix:" in line

    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate", encoding="utf-8")
    reach = ("--coordinator", f"127.0.0.1:{port}", "--ca", str(ca), "-o", "out")
    line = error_line(residency("run", str(job), *reach, cwd=tmp_path), 2)
    assert line.startswith("error: --key: missing; fix: pass your launcher key")
    line = error_line(residency("run", str(job), *reach, "--key", str(ca), cwd=tmp_path), 2)
    assert line.startswith(f"error: --key: {ca}: not an OpenSSH private key")

    made = residency("launcher", "init", "me", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    public = (tmp_path / "me" / "launcher.key.pub").read_text("utf-8")
    assert "trusted_launchers" in made.stdout
    assert error_line(residency("launcher", "init", "me", cwd=tmp_path), 2).startswith(
        f"error: {Path('me') / 'launcher.key'}: a launcher key already lives here"
    )
    assert public == (tmp_path / "me" / "launcher.key.pub").read_text("utf-8")  # unchanged
    key = str(tmp_path / "me" / "launcher.key")
    down = residency("run", str(job), *reach, "--key", key, cwd=tmp_path)
    assert "the run did not start" in error_line(down, 4)

    no_nodes = tmp_path / "empty.toml"
    no_nodes.write_text(
        '[data]\nlabels = ["a", "b"]\n[privacy]\ntarget_epsilon = 1.0\n', encoding="utf-8"
    )
    line = error_line(
        residency("run", str(no_nodes), "--coordinator", "h:1", "--ca", str(ca), cwd=tmp_path), 2
    )
    assert "nodes: no [[nodes]] tables; fix:" in line

    line = error_line(residency("runs", cwd=tmp_path), 2)
    assert "--coordinator: missing" in line
