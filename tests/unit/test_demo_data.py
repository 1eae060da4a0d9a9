"""The synthetic demo federation: reproducible, shared English labels, one language per country."""

from __future__ import annotations

import csv
import importlib
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from residency.common.data.demo import (
    DEMO_LABEL_COLUMN,
    DEMO_LABELS,
    DEMO_LOCALES,
    DEMO_TEXT_COLUMN,
    DemoFederation,
    write_demo_federation,
)
from residency.common.data.readers import read_labeled_texts
from residency.common.data.records import LabeledTexts

pytestmark = pytest.mark.unit

ALL_COUNTRIES = tuple(DEMO_LOCALES)

# A phrase each country's note template uses and no other country's does.
LANGUAGE_MARKERS = {
    "DE": " Jahre, ",
    "FR": " ans, ",
    "ES": " años ",
    "BR": " anos, ",
    "CN": "岁",
    "US": " years old, ",
}


def catalogue(locale: str) -> Mapping[str, Mapping[str, Any]]:
    module = "disease_correlations" if locale == "en_US" else f"{locale}.disease_correlations"
    table: Mapping[str, Mapping[str, Any]] = importlib.import_module(
        f"faker_healthcare.{module}"
    ).DISEASE_CORRELATIONS
    return table


def english_specialty_by_icd10() -> dict[str, str]:
    return {data["icd10"]: data["medical_specialty"] for data in catalogue("en_US").values()}


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def read_demo(path: Path) -> LabeledTexts:
    return read_labeled_texts(
        path, text_column=DEMO_TEXT_COLUMN, label_column=DEMO_LABEL_COLUMN, labels=DEMO_LABELS
    )


def file_bytes(federation: DemoFederation) -> dict[str, bytes]:
    files = {**federation.node_files, "test": federation.test_file}
    return {name: path.read_bytes() for name, path in files.items()}


@pytest.fixture(scope="module")
def everywhere(tmp_path_factory: pytest.TempPathFactory) -> DemoFederation:
    """A federation of every demo country, generated once for the read-only checks."""
    return write_demo_federation(
        tmp_path_factory.mktemp("everywhere"),
        countries=ALL_COUNTRIES,
        examples_per_country=300,
        test_examples=120,
    )


def test_default_federation_writes_three_countries_and_a_test_set(tmp_path: Path) -> None:
    federation = write_demo_federation(tmp_path / "demo")

    assert federation.folder == tmp_path / "demo"
    assert federation.labels == DEMO_LABELS
    assert dict(federation.node_files) == {
        "DE": tmp_path / "demo" / "de.csv",
        "FR": tmp_path / "demo" / "fr.csv",
        "ES": tmp_path / "demo" / "es.csv",
    }
    assert federation.test_file == tmp_path / "demo" / "test.csv"
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == [
        "de.csv",
        "es.csv",
        "fr.csv",
        "test.csv",
    ]
    for path in federation.node_files.values():
        assert len(read_demo(path)) == 400
    assert len(read_demo(federation.test_file)) == 300


def test_files_have_exactly_a_text_and_a_label_column(everywhere: DemoFederation) -> None:
    for path in (*everywhere.node_files.values(), everywhere.test_file):
        first_line = path.read_bytes().split(b"\n", 1)[0]
        assert first_line == b"text,label"


def test_same_seed_gives_the_same_bytes(tmp_path: Path) -> None:
    first = write_demo_federation(tmp_path / "a", countries=ALL_COUNTRIES, seed=7)
    second = write_demo_federation(tmp_path / "b", countries=ALL_COUNTRIES, seed=7)

    assert file_bytes(first) == file_bytes(second)


def test_another_seed_gives_other_data(tmp_path: Path) -> None:
    first = file_bytes(write_demo_federation(tmp_path / "a", seed=0))
    second = file_bytes(write_demo_federation(tmp_path / "b", seed=1))

    assert all(first[name] != second[name] for name in first)


def test_same_bytes_in_a_fresh_interpreter_with_other_hash_seeds(tmp_path: Path) -> None:
    here = write_demo_federation(
        tmp_path / "here", countries=("CN", "US"), examples_per_country=25, test_examples=10
    )
    script = (
        "import sys; from pathlib import Path; "
        "from residency.common.data.demo import write_demo_federation; "
        "write_demo_federation(Path(sys.argv[1]), countries=('CN', 'US'), "
        "examples_per_country=25, test_examples=10)"
    )
    for hash_seed in ("1", "2"):
        folder = tmp_path / f"there-{hash_seed}"
        env = {
            **os.environ,
            "PYTHONHASHSEED": hash_seed,
            "PYTHONSAFEPATH": "1",
            "PYTHONPATH": os.pathsep.join(entry for entry in sys.path if entry),
        }
        subprocess.run(
            [sys.executable, "-c", script, str(folder)], check=True, env=env, cwd=tmp_path
        )
        for name, data in file_bytes(here).items():
            file_name = "test.csv" if name == "test" else f"{name.lower()}.csv"
            assert (folder / file_name).read_bytes() == data, (hash_seed, name)


def test_adding_a_country_leaves_the_others_files_alone(tmp_path: Path) -> None:
    alone = write_demo_federation(tmp_path / "a", countries=("DE",), examples_per_country=50)
    together = write_demo_federation(
        tmp_path / "b", countries=("DE", "BR"), examples_per_country=50
    )

    assert alone.node_files["DE"].read_bytes() == together.node_files["DE"].read_bytes()


