"""What one coordinator receives says nothing of another's use of the same data (issue 24, 6).

A record names the dataset by a pseudonym per launcher, numbers its charge within its own
signed job, and no longer states the dataset's lifetime spend: that stays in the node's own
ledger, where an auditor holding it still checks the lifetime against the budget.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node_harness import TEST_LAUNCHER, charge_details, node_file, signed_record, train_round
from residency.auditor.verify import load_keys, verify_ledger
from residency.common import wire
from residency.common.config.job import Job, load_job
from residency.common.privacy.signing import Signer
from toy_federation import write_toy_job

pytestmark = [
    pytest.mark.node,
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
]

OTHER_LAUNCHER = Signer(Ed25519PrivateKey.generate())


def _job(tmp_path: Path) -> Job:
    return load_job(
        write_toy_job(
            tmp_path / "job", countries=("DE",), rounds=2, examples=40, train='update = "head"'
        )
    )


def _settings(tmp_path: Path) -> Path:
    trusted = f'"{TEST_LAUNCHER.public_hex}", "{OTHER_LAUNCHER.public_hex}"'
    return node_file(tmp_path, 100.0, extra=f"trusted_launchers = [{trusted}]\n")


def test_a_dataset_has_one_name_per_launcher_and_none_across_launchers(tmp_path: Path) -> None:
    job, settings = _job(tmp_path), _settings(tmp_path)
    replies = [
        train_round(job, settings, run_id=run_id, server_round=1, launcher=launcher)
        for run_id, launcher in ((1, TEST_LAUNCHER), (2, TEST_LAUNCHER), (3, OTHER_LAUNCHER))
    ]
    records = [signed_record(reply) for reply in replies]
    sent = [str(r.content.config_records[wire.NODE][wire.DATASET_ACCOUNT]) for r in replies]

    assert sent == [record.dataset for record in records]
    assert records[0].job_sha256 != records[1].job_sha256  # two jobs of one launcher
    assert records[0].dataset == records[1].dataset
    assert records[2].dataset != records[0].dataset  # another launcher cannot link them
    charged = charge_details(tmp_path / "state")
    assert len({c["dataset"] for c in charged}) == 1  # one account, kept by the node
    assert [c["dataset_account"] for c in charged] == sent


def test_charge_numbers_count_the_job_own_charges_only(tmp_path: Path) -> None:
    job, settings = _job(tmp_path), _settings(tmp_path)
    nonce = "a" * 32  # run 1 carries one signed job for both its rounds; run 2 another
    records = [
        signed_record(train_round(job, settings, run_id=1, server_round=1, nonce=nonce)),
        signed_record(train_round(job, settings, run_id=2, server_round=1)),
        signed_record(train_round(job, settings, run_id=1, server_round=2, nonce=nonce)),
    ]

    assert [r.charge for r in records] == [1, 1, 2]  # not the node-wide 1, 2, 3
    charged = charge_details(tmp_path / "state")
    assert [(c["charge"], c["job_charge"]) for c in charged] == [(1, 1), (2, 1), (3, 2)]
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "DE.pub").write_bytes((tmp_path / "state" / "record.key.pub").read_bytes())
    result = verify_ledger(tmp_path / "state" / "ledger.jsonl", load_keys(keys))
    assert result.ok, [str(p) for p in result.problems]
    assert [s.epsilon_dataset for s in result.spends] == [c["epsilon_dataset"] for c in charged]


def test_the_reply_states_no_dataset_lifetime_spend(tmp_path: Path) -> None:
    job, settings = _job(tmp_path), _settings(tmp_path)
    train_round(job, settings, run_id=1, server_round=1, launcher=OTHER_LAUNCHER)
    reply = train_round(job, settings, run_id=2, server_round=1)

    body = str(reply.content.config_records[wire.RECORD][wire.RECORD_BODY])
    assert "epsilon_dataset" not in body
    assert signed_record(reply).epsilon_dataset is None
    lifetime = charge_details(tmp_path / "state")[-1]["epsilon_dataset"]
    shown = [*reply.content.metric_records[wire.METRICS].values()]
    assert lifetime > signed_record(reply).epsilon  # the other launcher's round counts here
    assert lifetime not in shown
