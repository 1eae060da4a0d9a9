"""Tamper cases on a real ledger: each is detected and names its entry; a clean one verifies."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from ledger_factory import RESET_REASON, LedgerFixture, account, write_ledger
from residency.auditor.verify import Verification, load_keys, verify_ledger
from residency.common.config.kinds import AccountantKind
from residency.common.privacy.canonical import canonical_json
from residency.common.privacy.ledger import GENESIS, EntryBody, EntryKind, Ledger, LedgerEntry
from residency.common.privacy.record import NoiseSource, PrivacyRecord, sign_record
from residency.common.privacy.signing import load_signer

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def _written(tmp_path_factory: pytest.TempPathFactory) -> LedgerFixture:
    """One default ledger per module: writing it computes Opacus epsilons (most of a second)."""
    return write_ledger(tmp_path_factory.mktemp("ledger"))


@pytest.fixture
def made(_written: LedgerFixture, tmp_path: Path) -> LedgerFixture:
    """A private copy of the default ledger's files, for a test to tamper with."""
    root = _written.keys.parent
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    return LedgerFixture(
        ledger=tmp_path / _written.ledger.relative_to(root),
        keys=tmp_path / _written.keys.relative_to(root),
        node_ledgers={c: tmp_path / p.relative_to(root) for c, p in _written.node_ledgers.items()},
        signers=dict(_written.signers),
    )


def _verify(made: LedgerFixture, **kwargs: object) -> Verification:
    return verify_ledger(made.ledger, load_keys(made.keys), **kwargs)  # type: ignore[arg-type]


def _lines(made: LedgerFixture) -> list[str]:
    return made.ledger.read_text("ascii").splitlines()


def _write(made: LedgerFixture, lines: list[str]) -> None:
    made.ledger.write_text("".join(line + "\n" for line in lines), "ascii")


def _resign(made: LedgerFixture, entries: list[dict[str, object]]) -> None:
    """Rewrite the chain as a keeper holding its key would: new hashes, links, signatures."""
    signer = load_signer(made.ledger.parent.parent / "private" / "coordinator.key")
    prev, lines = GENESIS, []
    for index, data in enumerate(entries):
        data = {k: v for k, v in data.items() if k not in ("hash", "signature")}
        body = EntryBody.model_validate_json(json.dumps({**data, "index": index, "prev": prev}))
        digest = body.digest()
        entry = LedgerEntry.model_validate(
            {**body.model_dump(), "hash": digest, "signature": signer.sign(digest.encode())}
        )
        lines.append(canonical_json(entry))
        prev = digest
    _write(made, lines)


def _entries(made: LedgerFixture) -> list[dict[str, object]]:
    return [json.loads(line) for line in _lines(made)]


def _record_entry(made: LedgerFixture, country: str, server_round: int) -> int:
    for index, entry in enumerate(_entries(made)):
        if entry["kind"] == "record" and (entry["country"], entry["round"]) == (
            country,
            server_round,
        ):
            return index
    raise AssertionError("no such record")


def _problems(result: Verification) -> list[str]:
    return [str(problem) for problem in result.problems]


def test_a_clean_ledger_verifies_with_both_accountants(made: LedgerFixture) -> None:
    result = _verify(made, node_ledgers=list(made.node_ledgers.values()))

    assert result.ok, _problems(result)
    assert result.entries == 8  # start, 5 records, 1 refusal, finish
    assert [(s.country, s.round) for s in result.spends] == [
        ("DE", 1),
        ("FR", 1),
        ("DE", 2),
        ("FR", 2),
        ("DE", 3),
    ]
    for spend in result.spends:
        assert spend.epsilon_opacus == pytest.approx(spend.record.epsilon, rel=1e-9)
        assert spend.epsilon_dp_accounting == pytest.approx(spend.epsilon_opacus, rel=0.03)
    assert [(r.country, r.round) for r in result.refusals] == [("FR", 3)]
    assert result.runs["7"]["status"] == "completed"