def test_demo_files_read_back_with_demo_labels_only(everywhere: DemoFederation) -> None:
    for path in (*everywhere.node_files.values(), everywhere.test_file):
        records = read_demo(path)
        assert records.label_names == DEMO_LABELS
        # Every class turns up in every file, so every node can learn every class.
        assert set(records.labels) == set(range(len(DEMO_LABELS))), path


def test_labels_are_the_english_specialty_of_the_notes_language(
    everywhere: DemoFederation,
) -> None:
    # Each demo label must be the English specialty for some disease in each locale's catalogue.
    english = english_specialty_by_icd10()
    for country, locale in DEMO_LOCALES.items():
        available = {english[data["icd10"]] for data in catalogue(locale).values()}
        assert set(DEMO_LABELS) <= available, country
    for path in everywhere.node_files.values():
        assert {row["label"] for row in read_csv_rows(path)} <= set(DEMO_LABELS)


def test_demo_labels_are_the_most_frequent_english_specialties() -> None:
    counts = Counter(data["medical_specialty"] for data in catalogue("en_US").values())
    smallest_kept = min(counts[label] for label in DEMO_LABELS)
    largest_left_out = max(count for name, count in counts.items() if name not in DEMO_LABELS)

    assert len(set(DEMO_LABELS)) == 6
    assert all(label in counts for label in DEMO_LABELS)
    assert smallest_kept >= largest_left_out
    assert list(DEMO_LABELS) == sorted(DEMO_LABELS, key=lambda label: -counts[label])


def test_every_country_writes_in_its_own_language(everywhere: DemoFederation) -> None:
    for country, path in everywhere.node_files.items():
        texts = read_demo(path).texts
        for other, marker in LANGUAGE_MARKERS.items():
            hits = sum(marker in text for text in texts)
            assert hits == (len(texts) if other == country else 0), (country, other)


def test_test_set_mixes_every_chosen_country_in_turn(tmp_path: Path) -> None:
    federation = write_demo_federation(
        tmp_path, countries=("CN", "DE", "US"), examples_per_country=5, test_examples=8
    )

    texts = read_demo(federation.test_file).texts
    languages = [
        next(country for country, marker in LANGUAGE_MARKERS.items() if marker in text)
        for text in texts
    ]
    assert languages == ["CN", "DE", "US", "CN", "DE", "US", "CN", "DE"]


def test_notes_name_no_specialty_disease_or_icd10_code(everywhere: DemoFederation) -> None:
    english = english_specialty_by_icd10()
    specialties = {name.casefold() for name in english.values()}
    codes = set(english)
    for locale in DEMO_LOCALES.values():
        specialties |= {data["medical_specialty"].casefold() for data in catalogue(locale).values()}

    for country, path in everywhere.node_files.items():
        kept_diseases = [
            name.casefold()
            for name, data in catalogue(DEMO_LOCALES[country]).items()
            if english[data["icd10"]] in DEMO_LABELS
        ]
        for text in read_demo(path).texts:
            folded = text.casefold()
            assert not [word for word in specialties if word in folded], text
            assert not [name for name in kept_diseases if name in folded], text
            assert not [code for code in codes if code in text], text


def test_notes_are_not_all_alike(everywhere: DemoFederation) -> None:
    for path in everywhere.node_files.values():
        texts = read_demo(path).texts
        assert len(set(texts)) > 0.9 * len(texts)


def test_rewriting_replaces_files_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    (tmp_path / "de.csv").write_text("stale", encoding="utf-8")

    federation = write_demo_federation(tmp_path, countries=("DE",), examples_per_country=3)

    assert federation.node_files["DE"].read_text(encoding="utf-8").startswith("text,label\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["de.csv", "test.csv"]


def test_a_failed_write_keeps_the_old_file_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "de.csv").write_text("old", encoding="utf-8")

    def refuse(source: object, target: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_demo_federation(tmp_path, countries=("DE",), examples_per_country=3)

    assert [p.name for p in tmp_path.iterdir()] == ["de.csv"]
    assert (tmp_path / "de.csv").read_text(encoding="utf-8") == "old"


@pytest.mark.parametrize(
    ("countries", "phrase"),
    [
        pytest.param(("DE", "IT"), "unknown demo countries \\['IT'\\]", id="unknown"),
        pytest.param(("de",), "unknown demo countries \\['de'\\]", id="lower case"),
        pytest.param(("DE", "DE"), "more than once", id="repeated"),
        pytest.param((), "empty", id="none"),
        pytest.param("DE", "sequence", id="bare string"),
    ],
)
def test_bad_countries_are_refused_naming_the_allowed_ones(
    tmp_path: Path, countries: tuple[str, ...], phrase: str
) -> None:
    with pytest.raises(ValueError, match=phrase) as caught:
        write_demo_federation(tmp_path, countries=countries)
    if "unknown" in phrase or "empty" in phrase:
        assert "DE, FR, ES, BR, CN, US" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "counts",
    [
        pytest.param({"examples_per_country": 0}, id="no examples"),
        pytest.param({"test_examples": -1}, id="negative test set"),
        pytest.param({"test_examples": True}, id="boolean"),
    ],
)
def test_counts_below_one_are_refused(tmp_path: Path, counts: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        write_demo_federation(tmp_path, **counts)  # type: ignore[arg-type]
