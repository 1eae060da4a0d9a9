"""``bench/accuracy.py``'s corpus split and target verdicts on inline data: no model, no network.

The end-to-end bench test runs one epsilon on the tiny model (each run is a simulation);
the verdict at every epsilon and the "beats every country alone" line are checked here.
"""

from __future__ import annotations

import importlib
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.unit

BENCH = Path(__file__).resolve().parents[2] / "bench"
COUNTRIES = ("DE", "FR", "ES", "IT")
# 3 classes of unequal size (120, 60, 30) in two languages.
LABELS = [0] * 120 + [1] * 60 + [2] * 30
LANGUAGES = ["de" if i % 3 else "fr" for i in range(len(LABELS))]


@pytest.fixture(scope="module")
def accuracy() -> ModuleType:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCH))  # the bench imports its sibling ``corpora``
        return importlib.import_module("accuracy")


def _split(accuracy: ModuleType, *, seed: int = 3, **changes: object) -> object:
    options: dict[str, object] = {
        "classes": 3,
        "countries": COUNTRIES,
        "regime": "dirichlet",
        "test": 40,
        "alpha": 0.5,
        "cap": None,
        "seed": seed,
        **changes,
    }
    return accuracy.split_corpus(LABELS, LANGUAGES, **options)


def test_dirichlet_split_is_a_deterministic_partition(accuracy: ModuleType) -> None:
    split = _split(accuracy)
    again = _split(accuracy)
    assert split.test == again.test
    assert split.parts == again.parts
    assert _split(accuracy, seed=4).parts != split.parts
    placed = split.test + [i for rows in split.parts.values() for i in rows]
    assert len(placed) == len(set(placed)) == len(LABELS)  # every row once, test disjoint
    assert all(len(rows) >= accuracy.MIN_COUNTRY_ROWS for rows in split.parts.values())


def test_test_set_is_stratified_and_capped_at_a_fifth(accuracy: ModuleType) -> None:
    split = _split(accuracy, test=600)
    assert len(split.test) == len(LABELS) // 5
    held = Counter((LANGUAGES[i], LABELS[i]) for i in split.test)
    everything = Counter(zip(LANGUAGES, LABELS, strict=True))
    for stratum, count in everything.items():
        assert abs(held[stratum] - count / 5) < 1, stratum


def test_each_class_is_shared_in_its_dirichlet_proportions(accuracy: ModuleType) -> None:
    split = _split(accuracy)
    assert split.shares.shape == (3, len(COUNTRIES))
    np.testing.assert_allclose(split.shares.sum(1), 1.0)
    held = set(split.test)
    for label in range(3):
        train = sum(1 for i, y in enumerate(LABELS) if y == label and i not in held)
        for column, country in enumerate(COUNTRIES):
            got = sum(1 for i in split.parts[country] if LABELS[i] == label)
            assert abs(got - split.shares[label, column] * train) < 1, (label, country)
    mixes = {tuple(Counter(LABELS[i] for i in rows)[k] for k in range(3)) for rows in
             split.parts.values()}  # fmt: skip
    assert len(mixes) == len(COUNTRIES)  # label skew: no two countries share a mix


def test_cap_subsamples_each_country(accuracy: ModuleType) -> None:
    whole = _split(accuracy)
    capped = _split(accuracy, cap=15)
    assert capped.test == whole.test
    for country, rows in capped.parts.items():
        assert len(rows) == min(15, len(whole.parts[country]))
        assert set(rows) <= set(whole.parts[country])


def test_language_regime_gives_each_language_its_country(accuracy: ModuleType) -> None:
    split = _split(accuracy, regime="language", countries=("DE", "FR"))
    assert split.shares is None
    assert {LANGUAGES[i] for i in split.parts["DE"]} == {"de"}
    assert {LANGUAGES[i] for i in split.parts["FR"]} == {"fr"}
    train = len(LABELS) - len(split.test)
    assert len(split.parts["DE"]) + len(split.parts["FR"]) == train


def test_an_impossible_split_is_one_line(accuracy: ModuleType) -> None:
    with pytest.raises(ValueError, match="--alpha"):
        _split(accuracy, countries=tuple(f"C{i}" for i in range(10)), alpha=0.01)


def _inline(accuracy: ModuleType) -> Any:
    """A corpus of ``LABELS`` in ``LANGUAGES``, with commas for the CSV writer to quote."""
    names = ("low", "mid", "high")
    return accuracy.Corpus(
        name="inline",
        texts=[f"note {i}, with a comma" for i in range(len(LABELS))],
        labels=[names[y] for y in LABELS],
        label_names=names,
        languages=LANGUAGES,
    )


