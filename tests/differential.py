"""Differential runs of the real node: one message against D and against D plus one record.

Everything a coordinator observes of a round (reply or refusal code or fault, the charge, every
non-noised byte of the reply and its signed record, the shapes of the noised arrays) must be the
same for two datasets one record apart, or the difference is a membership oracle. The node's
secret noise is fixed for the pair (the operator's ``noise_seed``), so even the noise draws are
the same; only what the extra record adds to noised outputs may differ.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message

from node_harness import confirm_round, node_file, signed_record, train_round, update_of
from residency.client.budget_store import STORE_FILE, BudgetStore
from residency.common import wire
from residency.common.config.job import Job
from residency.common.errors import ConfigError, DataError, Refused
from residency.common.privacy.signing import create_signer

NOISE_SEED = 20_241_205
"""The pair's shared node secret: the same noise and batches for D and D'."""

RECORD_FIELDS_NOISED = frozenset({"update_sha256"})
"""Record fields that are functions of the noised update (the update's hash)."""
RECORD_FIELDS_PER_NODE = frozenset({"dataset", "key", "signed_at"})
"""Record fields that differ between the pair's two nodes whatever the data: the account's
keyed pseudonym (each store has its own secret), the signing key, the wall-clock time."""

AWKWARD = {
    "unknown label": ("good fine happy", "zzz-not-a-label"),
    "blank text": ("   ", "pos"),
    "maximal length": (" ".join(["terrible"] * 600), "neg"),
    "extreme tokens": ("[CLS] [SEP] [MASK] \u0000 \U0001f600 \ufffd" * 40, "obj"),
    "duplicate": None,  # the first row again
}
"""Kinds of the one record D' adds to D."""


@dataclass(frozen=True)
class Outcome:
    """What a coordinator can observe of one message, with the noised values set apart."""

    kind: str
    refusal: tuple[str, tuple[tuple[str, float], ...]] | None = None
    charges: tuple[tuple[Any, ...], ...] = ()
    metrics: tuple[tuple[str, Any], ...] = ()
    record: tuple[tuple[str, Any], ...] = ()
    node: tuple[tuple[str, Any], ...] = ()
    shapes: tuple[tuple[str, str, tuple[int, ...]], ...] = ()
    held: tuple[tuple[Any, ...], ...] = ()  # the budget the node holds for jobs it confirmed
    noised: dict[str, np.ndarray] = field(default_factory=dict, compare=False)

    @property
    def finite(self) -> bool:
        """Whether every noised number is finite."""
        return all(np.isfinite(value).all() for value in self.noised.values())


def write_rows(path: Path, rows: Sequence[tuple[str, ...]]) -> None:
    """The operator's data file (``text,label`` CSV, and ``person`` when rows have a third)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "person"][: len(rows[0]) if rows else 2])
        writer.writerows(rows)


CAP = 3
"""``records_per_person`` of a person-level pair."""

NEW_PEOPLE = {
    "many awkward records": [
        ("good fine happy", "zzz-not-a-label"),
        ("   ", "pos"),
        (" ".join(["terrible"] * 600), "neg"),
        ("[CLS] [SEP] [MASK] \u0000 \U0001f600 \ufffd" * 40, "obj"),
        *[("fine and good", "pos")] * 8,
    ],
    "one record": [("dreadful awful", "neg")],
}
"""The records of the one person D' adds to D, by kind (the person's id is new)."""


def pair_person_nodes(
    root: Path, rows: Sequence[tuple[str, str, str]], kind: str, *, budget: float = 100.0
) -> tuple[Path, Path]:
    """Two person-level node.toml files: one over D, one over D plus one person of ``kind``.

    Both declare the same public number of people (D's), as one operator would.
    """
    extra = [(text, label, "the-new-person") for text, label in NEW_PEOPLE[kind]]
    people = len({person for _, _, person in rows})
    person = (
        f'privacy_unit = "person"\nperson_column = "person"\n'
        f"records_per_person = {CAP}\npublic_people = {people}\n"
    )
    return _pair(root, rows, [*rows, *extra], budget=budget, settings=person)


def neighbours(rows: Sequence[tuple[str, str]], kind: str) -> list[tuple[str, str]]:
    """D plus one record of ``kind`` (see :data:`AWKWARD`)."""
    extra = AWKWARD[kind] or rows[0]
    return [*rows, extra]


def signing_key(folder: Path) -> Path:
    """One node key for both nodes of a pair, so their records are signed alike."""
    path = folder / "record.key"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        create_signer(path, comment="residency-record-pair")
    return path


def pair_nodes(
    root: Path, rows: Sequence[tuple[str, str]], kind: str, *, budget: float = 100.0
) -> tuple[Path, Path]:
    """Two operators' node.toml files: one over D, one over D plus a ``kind`` record.

    Both declare the same public size (D's count), as one operator would before and after
    one record more.
    """
    return _pair(root, rows, neighbours(rows, kind), budget=budget)


def _pair(
    root: Path,
    rows: Sequence[tuple[str, ...]],
    more: Sequence[tuple[str, ...]],
    *,
    budget: float,
    settings: str = "",
) -> tuple[Path, Path]:
    """node.toml over ``rows`` and over ``more``: one shared key and noise seed, D's size."""
    key = signing_key(root / "shared")
    made = []
    for name, data in (("d", list(rows)), ("d-plus-one", list(more))):
        folder = root / name
        write_rows(folder / "data" / "de.csv", data)
        made.append(
            node_file(
                folder,
                budget,
                data="data/de.csv",
                public_records=len(rows),
                extra=f'noise_seed = {NOISE_SEED}\nsigning_key = "{key}"\n{settings}',
            )
        )
    return made[0], made[1]


def observe(settings: Path, send: Callable[[], Message]) -> Outcome:
    """Send one message to the node ``settings`` describes and keep what leaves it."""
    state = settings.parent / "state" / STORE_FILE
    try:
        reply = send()
    except Refused as exc:
        values = tuple(sorted((k, float(v)) for k, v in exc.refusal.values.items()))
        return Outcome(
            "refused", (exc.refusal.code.value, values), _charges(state), held=_held(state)
        )
    except (ConfigError, DataError):
        return Outcome("fault", charges=_charges(state), held=_held(state))
    if reply.has_error():
        return Outcome(f"error {reply.error.code}", charges=_charges(state), held=_held(state))
    content = reply.content
    if wire.RECORD not in content.config_records:  # a confirmation: no record, no update
        return Outcome(
            "confirmed",
            charges=_charges(state),
            node=_items(content.config_records[wire.NODE]),
            held=_held(state),
        )
    record = signed_record(reply).model_dump(mode="json")
    arrays = update_of(reply)
    return Outcome(
        "reply",
        charges=_charges(state),
        metrics=_items(content.metric_records[wire.METRICS]),
        record=tuple(
            sorted(
                (name, _hashable(value))
                for name, value in record.items()
                if name not in RECORD_FIELDS_NOISED | RECORD_FIELDS_PER_NODE
            )
        ),
        node=_items(content.config_records[wire.NODE], drop={wire.DATASET_ACCOUNT}),
        shapes=tuple(sorted((n, str(a.dtype), tuple(a.shape)) for n, a in arrays.items())),
        held=_held(state),
        noised=arrays,
    )


def _both(pair: tuple[Path, Path], send: Callable[[Path], Message]) -> tuple[Outcome, Outcome]:
    """``send`` the same message to the node over D and to the node over D'."""
    first, second = pair
    return observe(first, lambda: send(first)), observe(second, lambda: send(second))


def query_pair(
    job: Job,
    pair: tuple[Path, Path],
    *,
    run_id: int,
    server_round: int,
    overrides: Mapping[str, Any] | None = None,
    nonce: str | None = None,
) -> tuple[Outcome, Outcome]:
    """One and the same confirmation query to the node over D and the node over D'."""
    return _both(
        pair,
        lambda settings: confirm_round(
            job,
            settings,
            run_id=run_id,
            server_round=server_round,
            overrides=overrides,
            nonce=nonce,
        ),
    )


def round_pair(
    job: Job,
    pair: tuple[Path, Path],
    *,
    run_id: int,
    server_round: int,
    overrides: Mapping[str, Any] | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
    nonce: str | None = None,
) -> tuple[Outcome, Outcome]:
    """One and the same message to the node over D and the node over D'."""
    return _both(
        pair,
        lambda settings: train_round(
            job,
            settings,
            run_id=run_id,
            server_round=server_round,
            overrides=overrides,
            arrays=arrays,
            nonce=nonce,
        ),
    )


def assert_indistinguishable(first: Outcome, second: Outcome) -> None:
    """Everything but the noised values is equal, and those are finite and of equal shapes."""
    assert first == second, _difference(first, second)
    assert first.finite, "a noised output over D is not finite"
    assert second.finite, "a noised output over D plus one record is not finite"


def _difference(first: Outcome, second: Outcome) -> str:
    for name in ("kind", "refusal", "charges", "metrics", "record", "node", "shapes", "held"):
        a, b = getattr(first, name), getattr(second, name)
        if a != b:
            if isinstance(a, tuple) and isinstance(b, tuple) and name in ("record", "metrics"):
                diff = sorted(set(a) ^ set(b))
                return f"{name} differs between D and D+1: {diff[:6]}"
            return f"{name} differs between D and D+1: {a!r} != {b!r}"
    return "outcomes differ"


def _charges(state: Path) -> tuple[tuple[Any, ...], ...]:
    if not state.exists():
        return ()
    return tuple(
        (c.round, *c.step, c.delta, c.accountant, c.trained_at is not None)
        for c in BudgetStore(state).charges()
    )


def _held(state: Path) -> tuple[tuple[Any, ...], ...]:
    if not state.exists():
        return ()
    return tuple(r.planned for r in BudgetStore(state).reservations())


def _items(record: Mapping[str, Any], drop: frozenset[str] | set[str] = frozenset()) -> Any:
    return tuple(sorted((k, _hashable(v)) for k, v in record.items() if k not in drop))


def _hashable(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value
