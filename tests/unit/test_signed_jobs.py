"""Jobs run only when a launcher the operator trusts signed them, exactly as signed.

Checked on both sides a hostile launcher or coordinator could reach: the coordinator, before
it opens any file the job names, and a node, before it charges anything. A trained round's
record, naming its launcher and its job, is checked in ``tests/node/test_signed_jobs_record.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node_harness import TEST_LAUNCHER, node_file, train_round
from residency.client.budget_store import STORE_FILE, BudgetStore
from residency.common.config.job import Job, TrackingSection, load_job
from residency.common.config.signed_job import SignedJob, UntrustedJob, open_job, sign_job
from residency.common.errors import PolicyViolation
from residency.common.privacy.signing import Signer, key_id
from residency.common.refusal import RefusalCode
from residency.server.launch import JOB_KEY, JOB_LAUNCHER_KEY, JOB_SIGNATURE_KEY
from residency.server.launch_check import LaunchRefused, accepted_job
from toy_federation import write_toy_job

STRANGER = Signer(Ed25519PrivateKey.generate())


@pytest.fixture
def job(tmp_path: Path) -> Job:
    return load_job(write_toy_job(tmp_path / "job", countries=("DE",), examples=40, rounds=1))


def _edited(signed: SignedJob) -> SignedJob:
    """The same signature over a job whose target epsilon was raised after signing."""
    body = json.loads(signed.body)
    body["privacy"]["target_epsilon"] = 50.0
    edited = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return signed.model_copy(update={"body": edited})


@pytest.mark.unit
def test_only_a_trusted_unedited_signature_opens_a_job(job: Job) -> None:
    signed = sign_job(job, TEST_LAUNCHER)
    trusted = [TEST_LAUNCHER.public_hex]

    opened = open_job(signed, trusted, operator="node.toml")

    assert opened.privacy == job.privacy
    assert opened.train == job.train
    with pytest.raises(UntrustedJob, match="not signed; fix: launch it with `residency run"):
        open_job(None, trusted, operator="node.toml")
    stranger = sign_job(job, STRANGER)
    with pytest.raises(UntrustedJob) as untrusted:
        open_job(stranger, trusted, operator="node.toml")
    assert str(untrusted.value) == (
        f"job: signed by launcher key {key_id(STRANGER.public_hex)}, which node.toml does not "
        "trust; fix: the operator adds the key to trusted_launchers in node.toml"
    )
    with pytest.raises(UntrustedJob, match="does not match the job"):
        open_job(_edited(signed), trusted, operator="node.toml")


def _run_config(signed: SignedJob | None) -> dict[str, str]:
    if signed is None:
        return {}
    return {
        JOB_KEY: signed.body,
        JOB_LAUNCHER_KEY: signed.launcher,
        JOB_SIGNATURE_KEY: signed.signature,
    }


@pytest.mark.unit
@pytest.mark.parametrize("case", ["unsigned", "untrusted", "edited"])
def test_the_coordinator_refuses_before_it_reads_a_file(
    job: Job, tmp_path: Path, case: str
) -> None:
    data = tmp_path / "coordinator-data"
    data.mkdir()
    (data / "test.csv").symlink_to("/etc/passwd")  # a read would be a refusal quoting it
    signed = {
        "unsigned": None,
        "untrusted": sign_job(job, STRANGER),
        "edited": _edited(sign_job(job, TEST_LAUNCHER)),
    }[case]

    with pytest.raises(LaunchRefused) as refused:
        accepted_job(_run_config(signed), data, [TEST_LAUNCHER.public_hex])

    message = str(refused.value)
    assert message.startswith("job: ")
    assert "coordinator.toml" in message or "does not match" in message
    assert "root" not in message


@pytest.mark.unit
def test_the_coordinator_refuses_a_launched_job_naming_where_it_tracks(
    job: Job, tmp_path: Path
) -> None:
    tracked = job.model_copy(update={"tracking": TrackingSection(experiment="x")})
    body = json.loads(sign_job(tracked, TEST_LAUNCHER).body)
    body["tracking"]["uri"] = "sqlite:////etc/x.db"  # signed by hand: sign_job never signs it
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    signed = SignedJob(
        body=text,
        launcher=TEST_LAUNCHER.public_hex,
        signature=TEST_LAUNCHER.sign(text.encode("ascii")),
    )

    with pytest.raises(LaunchRefused) as refused:
        accepted_job(_run_config(signed), tmp_path / "job", [TEST_LAUNCHER.public_hex])

    said = str(refused.value)
    assert said.startswith("signed job: tracking.uri: a launched job cannot choose where"), said


@pytest.mark.unit
def test_the_coordinator_runs_a_trusted_job(job: Job, tmp_path: Path) -> None:
    signed = sign_job(job, TEST_LAUNCHER)

    got, relayed = accepted_job(_run_config(signed), tmp_path / "job", [TEST_LAUNCHER.public_hex])

    assert relayed == signed
    assert got.privacy == job.privacy


@pytest.mark.unit
@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ({"launcher": None}, "job: not signed"),
        ({"launcher": STRANGER}, "which node.toml does not trust"),
        ({"overrides": {"target-epsilon": 50.0}, "resign": False}, "(target-epsilon)"),
        ({"overrides": {"rounds": 9, "countries": ["DE", "FR"]}, "resign": False}, "countries"),
    ],
)
def test_a_node_reached_directly_refuses_before_any_charge(
    job: Job, tmp_path: Path, how: dict[str, object], expected: str
) -> None:
    settings = node_file(tmp_path, 100.0)

    with pytest.raises(PolicyViolation) as refused:
        train_round(job, settings, run_id=1, server_round=1, **how)  # type: ignore[arg-type]

    assert refused.value.refusal.code is RefusalCode.UNTRUSTED_JOB
    assert expected in str(refused.value)
    assert BudgetStore(tmp_path / "state" / STORE_FILE).charges() == []


@pytest.mark.unit
def test_a_node_with_no_trusted_launcher_refuses_every_job(job: Job, tmp_path: Path) -> None:
    settings = node_file(tmp_path, 100.0, extra="trusted_launchers = []\n")

    with pytest.raises(PolicyViolation, match=r"which node\.toml does not trust"):
        train_round(job, settings, run_id=1, server_round=1)
    assert BudgetStore(tmp_path / "state" / STORE_FILE).charges() == []


@pytest.mark.unit
def test_a_simulations_tracking_uri_is_never_signed_into_the_job_nodes_see(job: Job) -> None:
    tracked = job.model_copy(update={"tracking": TrackingSection(uri="sqlite:////tmp/m.db")})

    signed = sign_job(tracked, TEST_LAUNCHER)

    opened = open_job(signed, [TEST_LAUNCHER.public_hex], operator="node.toml")
    assert opened.tracking == TrackingSection()  # nodes open it: the uri is the simulation's
    assert "m.db" not in signed.body
