"""The node's ClientApp against its durable budget: restarts and re-runs never reset spending.

Whole rounds, seconds each; the policy refusals that take a fraction of a second are in
``tests/unit/test_node_budget_policy.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Message

from node_harness import charge_details, node_file, train_round
from node_policy import assert_the_policy_refuses_before_any_charge
from residency.auditor.crosscheck import epsilon_dp_accounting
from residency.auditor.verify import load_keys, verify_ledger
from residency.client.budget_store import STORE_FILE, BudgetStore
from residency.common import wire
from residency.common.config.job import Job, load_job
from residency.common.config.kinds import AccountantKind
from residency.common.errors import BudgetExceeded
from residency.common.privacy.accountant import compose, epsilon_spent
from residency.common.privacy.record import SignedRecord, open_record
from residency.common.privacy.signing import load_public
from residency.common.privacy.update_digest import update_sha256
from toy_federation import write_toy_job

pytestmark = pytest.mark.usefixtures("flower_task")


@pytest.fixture
def job(tmp_path: Path) -> Job:
    return load_job(write_toy_job(tmp_path / "job", countries=("DE",), examples=60, rounds=2))


def epsilon(reply: Message) -> float:
    return float(wire.scalar(reply.content.metric_records[wire.METRICS], wire.EPSILON))


@pytest.mark.node
def test_a_restarted_node_keeps_composing_its_job(job: Job, tmp_path: Path) -> None:
    settings = node_file(tmp_path, budget=100.0)
    first = train_round(job, settings, run_id=1, server_round=1)
    second = train_round(job, settings, run_id=1, server_round=2)  # new process, empty state
    store = BudgetStore(tmp_path / "state" / STORE_FILE)
    history = store.history(store.charges()[0].dataset)
    assert len(store.charges()) == 2
    assert epsilon(second) > epsilon(first)
    assert epsilon(second) == pytest.approx(
        epsilon_spent(history, delta=1e-4, kind=job.privacy.accountant), rel=1e-9
    )
    assert epsilon(second) <= job.privacy.target_epsilon * 1.0001


@pytest.mark.node
def test_a_rerun_is_refused_before_any_charge_once_the_whole_job_no_longer_fits(
    job: Job, tmp_path: Path
) -> None:
    """Each launch is charged in full or not at all: never a round of a job that cannot end."""
    budget = 12.0
    settings = node_file(tmp_path, budget=budget)
    store = BudgetStore(tmp_path / "state" / STORE_FILE)
    outcomes: list[tuple[int, int, str]] = []
    for run_id in (1, 2, 3):
        for server_round in (1, 2):
            try:
                train_round(job, settings, run_id=run_id, server_round=server_round)
                outcomes.append((run_id, server_round, "ok"))
            except BudgetExceeded as exc:
                outcomes.append((run_id, server_round, str(exc)))
    # Replay with the library accountant: a launch runs only if both its rounds fit after
    # every earlier charge; otherwise both of its rounds are refused, uncharged.
    step = store.charges()[0].step
    history: tuple[tuple[float, float, int], ...] = ()
    expected = []
    for run_id in (1, 2, 3):
        whole = compose(compose(history, step), step)
        fits = epsilon_spent(whole, delta=1e-4, kind=job.privacy.accountant) <= budget * 1.0001
        history = whole if fits else history
        expected += [(run_id, server_round, fits) for server_round in (1, 2)]
    assert [o[2] == "ok" for o in outcomes] == [e[2] for e in expected]
    assert not all(e[2] for e in expected), "the budget must run out within this test"
    assert [o[2] == "ok" for o in outcomes[:2]] == [True, True]
    refusal = next(o[2] for o in outcomes if o[2] != "ok")
    assert refusal.startswith("DE refused round 1: the whole job does not fit the dataset budget")
    assert "12.00 (" in refusal
    assert "nothing was charged" in refusal
    assert len(store.charges()) == sum(e[2] for e in expected)  # refusals charge nothing
    assert [r[4] for r in store.refusals()] == [o[2] for o in outcomes if o[2] != "ok"]


@pytest.mark.node
def test_node_status_reports_spend_and_refusals(job: Job, tmp_path: Path) -> None:
    import json
    import subprocess

    from deployment_harness import RESIDENCY

    settings = node_file(tmp_path, budget=8.0)
    train_round(job, settings, run_id=1, server_round=1)
    train_round(job, settings, run_id=1, server_round=2)
    with pytest.raises(BudgetExceeded):
        train_round(job, settings, run_id=2, server_round=1)  # a re-run: dataset budget spent
    done = subprocess.run(
        [RESIDENCY, "node", "status", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    [row] = status["datasets"]
    assert row["rounds"] == 2
    assert row["runs"] == 1
    assert row["epsilon_spent"] + row["epsilon_left"] == pytest.approx(8.0)
    assert row["epsilon_spent"] == pytest.approx(job.privacy.target_epsilon, abs=0.05)
    assert [r["round"] for r in status["refusals"]] == [1]
    assert "dataset budget 8.00" in status["refusals"][0]["reason"]


@pytest.mark.node
@pytest.mark.parametrize(
    ("rules", "phrase"),
    [
        pytest.param(
            "min_noise_multiplier = 50.0", "below the minimum 50 of policy strict", id="noise"
        ),
        pytest.param(
            "max_epsilon_per_dataset = 1.0",
            "the whole job does not fit the dataset budget 1.00 (0.00 spent",
            id="lifetime",
        ),
    ],
)
def test_policy_rules_refuse_before_any_charge(
    job: Job, tmp_path: Path, rules: str, phrase: str
) -> None:
    """The rules that first search the noise or compose the whole job: seconds each."""
    assert_the_policy_refuses_before_any_charge(job, tmp_path, rules, phrase)


@pytest.mark.node
@pytest.mark.parametrize("kind", [AccountantKind.PRV, AccountantKind.RDP])
def test_recorded_charges_give_the_same_epsilon_in_both_libraries(
    job: Job, tmp_path: Path, kind: AccountantKind
) -> None:
    settings = node_file(tmp_path, budget=100.0)
    for run_id in (1, 2):  # two runs on one dataset: a history with repeated entries
        for server_round in (1, 2):
            train_round(job, settings, run_id=run_id, server_round=server_round)
    store = BudgetStore(tmp_path / "state" / STORE_FILE)
    history = store.history(store.charges()[0].dataset)
    opacus = epsilon_spent(history, delta=1e-4, kind=kind)
    google = epsilon_dp_accounting(history, delta=1e-4, kind=kind)
    # Same tolerances as test_accountant.py. RDP: one bound on one order grid; PRV vs PLD:
    # two numerical estimates of the same privacy curve.
    assert google == pytest.approx(opacus, rel=0.01 if kind is AccountantKind.RDP else 0.03)
    assert opacus > job.privacy.target_epsilon  # two full runs spend more than one target


@pytest.mark.node
def test_every_reply_carries_a_signed_record_and_the_node_keeps_its_own_ledger(
    job: Job, tmp_path: Path
) -> None:
    settings = node_file(tmp_path, budget=8.0)
    first = train_round(job, settings, run_id=1, server_round=1)
    second = train_round(job, settings, run_id=1, server_round=2)
    with pytest.raises(BudgetExceeded):
        train_round(job, settings, run_id=2, server_round=1)  # the lifetime budget is spent

    records = [
        open_record(
            SignedRecord(
                body=str(reply.content.config_records[wire.RECORD][wire.RECORD_BODY]),
                signature=str(reply.content.config_records[wire.RECORD][wire.RECORD_SIGNATURE]),
            )
        )
        for reply in (first, second)
    ]
    public = load_public(tmp_path / "state" / "record.key.pub")
    assert {record.key for record in records} == {public}
    assert [record.epsilon for record in records] == [epsilon(first), epsilon(second)]
    assert records[1].epsilon_dataset is None  # the dataset's lifetime stays in the node
    charged = charge_details(tmp_path / "state")
    assert charged[1]["epsilon_dataset"] == pytest.approx(records[1].epsilon)
    assert charged[1]["budget_epsilon"] == 8.0
    assert records[1].budget_epsilon == 8.0
    assert records[0].history[0][2] * 2 == records[1].history[0][2]  # composed, not reset
    arrays = first.content.array_records[wire.ARRAYS]
    assert records[0].update_sha256 == update_sha256({k: v.numpy() for k, v in arrays.items()})

    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "DE.pub").write_bytes((tmp_path / "state" / "record.key.pub").read_bytes())
    result = verify_ledger(tmp_path / "state" / "ledger.jsonl", load_keys(keys))
    assert result.ok, [str(p) for p in result.problems]
    kinds = [line.split('"kind":"')[1].split('"')[0] for line in _ledger_lines(tmp_path)]
    assert kinds == ["charge", "record", "charge", "record", "refusal"]
    assert result.refusals[0].reason.startswith(
        "DE refused round 1: the whole job does not fit the dataset budget 8.00"
    )


def _ledger_lines(tmp_path: Path) -> list[str]:
    return (tmp_path / "state" / "ledger.jsonl").read_text("ascii").splitlines()


@pytest.mark.node
def test_a_node_whose_store_cannot_be_opened_answers_the_fixed_fault_and_charges_nothing(
    job: Job, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A damaged store is no reason to train unmetered, nor to tell the coordinator its path."""
    from residency.client.client_app import train

    settings = node_file(tmp_path, budget=100.0)
    store = tmp_path / "state" / STORE_FILE
    store.parent.mkdir(exist_ok=True)
    store.write_bytes(b"damaged " * 512)
    reply = train_round(job, settings, run_id=1, server_round=1, handler=train)
    assert reply.has_error()
    assert (reply.error.code, reply.error.reason) == (wire.NODE_FAULT, wire.NODE_FAULT_REASON)
    assert store.read_bytes() == b"damaged " * 512  # nothing written, nothing lost
    assert f"{store}: the node's budget store cannot be opened" in caplog.text  # the operator's
