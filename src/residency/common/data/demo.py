"""A synthetic multilingual clinical triage federation, so a demo needs no real patient data.

Each country gets short triage notes in its own language, generated offline by
``faker-healthcare-provider`` and labelled with the medical specialty the patient should be sent
to. Labels are the English specialty names, looked up by ICD-10 code in the English catalogue,
so all countries share one label set while their texts differ in language: the situation
federated fine-tuning of a multilingual model is for.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from faker import Faker
from faker_healthcare import HealthcareProvider
from faker_healthcare import de_DE as healthcare_de_de
from faker_healthcare import es_ES as healthcare_es_es
from faker_healthcare import fr_FR as healthcare_fr_fr
from faker_healthcare import pt_BR as healthcare_pt_br
from faker_healthcare import zh_CN as healthcare_zh_cn
from faker_healthcare.disease_correlations import DISEASE_CORRELATIONS

DEMO_LABELS: tuple[str, ...] = (
    "Gastroenterology",
    "Pulmonology",
    "Cardiology",
    "Neurology",
    "Oncology",
    "Hematology",
)
"""The demo's classes: the six specialties with the most diseases in the English catalogue.

By disease count (faker-healthcare-provider 2.5.0): Gastroenterology 19, Pulmonology 14,
Cardiology 13, Neurology 11, Oncology 10, then a three-way tie at 9 between Endocrinology,
Hematology and Otolaryngology. The tie is broken towards Hematology, the specialty the
project's design first named. A fixed tuple rather than a computed one keeps the label set,
and so every trained model's output layer, stable if a later catalogue shifts the counts.
"""

DEMO_LOCALES: Mapping[str, str] = MappingProxyType(
    {"DE": "de_DE", "FR": "fr_FR", "ES": "es_ES", "BR": "pt_BR", "CN": "zh_CN", "US": "en_US"}
)
"""Country code to the Faker locale whose language that country's notes are written in."""

DEMO_TEXT_COLUMN = "text"
"""Name of the column holding the triage note in every demo CSV file."""

DEMO_LABEL_COLUMN = "label"
"""Name of the column holding the English specialty in every demo CSV file."""

_PROVIDERS: Mapping[str, type[Any]] = MappingProxyType(
    {
        "de_DE": healthcare_de_de.Provider,
        "fr_FR": healthcare_fr_fr.Provider,
        "es_ES": healthcare_es_es.Provider,
        "pt_BR": healthcare_pt_br.Provider,
        "zh_CN": healthcare_zh_cn.Provider,
        "en_US": HealthcareProvider,
    }
)


@dataclass(frozen=True)
class _NoteTemplate:
    """How one language writes a triage note.

    Attributes:
        text: Format string with ``{age}``, ``{symptoms}`` and ``{medications}``; it must name
            neither the disease, its ICD-10 code nor the specialty, or the task would be trivial.
        separator: Joins list items, since Chinese uses an enumeration comma, not ", ".
    """

    text: str
    separator: str = ", "


_TEMPLATES: Mapping[str, _NoteTemplate] = MappingProxyType(
    {
        "de_DE": _NoteTemplate(
            "Patient, {age} Jahre, stellt sich vor mit {symptoms}. "
            "Aktuelle Behandlung: {medications}."
        ),
        "fr_FR": _NoteTemplate(
            "Patient de {age} ans, consulte pour {symptoms}. Traitement en cours : {medications}."
        ),
        "es_ES": _NoteTemplate(
            "Paciente de {age} años que acude por {symptoms}. Tratamiento actual: {medications}."
        ),
        "pt_BR": _NoteTemplate(
            "Paciente de {age} anos, procura atendimento com {symptoms}. "
            "Tratamento atual: {medications}."
        ),
        "zh_CN": _NoteTemplate("患者，{age}岁，因{symptoms}就诊。目前治疗：{medications}。", "、"),
        "en_US": _NoteTemplate(
            "Patient, {age} years old, presents with {symptoms}. Current treatment: {medications}."
        ),
    }
)

_MIN_AGE = 18
_MAX_AGE = 90


def _specialty_by_icd10() -> Mapping[str, str]:
    """Map ICD-10 code to English specialty; a code with two specialties would mislabel notes."""
    specialties: dict[str, str] = {}
    for disease, data in DISEASE_CORRELATIONS.items():
        code, specialty = data["icd10"], data["medical_specialty"]
        if specialties.setdefault(code, specialty) != specialty:
            raise RuntimeError(
                f"faker-healthcare catalogue gives ICD-10 {code} two specialties "
                f"({specialties[code]!r} and {specialty!r} for {disease!r})"
            )
    return MappingProxyType(specialties)


_SPECIALTY_BY_ICD10 = _specialty_by_icd10()


@dataclass(frozen=True)
class DemoFederation:
    """Where ``write_demo_federation`` put each country's data and the shared test set.

    Attributes:
        folder: The folder holding all the files.
        labels: The label set every file uses, in the order a job should declare it.
        node_files: Country code to that country's training CSV (columns ``text,label``).
        test_file: The global test CSV, mixing every chosen country's language, so the
            coordinator can measure how one model serves all of them.
    """

    folder: Path
    labels: tuple[str, ...]
    node_files: Mapping[str, Path]
    test_file: Path