def test_prepare_corpus_writes_a_job_the_product_loads(
    accuracy: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from residency.common.config.job import load_job
    from residency.common.data.readers import read_labeled_texts

    corpus = _inline(accuracy)
    names = corpus.label_names
    prepared = accuracy.prepare_corpus(
        tmp_path, corpus, countries=COUNTRIES, regime="dirichlet", examples=None,
        test_examples=40, alpha=0.5, model="tiny", seed=3,
    )  # fmt: skip
    job = load_job(prepared.job)
    assert tuple(job.data.labels) == names
    assert [node.country for node in job.nodes] == list(COUNTRIES)
    for node in job.nodes:
        assert node.data is not None
        read = read_labeled_texts(node.data, text_column="text", label_column="label", labels=names)
        assert (list(read.texts), list(read.labels)) == prepared.rows[node.country]
    assert job.data.test == prepared.test_file
    printed = capsys.readouterr().out
    for country, (_, ys) in prepared.rows.items():
        assert f"  {country}: {len(ys)} rows, labels " in printed
    written = read_labeled_texts(
        job.data.test, text_column="text", label_column="label", labels=names
    )
    assert len(written.labels) == 40  # the coordinator's whole test file
    assert prepared.test == accuracy.reported((list(written.texts), list(written.labels)))
    assert 0 < len(prepared.test[1]) < 40  # the references score what the coordinator reports
    pooled = prepared.files[accuracy.CENTRAL_COUNTRY]
    read = read_labeled_texts(pooled, text_column="text", label_column="label", labels=names)
    assert len(read.labels) == len(LABELS) - 40


def test_a_set_may_name_the_one_pipeline_it_tunes(accuracy: ModuleType) -> None:
    everywhere = accuracy.parse_override("train.optimizer=adamw")
    assert (everywhere.pipeline, everywhere.section, everywhere.key, everywhere.value) == (
        None,
        "train",
        "optimizer",
        "adamw",
    )
    lora = accuracy.parse_override("prototypes+lora:train.learning_rate=0.002")
    assert (lora.pipeline, lora.key, lora.value) == ("prototypes+lora", "learning_rate", 0.002)
    with pytest.raises(ValueError, match="not-a-kind"):
        accuracy.parse_override("not-a-kind:train.rounds=2")
    with pytest.raises(ValueError, match="expected"):
        accuracy.parse_override("prototypes+lora:rounds=2")


def test_people_deal_each_countrys_rows_and_every_node_reads_them(
    accuracy: ModuleType, tmp_path: Path
) -> None:
    from residency.common.data.readers import scan_labeled_texts

    corpus = _inline(accuracy)
    names = corpus.label_names
    prepared = accuracy.prepare_corpus(
        tmp_path, corpus, countries=COUNTRIES, regime="dirichlet", examples=None,
        test_examples=40, alpha=0.5, model="tiny", seed=3, people=8,
    )  # fmt: skip
    assert prepared.people is not None
    for country, (texts, _) in prepared.rows.items():
        read = scan_labeled_texts(
            prepared.files[country],
            text_column="text",
            label_column="label",
            labels=names,
            person_column=accuracy.PERSON_COLUMN,
        ).records
        assert list(read.texts) == texts
        assert list(read.people or ()) == prepared.people[country]
        owners = Counter(prepared.people[country])
        assert 1 <= len(owners) <= 8
        assert all(person.startswith(f"{country}-") for person in owners)
    assert accuracy.parse_unit("person") == f"person:{accuracy.DEFAULT_CAP}"
    assert accuracy.unit_cap(accuracy.parse_unit("person:5")) == 5
    assert accuracy.unit_cap("record") is None
    with pytest.raises(ValueError, match="person:K"):
        accuracy.parse_unit("person:0")


def _rows(accuracy: ModuleType, federated: dict[float, float]) -> list[object]:
    row = accuracy.Row
    rows = [
        row("class means (no DP)", None, accuracy.NO_DP, 0.80),
        row("linear probe fed. (no DP)", None, accuracy.NO_DP, 0.90),
        row("majority class", None, accuracy.NO_DP, 0.40),
    ]
    for epsilon, value in federated.items():
        rows.append(row("federated", "prototypes+head", epsilon, value))
        rows.append(row("local-only DE", "prototypes+head", epsilon, 0.60))
        rows.append(row("local-only FR", "prototypes+head", epsilon, 0.70))
    return rows


def test_each_epsilon_is_judged_against_its_own_gap(accuracy: ModuleType) -> None:
    rows = _rows(accuracy, {8.0: 0.875, 3.0: 0.81, 1.0: 0.65})

    lines = accuracy.targets(rows, "prototypes+head", [1.0, 3.0, 8.0], examples=500)

    assert "best non-private federated: linear probe fed. (no DP) 0.900" in lines[1]
    assert lines[2] == "  eps=8: 0.875, gap +2.5 points, target <= 3: met"
    assert lines[3] == "  eps=3: 0.810, gap +9.0 points, target <= 8: MISSED"
    assert lines[4] == ("  eps=1: 0.650 above every local-only and the majority (0.700): MISSED")
    beats = [line for line in lines if "beats every country alone" in line]
    assert [line.rsplit(": ", 1)[1] for line in beats] == ["MISSED", "met", "met"]


def test_more_data_tightens_the_gap_at_epsilon_8(accuracy: ModuleType) -> None:
    rows = _rows(accuracy, {8.0: 0.875})

    small = accuracy.targets(rows, "prototypes+head", [8.0], examples=500)
    large = accuracy.targets(rows, "prototypes+head", [8.0], examples=2000)

    assert small[2].endswith("target <= 3: met")
    assert large[2].endswith("target <= 2: MISSED")
