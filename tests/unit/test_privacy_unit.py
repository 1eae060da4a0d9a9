"""The privacy unit is the node operator's: read from node.toml, signed, never mixed on an account.

A job cannot choose or weaken it; a person-level node reads its person column with the rest
of its declared schema, signs ``privacy_unit`` and ``records_per_person`` into every record,
and refuses to charge a dataset account that was spent in the other unit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from differential import write_rows
from node_harness import charge_details, node_file, signed_record, train_round
from residency.auditor.verify import load_keys, verify_ledger
from residency.cli.simulation import write_node_settings
from residency.client.budget_store import STORE_FILE, BudgetStore
from residency.client.daemon import init_node
from residency.client.node_config import load_node_settings
from residency.client.trainer import STABLE_STEP, LocalSchedule
from residency.common.config.job import load_job
from residency.common.config.kinds import StepRule
from residency.common.data.readers import Unusable, scan_labeled_texts
from residency.common.errors import ConfigError, DataError, Refused
from residency.common.privacy.signing import public_path
from residency.common.privacy.unit import DEFAULT_RECORDS_PER_PERSON, PrivacyUnit
from residency.common.refusal import RefusalCode
from toy_federation import separable_rows, write_toy_job

pytestmark = pytest.mark.unit

PERSON = (
    'privacy_unit = "person"\nperson_column = "person"\nrecords_per_person = 2\n'
    "public_people = 10\n"
)


def _settings(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        'country = "DE"\ndata = "de.csv"\nstate = "state"\nbudget_epsilon = 8.0\n'
        f'delta = 1e-5\npublic_records = 40\nlabels = ["a", "b"]\n{extra}',
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            'privacy_unit = "person"\n',
            'node.toml: (top level): privacy_unit = "person" needs person_column, '
            "records_per_person, public_people; fix: add",
        ),
        (
            'person_column = "pid"\n',
            'node.toml: (top level): person_column: set, but privacy_unit is "record"; fix: '
            'add privacy_unit = "person", or remove them',
        ),
        ('privacy_unit = "people"\n', "node.toml: privacy_unit: Input should be 'record' or"),
        (PERSON.replace("= 2", "= 0"), "node.toml: records_per_person: Input should be greater"),
    ],
)
def test_a_bad_privacy_unit_setting_is_one_line_naming_the_field_and_fix(
    tmp_path: Path, extra: str, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_node_settings(_settings(tmp_path, extra))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_the_public_size_is_in_the_unit(tmp_path: Path) -> None:
    record = load_node_settings(_settings(tmp_path, ""))
    person = load_node_settings(_settings(tmp_path, PERSON))
    assert (record.privacy_unit, record.public_size) == (PrivacyUnit.RECORD, 40)
    assert (person.privacy_unit, person.public_size) == (PrivacyUnit.PERSON, 10)


def test_a_persons_step_is_capped_by_the_records_a_person_holds(tmp_path: Path) -> None:
    """From the two public sizes, at most the cap: 40 records over 10 people, cap 2: 2."""
    record = load_node_settings(_settings(tmp_path, ""))
    person = load_node_settings(_settings(tmp_path, PERSON))
    uncapped = load_node_settings(_settings(tmp_path, PERSON.replace("= 2", "= 8")))
    assert (record.records_per_unit, person.records_per_unit, uncapped.records_per_unit) == (
        1.0,
        2.0,
        4.0,
    )
    schedule = LocalSchedule(epochs=1, batch_size=64, learning_rate=1.0)
    fast = schedule.scaled(StepRule.NOISE, expected_batch=10_000, noise=1.0, max_grad_norm=1.0)
    per_person = schedule.scaled(
        StepRule.NOISE,
        expected_batch=10_000,
        noise=1.0,
        max_grad_norm=1.0,
        records_per_unit=uncapped.records_per_unit,
    )
    assert fast.learning_rate == STABLE_STEP
    assert per_person.learning_rate == STABLE_STEP / 4


def _write(path: Path, rows: list[dict[str, object]]) -> None:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        write_rows(path, [(str(r["text"]), str(r["label"]), str(r["person"])) for r in rows])


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_the_person_column_is_read_and_a_record_without_a_person_is_skipped(
    tmp_path: Path, suffix: str
) -> None:
    rows: list[dict[str, object]] = [
        {"text": "one", "label": "a", "person": "p1"},
        {"text": "two", "label": "b", "person": " "},
        {"text": "three", "label": "a", "person": "p2"},
        {"text": "four", "label": "b", "person": "p1"},
    ]
    path = tmp_path / f"de{suffix}"
    _write(path, rows)

    scan = scan_labeled_texts(
        path, text_column="text", label_column="label", labels=["a", "b"], person_column="person"
    )

    assert scan.records.people == ("p1", "p2", "p1")
    assert scan.records.texts == ("one", "three", "four")
    assert [(s.reason, s.count) for s in scan.skipped] == [(Unusable.PERSON_BLANK, 1)]
    plain = scan_labeled_texts(path, text_column="text", label_column="label", labels=["a", "b"])
    assert plain.records.people is None
    assert plain.records.fingerprint() != scan.records.fingerprint()  # who is read matters
    if suffix == ".jsonl":  # a key is per line: each line without it is skipped
        missing = scan_labeled_texts(
            path, text_column="text", label_column="label", labels=["a", "b"], person_column="pid"
        )
        assert [(s.reason, s.count) for s in missing.skipped] == [(Unusable.MISSING_KEY, 4)]
        assert "person_column 'pid'" in missing.skipped[0].first
    else:  # a column is the file's: it cannot be read with this schema
        with pytest.raises(DataError, match=r"person_column 'pid': no such column"):
            scan_labeled_texts(
                path,
                text_column="text",
                label_column="label",
                labels=["a", "b"],
                person_column="pid",
            )


def test_a_dataset_account_is_never_charged_in_two_units(tmp_path: Path) -> None:
    job = load_job(
        write_toy_job(
            tmp_path / "job", countries=("DE",), examples=40, rounds=3, train='update = "head"'
        )
    )
    rows = [(text, label, f"p{i % 10}") for i, (text, label) in enumerate(separable_rows(40, 0))]
    write_rows(tmp_path / "job" / "de.csv", rows)  # the same records, with who each is about
    settings = node_file(tmp_path, 100.0, public_records=40)

    first = signed_record(train_round(job, settings, run_id=1, server_round=1))
    assert (first.privacy_unit, first.records_per_person) == (PrivacyUnit.RECORD, None)

    # The operator turns person-level DP on: the account spent per record cannot go on.
    settings.write_text(settings.read_text("utf-8") + PERSON, encoding="utf-8")
    with pytest.raises(Refused) as refused:
        train_round(job, settings, run_id=1, server_round=2)
    assert refused.value.refusal.code is RefusalCode.UNIT_MIXED
    assert "privacy_unit" in str(refused.value)
    assert "node budget reset" in str(refused.value)
    assert len(charge_details(tmp_path / "state")) == 1  # nothing charged for it

    node = load_node_settings(settings)
    BudgetStore(node.state / STORE_FILE).reset(
        node.dataset_name, node.data, reason="person-level DP from now on"
    )
    person = signed_record(train_round(job, settings, run_id=2, server_round=1))
    assert (person.privacy_unit, person.records_per_person) == (PrivacyUnit.PERSON, 2)
    assert person.examples == 10  # the public number of people, never a count
    assert person.schema_version == 6
    details = charge_details(tmp_path / "state")
    assert [(d["privacy_unit"], d["records_per_person"]) for d in details[-1:]] == [("person", 2)]

    keys = tmp_path / "keys"  # the auditor: two accounts, one unit each, and the reset
    keys.mkdir()
    shutil.copy(public_path(node.record_key), keys / "DE.pub")
    verified = verify_ledger(node.ledger, load_keys(keys))
    assert verified.ok, [p.what for p in verified.problems]


def test_a_policy_that_requires_people_refuses_a_record_level_node(tmp_path: Path) -> None:
    job = load_job(
        write_toy_job(
            tmp_path / "job", countries=("DE",), examples=40, rounds=1, train='update = "head"'
        )
    )
    rows = [(text, label, f"p{i % 10}") for i, (text, label) in enumerate(separable_rows(40, 0))]
    write_rows(tmp_path / "job" / "de.csv", rows)
    policy = tmp_path / "policy.toml"
    policy.write_text('name = "people-only"\nprivacy_unit = "person"\n', encoding="utf-8")
    settings = node_file(tmp_path, 100.0, public_records=40, extra=f'policy = "{policy}"\n')

    with pytest.raises(Refused) as refused:
        train_round(job, settings, run_id=1, server_round=1)
    assert refused.value.refusal.code is RefusalCode.UNIT_BELOW_POLICY
    assert 'set privacy_unit = "person"' in str(refused.value)
    assert not (tmp_path / "state" / "ledger.jsonl").exists() or not charge_details(
        tmp_path / "state"
    )

    settings.write_text(settings.read_text("utf-8") + PERSON, encoding="utf-8")
    record = signed_record(train_round(job, settings, run_id=2, server_round=1))
    assert record.privacy_unit is PrivacyUnit.PERSON
    assert record.policy_name == "people-only"


def test_the_cap_defaults_to_the_measured_one_and_node_toml_states_it(tmp_path: Path) -> None:
    """``node init --person-column`` and a simulated person-level node both write the cap.

    node.toml itself never leaves the cap implicit: an auditor reads it there and in every
    signed record, and a hand-written file without it is refused.
    """
    rows = [(f"text {i}", "a" if i % 2 else "b", f"p{i % 7}") for i in range(30)]
    write_rows(tmp_path / "de.csv", rows)
    made = init_node(
        tmp_path / "node",
        country="DE",
        data=tmp_path / "de.csv",
        labels=["a", "b"],
        budget_epsilon=8.0,
        delta=1e-5,
        person_column="person",
    )
    settings = made.load()
    assert (settings.privacy_unit, settings.records_per_person, settings.public_people) == (
        PrivacyUnit.PERSON,
        DEFAULT_RECORDS_PER_PERSON,
        7,
    )
    assert f"records_per_person = {DEFAULT_RECORDS_PER_PERSON}\n" in made.settings_file.read_text(
        "utf-8"
    )
    job_path = write_toy_job(tmp_path / "job", countries=("DE",), examples=20)
    job_text = job_path.read_text("utf-8").replace(
        'data = "de.csv"\n', 'data = "de.csv"\nprivacy_unit = "person"\nperson_column = "text"\n'
    )
    job_path.write_text(job_text, encoding="utf-8")
    folder = write_node_settings(load_job(job_path), tmp_path / "sim", launcher="ab" * 32)
    simulated = load_node_settings(folder / "0.toml")
    assert simulated.records_per_person == DEFAULT_RECORDS_PER_PERSON
    hand_written = _settings(tmp_path, 'privacy_unit = "person"\nperson_column = "person"\n')
    with pytest.raises(ConfigError, match="needs records_per_person, public_people; fix"):
        load_node_settings(hand_written)