def write_demo_federation(
    folder: Path,
    *,
    countries: Sequence[str] = ("DE", "FR", "ES"),
    examples_per_country: int = 400,
    test_examples: int = 300,
    seed: int = 0,
) -> DemoFederation:
    """Write one training CSV per country and a mixed-language test CSV into ``folder``.

    The same arguments always give the same bytes, so a demo run can be repeated and its data
    fingerprints compared. Each country, and the test set, draws from its own seeded stream,
    so adding a country does not change the others' files. Files are replaced atomically, so a
    node started during a rewrite reads either the old file or the new one, never half of one.

    Args:
        folder: Created if missing; existing demo files in it are replaced.
        countries: Country codes from ``DEMO_LOCALES``, each at most once.
        examples_per_country: Training notes per country.
        test_examples: Notes in the test set, taken from the countries in turn.
        seed: Seeds every stream; change it for a different but equally shaped federation.

    Returns:
        The paths written and the label set.

    Raises:
        ValueError: An unknown or repeated country, or a count below one.
    """
    chosen = _checked_countries(countries)
    for name, count in (
        ("examples_per_country", examples_per_country),
        ("test_examples", test_examples),
    ):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{name} must be a whole number of at least 1, got {count!r}")
    folder.mkdir(parents=True, exist_ok=True)
    node_files: dict[str, Path] = {}
    for country in chosen:
        notes = _triage_notes(country, seed=seed, purpose="train")
        node_files[country] = folder / f"{country.lower()}.csv"
        _write_csv(node_files[country], (next(notes) for _ in range(examples_per_country)))
    streams = [_triage_notes(country, seed=seed, purpose="test") for country in chosen]
    test_file = folder / "test.csv"
    _write_csv(test_file, (next(streams[i % len(streams)]) for i in range(test_examples)))
    return DemoFederation(
        folder=folder,
        labels=DEMO_LABELS,
        node_files=MappingProxyType(node_files),
        test_file=test_file,
    )


def _checked_countries(countries: Sequence[str]) -> tuple[str, ...]:
    allowed = ", ".join(DEMO_LOCALES)
    if isinstance(countries, str):
        raise ValueError(
            f"countries must be a sequence of codes such as ('DE',), not {countries!r}"
        )
    chosen = tuple(countries)
    if not chosen:
        raise ValueError(f"countries is empty; choose at least one of {allowed}")
    unknown = [country for country in chosen if country not in DEMO_LOCALES]
    if unknown:
        raise ValueError(f"unknown demo countries {unknown!r}; allowed: {allowed}")
    repeated = sorted({country for country in chosen if chosen.count(country) > 1})
    if repeated:
        raise ValueError(f"countries {repeated!r} given more than once; each gets one file")
    return chosen


def _triage_notes(country: str, *, seed: int, purpose: str) -> Iterator[tuple[str, str]]:
    """Yield (note, English specialty) pairs for one country, endlessly and reproducibly.

    Only diseases whose specialty is in ``DEMO_LABELS`` are drawn. A symptom or treatment that
    contains the name of one of those diseases (the catalogue lists "Anemia" as a symptom of
    myeloma, for instance) is left out, so no note spells out a diagnosis.
    """
    locale = DEMO_LOCALES[country]
    fake = Faker(locale)
    provider = _PROVIDERS[locale](fake)
    fake.add_provider(provider)
    fake.seed_instance(_stream_seed(seed, country, purpose))
    catalogue: Mapping[str, Mapping[str, Any]] = provider.disease_correlations
    diseases = [
        name
        for name, data in catalogue.items()
        if _SPECIALTY_BY_ICD10.get(data["icd10"]) in DEMO_LABELS
    ]
    disease_names = tuple(name.casefold() for name in diseases)
    template = _TEMPLATES[locale]
    while True:
        scenario = fake.patient_scenario(fake.random_element(diseases))
        age = fake.random_int(min=_MIN_AGE, max=_MAX_AGE)
        symptoms = _without_names(scenario["symptoms"], disease_names)
        medications = _without_names(scenario["medications"], disease_names)
        if not symptoms or not medications:
            continue
        note = template.text.format(
            age=age,
            symptoms=template.separator.join(symptoms),
            medications=template.separator.join(medications),
        )
        yield note, _SPECIALTY_BY_ICD10[scenario["icd10"]]


def _without_names(items: Iterable[str], names: tuple[str, ...]) -> list[str]:
    return [item for item in items if not any(name in item.casefold() for name in names)]


def _stream_seed(seed: int, country: str, purpose: str) -> int:
    """Derive a stream's seed; hashing keeps streams apart that small integer offsets would not."""
    digest = hashlib.sha256(f"residency-demo:{seed}:{country}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _write_csv(path: Path, rows: Iterable[tuple[str, str]]) -> None:
    """Write a ``text,label`` CSV next to ``path`` and move it into place in one step."""
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow((DEMO_TEXT_COLUMN, DEMO_LABEL_COLUMN))
            writer.writerows(rows)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