def test_node_ledgers_verify_on_their_own(made: LedgerFixture) -> None:
    for path in made.node_ledgers.values():
        result = verify_ledger(path, load_keys(made.keys))
        assert result.ok, _problems(result)


def _edit_reason(made: LedgerFixture) -> int:
    lines = _lines(made)
    index = next(i for i, line in enumerate(lines) if '"kind":"refusal"' in line)
    lines[index] = lines[index].replace("dataset budget 12.00", "dataset budget 99.00")
    _write(made, lines)
    return index


def _delete(made: LedgerFixture) -> int:
    lines = _lines(made)
    del lines[3]
    _write(made, lines)
    return 3


def _reorder(made: LedgerFixture) -> int:
    lines = _lines(made)
    lines[2], lines[3] = lines[3], lines[2]
    _write(made, lines)
    return 2


def _torn_tail(made: LedgerFixture) -> int:
    lines = _lines(made)
    made.ledger.write_text("\n".join(lines) + "\n" + lines[-1][: len(lines[-1]) // 2], "ascii")
    return len(lines)


def _rehash_without_key(made: LedgerFixture) -> int:
    """Edit and fix the hash, but sign with nothing: the signature must fail."""
    lines = _lines(made)
    data = json.loads(lines[1])
    data["at"] = "2020-01-01T00:00:00+00:00"
    body = EntryBody.model_validate_json(
        json.dumps({k: v for k, v in data.items() if k not in ("hash", "signature")})
    )
    data["hash"] = body.digest()
    lines[1] = json.dumps(data, sort_keys=True, separators=(",", ":"))
    _write(made, lines)
    return 1


def _forge_record(made: LedgerFixture) -> int:
    """The keeper lowers a node's epsilon and re-signs its own chain: the node's seal breaks."""
    entries = _entries(made)
    index = _record_entry(made, "DE", 2)
    record = entries[index]["record"]
    assert isinstance(record, dict)
    body = json.loads(str(record["body"]))
    body["epsilon"] = body["epsilon"] / 2
    record["body"] = json.dumps(body, sort_keys=True, separators=(",", ":"))
    _resign(made, entries)
    return index


def _wrong_country_key(made: LedgerFixture) -> int:
    """A record for DE that FR's key signed."""
    entries = _entries(made)
    index = _record_entry(made, "DE", 1)
    record = entries[index]["record"]
    assert isinstance(record, dict)
    french = made.signers["FR"]
    claimed = PrivacyRecord.model_validate_json(str(record["body"]))
    forged = sign_record(claimed.model_copy(update={"key": french.public_hex}), french)
    entries[index]["record"] = forged.model_dump()
    _resign(made, entries)
    return index


def _under_reported_epsilon(made: LedgerFixture) -> int:
    """DE's own key signs a record claiming less than its mechanism spent."""
    entries = _entries(made)
    index = _record_entry(made, "DE", 3)
    record = entries[index]["record"]
    assert isinstance(record, dict)
    german = made.signers["DE"]
    honest = PrivacyRecord.model_validate_json(str(record["body"]))
    lie = honest.model_copy(update={"epsilon": honest.epsilon - 0.5})
    entries[index]["record"] = sign_record(lie, german).model_dump()
    _resign(made, entries)
    return index


def _noiseless_record(made: LedgerFixture) -> int:
    """DE's own key signs a record of a step without noise: an auditor must not crash on it."""
    entries = _entries(made)
    index = _record_entry(made, "DE", 2)
    record = entries[index]["record"]
    assert isinstance(record, dict)
    honest = PrivacyRecord.model_validate_json(str(record["body"]))
    lie = honest.model_copy(
        update={"noise_multiplier": 0.0, "history": [(0.0, 0.05, 0), *honest.history[1:]]}
    )
    entries[index]["record"] = sign_record(lie, made.signers["DE"]).model_dump()
    _resign(made, entries)
    return index


def _swapped_update(made: LedgerFixture) -> int:
    """The keeper records another update than the one the node signed."""
    entries = _entries(made)
    index = _record_entry(made, "FR", 1)
    other = entries[_record_entry(made, "DE", 1)]["received_sha256"]
    entries[index]["received_sha256"] = other
    _resign(made, entries)
    return index


def _replayed_record(made: LedgerFixture) -> int:
    entries = _entries(made)
    index = _record_entry(made, "FR", 2)
    entries.insert(index + 1, dict(entries[index]))
    _resign(made, entries)
    return index + 1


def _edited_update_file(made: LedgerFixture) -> int:
    index = _record_entry(made, "DE", 1)
    digest = _entries(made)[index]["received_sha256"]
    path = made.ledger.parent / "updates" / f"{digest}.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # flip one bit of the last float
    path.write_bytes(bytes(data))
    return index


def _deleted_update_file(made: LedgerFixture) -> int:
    index = _record_entry(made, "FR", 2)
    digest = _entries(made)[index]["received_sha256"]
    (made.ledger.parent / "updates" / f"{digest}.safetensors").unlink()
    return index


TAMPERS: dict[str, tuple[Callable[[LedgerFixture], int], str]] = {
    "edit": (_edit_reason, "content does not match its hash"),
    "delete": (_delete, "numbered 4"),
    "reorder": (_reorder, "previous-hash link broken"),
    "torn-tail": (_torn_tail, "not a valid ledger entry"),
    "rehash-without-key": (_rehash_without_key, "keeper signature does not verify"),
    "forged-record": (_forge_record, "signature does not verify"),
    "wrong-country-key": (_wrong_country_key, "record for DE signed by FR's key"),
    "under-reported-epsilon": (_under_reported_epsilon, "Opacus gives"),
    "noiseless-record": (_noiseless_record, "noise_multiplier"),
    "swapped-update": (_swapped_update, "update received differs"),
    "replayed-record": (_replayed_record, "second record for FR round 2"),
    "edited-update-file": (_edited_update_file, "does not hash to its name"),
    "deleted-update-file": (_deleted_update_file, "is missing"),
}


@pytest.mark.parametrize("case", sorted(TAMPERS))
def test_each_tamper_is_detected_at_its_entry(made: LedgerFixture, case: str) -> None:
    tamper, expected = TAMPERS[case]
    entry = tamper(made)

    result = _verify(made)

    assert not result.ok
    assert any(p.entry == entry and expected in p.what for p in result.problems), _problems(result)


def test_truncation_is_caught_by_the_run_end_by_since_and_by_node_copies(
    made: LedgerFixture,
) -> None:
    head = _verify(made)
    lines = _lines(made)
    seen = (len(lines) - 1, head.head or "")
    _write(made, lines[:5])  # the last DE and FR rounds and the run's end are cut

    plain = _verify(made)
    pinned = _verify(made, since=seen)
    crossed = _verify(made, node_ledgers=[made.node_ledgers["DE"]])

    assert "run 7 has no run-finished entry" in " ".join(_problems(plain))
    assert any(p.entry == seen[0] and "truncated" in p.what for p in pinned.problems)
    assert any("DE round 3 of run 7" in p.what for p in crossed.problems), _problems(crossed)


def test_a_rewritten_ledger_is_caught_by_since(made: LedgerFixture) -> None:
    seen = (3, json.loads(_lines(made)[3])["hash"])
    entries = _entries(made)
    entries[2]["at"] = "2020-01-01T00:00:00+00:00"
    _resign(made, entries)  # internally consistent again

    assert _verify(made).ok
    result = _verify(made, since=seen)

    assert any(p.entry == 3 and "rewritten" in p.what for p in result.problems)


def test_a_keeper_key_missing_from_the_key_folder_is_a_problem(made: LedgerFixture) -> None:
    (made.keys / "coordinator.pub").unlink()

    result = _verify(made)

    assert any(p.entry == 0 and "not in the key folder" in p.what for p in result.problems)


def test_a_node_copy_with_a_lowered_lifetime_spend_is_caught(tmp_path: Path) -> None:
    made = write_ledger(tmp_path, countries=("DE",), rounds=2, refuse=None, schema=4)
    path = made.node_ledgers["DE"]
    lines = path.read_text("ascii").splitlines()
    index = max(i for i, line in enumerate(lines) if '"kind":"record"' in line)
    data = json.loads(lines[index])
    honest = PrivacyRecord.model_validate_json(data["record"]["body"])
    lie = honest.model_copy(update={"epsilon_dataset": honest.epsilon_dataset / 2})
    data["record"] = sign_record(lie, made.signers["DE"]).model_dump()
    signer = made.signers["DE"]
    body = EntryBody.model_validate_json(
        json.dumps({k: v for k, v in data.items() if k not in ("hash", "signature")})
    )
    data["hash"] = body.digest()
    data["signature"] = signer.sign(data["hash"].encode())
    lines[index] = json.dumps(data, sort_keys=True, separators=(",", ":"))
    path.write_text("".join(line + "\n" for line in lines), "ascii")

    result = verify_ledger(path, load_keys(made.keys))

    assert any(p.entry == index and "charges in this ledger" in p.what for p in result.problems)


@pytest.mark.parametrize("kind", list(AccountantKind))
def test_recomputation_uses_the_recorded_accountant(tmp_path: Path, kind: AccountantKind) -> None:
    made = write_ledger(tmp_path, kind=kind, rounds=2, refuse=None)

    result = _verify(made)

    assert result.ok, _problems(result)
    assert {s.record.accountant for s in result.spends} == {kind}


def test_a_coordinator_ledger_without_its_updates_folder_is_a_problem(
    made: LedgerFixture,
) -> None:
    shutil.rmtree(made.ledger.parent / "updates")

    result = _verify(made)

    assert [(p.entry, p.what) for p in result.problems] == [
        (
            None,
            "5 record entries (the first is entry 1) but no updates/ folder beside this "
            "coordinator ledger: the updates that were averaged cannot be checked against the "
            "hashes the nodes signed",
        )
    ]
    for path in made.node_ledgers.values():  # a node's ledger has records but keeps no updates
        assert not (path.parent / "updates").exists()
        node = verify_ledger(path, load_keys(made.keys))
        assert node.ok, _problems(node)


def test_a_deleted_record_is_found_even_if_another_round_sent_the_same_update(
    tmp_path: Path,
) -> None:
    """Bit-identical updates in rounds 1 and 2: round 1's entry must not stand in for round 2's."""
    made = write_ledger(tmp_path, countries=("DE",), rounds=2, refuse=None, repeat_update=True)
    entries = _entries(made)
    digests = {entries[_record_entry(made, "DE", r)]["received_sha256"] for r in (1, 2)}
    assert len(digests) == 1
    del entries[_record_entry(made, "DE", 2)]
    _resign(made, entries)  # the keeper re-signs its shortened chain: it verifies on its own
    assert _verify(made).ok

    result = _verify(made, node_ledgers=[made.node_ledgers["DE"]])

    assert any(
        "DE round 2 of run 7" in p.what and "missing from this ledger" in p.what
        for p in result.problems
    ), _problems(result)
    assert not any("DE round 1 of run 7" in p.what for p in result.problems)


def test_a_record_the_coordinator_marked_unconfirmed_is_a_note_not_a_problem(
    tmp_path: Path,
) -> None:
    """A node that charged but whose reply came too late: its own ledger has the record."""
    made = write_ledger(tmp_path, countries=("DE",), rounds=2, refuse=None)
    entries = _entries(made)
    index = _record_entry(made, "DE", 2)
    late = {k: entries[index][k] for k in ("kind", "at", "signer", "run", "job", "country")}
    entries[index] = {**late, "kind": "unconfirmed", "round": 2, "reason": "DE sent no reply"}
    _resign(made, entries)

    result = _verify(made, node_ledgers=[made.node_ledgers["DE"]])

    assert result.ok, _problems(result)
    assert ("7", "DE", 2) in result.unconfirmed
    assert any(
        "DE round 2 of run 7" in n.what and "recorded the round as unconfirmed" in n.what
        for n in result.notes
    )


def test_an_operator_seeded_record_is_not_differentially_private(tmp_path: Path) -> None:
    made = write_ledger(
        tmp_path, countries=("DE",), rounds=1, refuse=None, noise_source=NoiseSource.OPERATOR_SEED
    )

    result = _verify(made)
    node = verify_ledger(made.node_ledgers["DE"], load_keys(made.keys))

    expected = (
        "DE round 1 is not differentially private: its noise and batches were reproducible "
        "from a seed in the operator's node.toml (tests and benchmarks only)"
    )
    assert [(p.entry, p.what) for p in result.problems] == [(1, expected)]
    assert [p.what for p in node.problems] == [expected]


def test_budget_resets_are_listed_not_failed(tmp_path: Path) -> None:
    made = write_ledger(tmp_path, reset="FR")
    path = made.node_ledgers["FR"]

    node = verify_ledger(path, load_keys(made.keys))
    coordinator = _verify(made, node_ledgers=list(made.node_ledgers.values()))

    assert node.ok, _problems(node)
    [reset] = node.resets
    assert (reset.ledger, reset.entry, reset.country) == (path, 0, "FR")
    assert (reset.dataset, reset.reason) == ("fr-notes", RESET_REASON)
    assert (reset.old_account, reset.new_account) == (account("FR"), account("FR", 2))
    assert {s.record.dataset for s in node.spends} == {account("FR", 2)}
    assert coordinator.ok, _problems(coordinator)
    assert coordinator.resets == [reset]  # the coordinator never sees it; the node's copy does


@pytest.mark.parametrize(
    "detail",
    [
        pytest.param({"dataset": "fr-notes", "old_account": "ab" * 32}, id="no-new-account"),
        pytest.param(
            {"dataset": "fr-notes", "old_account": "ab" * 32, "new_account": "XY"}, id="not-hex"
        ),
        pytest.param(
            {"dataset": "", "old_account": "ab" * 32, "new_account": "cd" * 32}, id="no-name"
        ),
        pytest.param(
            {"dataset": "fr-notes", "old_account": "ab" * 32, "new_account": "ab" * 32},
            id="same-account",
        ),
    ],
)
def test_a_malformed_budget_reset_is_a_problem(made: LedgerFixture, detail: dict[str, str]) -> None:
    path = made.node_ledgers["FR"]
    Ledger(path, made.signers["FR"]).append(
        EntryKind.BUDGET_RESET, country="FR", reason="why not", detail=detail
    )

    result = verify_ledger(path, load_keys(made.keys))

    last = len(path.read_text("ascii").splitlines()) - 1
    assert [p.entry for p in result.problems] == [last], _problems(result)
    assert "budget-reset entry" in result.problems[0].what


def test_a_budget_reset_in_a_coordinators_ledger_is_a_problem(made: LedgerFixture) -> None:
    entries = _entries(made)
    entries.insert(
        1,
        {
            "kind": "budget-reset",
            "at": entries[0]["at"],
            "signer": entries[0]["signer"],
            "country": "FR",
            "reason": "the coordinator wants more rounds",
            "detail": {"dataset": "fr", "old_account": "ab" * 32, "new_account": "cd" * 32},
        },
    )
    _resign(made, entries)

    result = _verify(made)

    assert [(p.entry, p.what) for p in result.problems] == [
        (1, "budget-reset entry in a coordinator's ledger")
    ]


def _edit_charges(made: LedgerFixture, country: str, **changes: float) -> list[int]:
    """Change every charge entry of ``country``'s ledger and re-sign its chain with its key."""
    path = made.node_ledgers[country]
    prev, lines, edited = GENESIS, [], []
    for index, line in enumerate(path.read_text("ascii").splitlines()):
        data = {k: v for k, v in json.loads(line).items() if k not in ("hash", "signature")}
        if data["kind"] == EntryKind.CHARGE.value:
            data["detail"] = {**data["detail"], **changes}
            edited.append(index)
        body = EntryBody.model_validate_json(json.dumps({**data, "prev": prev}))
        prev = body.digest()
        signature = made.signers[country].sign(prev.encode())
        lines.append(canonical_json({**body.model_dump(), "hash": prev, "signature": signature}))
    path.write_text("".join(line + "\n" for line in lines), "ascii")
    return edited


def test_records_no_longer_state_the_lifetime_and_a_coordinator_ledger_says_so(
    made: LedgerFixture,
) -> None:
    result = _verify(made)

    assert result.ok, _problems(result)
    assert all(s.record.epsilon_dataset is None for s in result.spends)
    assert all(s.epsilon_dataset is None for s in result.spends)
    assert any("lifetime epsilon" in n.what and "--node-ledger" in n.what for n in result.notes)


def test_node_ledgers_give_the_lifetime_the_records_no_longer_state(made: LedgerFixture) -> None:
    result = _verify(made, node_ledgers=list(made.node_ledgers.values()))

    assert result.ok, _problems(result)
    assert all(
        s.epsilon_dataset == pytest.approx(s.record.epsilon, rel=1e-9) for s in result.spends
    )
    assert not any("lifetime epsilon" in n.what for n in result.notes)


def test_a_node_charge_entry_with_a_lowered_lifetime_spend_is_caught(
    made: LedgerFixture,
) -> None:
    edited = _edit_charges(made, "DE", epsilon_dataset=0.01)

    result = verify_ledger(made.node_ledgers["DE"], load_keys(made.keys))

    assert {p.entry for p in result.problems if "charges in this ledger give" in p.what} == set(
        edited
    )


def test_a_node_ledger_lifetime_above_the_dataset_budget_is_flagged(made: LedgerFixture) -> None:
    edited = _edit_charges(made, "FR", budget_epsilon=1.0)

    result = _verify(made, node_ledgers=list(made.node_ledgers.values()))

    over = {p.entry for p in result.problems if "exceeds its budget 1" in p.what}
    assert over
    assert over <= set(edited)


def test_a_record_without_its_charge_entry_in_the_node_ledger_is_flagged(
    made: LedgerFixture,
) -> None:
    _edit_charges(made, "DE", job_charge=99)

    result = verify_ledger(made.node_ledgers["DE"], load_keys(made.keys))

    assert any("no charge entry for the job's charge" in p.what for p in result.problems)


def test_records_of_schema_4_still_verify_with_the_lifetime_they_state(tmp_path: Path) -> None:
    made = write_ledger(tmp_path, schema=4)

    result = _verify(made, node_ledgers=list(made.node_ledgers.values()))

    assert result.ok, _problems(result)
    assert {s.record.schema_version for s in result.spends} == {4}
    assert all(s.epsilon_dataset == s.record.epsilon_dataset for s in result.spends)


def test_a_charge_in_another_privacy_unit_than_its_record_is_flagged(made: LedgerFixture) -> None:
    """A record's ε per record must come from a charge per record, in the node's own ledger."""
    _edit_charges(made, "DE", privacy_unit="person", records_per_person=5)  # type: ignore[arg-type]

    result = verify_ledger(made.node_ledgers["DE"], load_keys(made.keys))

    assert any(
        "charged per person, the record states ε per record" in p.what for p in result.problems
    )
