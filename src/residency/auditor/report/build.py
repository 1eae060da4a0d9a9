"""Building a ``Report`` from a ``Verification``: its findings arranged by run and country.

Every number comes from the verification: each node's recorded epsilon beside the auditor's
own recomputations, and each problem at its entry, so the report says what was checked, not
only what was claimed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TypeVar

from residency.auditor.crosscheck import AGREEMENT
from residency.auditor.report.model import (
    CountryReport,
    Finding,
    LedgerInfo,
    PolicyRef,
    RefusalRow,
    Report,
    RoundRow,
    RunReport,
)
from residency.auditor.verify import Problem, Refusal, RoundSpend, Verification
from residency.common.config.kinds import AccountantKind
from residency.common.privacy.signing import key_id
from residency.common.version import __version__

_T = TypeVar("_T")


def verdict(problems: int) -> str:
    """``VERIFIED``, ``1 PROBLEM`` or ``N PROBLEMS``."""
    if problems == 0:
        return "VERIFIED"
    return f"{problems} PROBLEM{'' if problems == 1 else 'S'}"


def build_report(verification: Verification) -> Report:
    """Arrange a verification's findings by run and country."""
    by_entry: dict[int, list[str]] = defaultdict(list)
    for problem in verification.problems:
        if problem.entry is not None:
            by_entry[problem.entry].append(problem.what)
    keeper = verification.keeper
    return Report(
        generator=f"residency {__version__}",
        ledger=LedgerInfo(
            path=str(verification.ledger),
            entries=verification.entries,
            keeper=keeper,
            keeper_key_id=_key_id(keeper),
            head=verification.head,
            head_entry=verification.entries - 1 if verification.head else None,
        ),
        verified=verification.ok,
        verdict=verdict(len(verification.problems)),
        problems=_findings(verification.problems),
        notes=_findings(verification.notes),
        resets=list(verification.resets),
        runs=[_run(run, verification, by_entry) for run in _run_order(verification)],
    )


def _key_id(public: str | None) -> str | None:
    if public is None:
        return None
    try:
        return key_id(public)
    except ValueError:
        return None


def _findings(problems: Iterable[Problem]) -> list[Finding]:
    return [Finding(entry=p.entry, what=p.what) for p in problems]


def _run_order(verification: Verification) -> list[str]:
    """Runs with a start or end entry in ledger order, then runs known only by their records."""
    order = list(verification.runs)
    first: dict[str, int] = {}
    items: list[RoundSpend | Refusal] = [*verification.spends, *verification.refusals]
    for item in items:
        first[item.run] = min(first.get(item.run, item.entry), item.entry)
    order += sorted((run for run in first if run not in verification.runs), key=first.__getitem__)
    return order


def _text(info: dict[str, object], key: str) -> str | None:
    value = info.get(key)
    return None if value is None else str(value)


def _number(info: dict[str, object], key: str) -> float | None:
    value = info.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _run(run: str, verification: Verification, by_entry: dict[int, list[str]]) -> RunReport:
    info = verification.runs.get(run, {})
    spends = [s for s in verification.spends if s.run == run]
    refusals = [r for r in verification.refusals if r.run == run]
    countries = [c for c in str(info.get("countries") or "").split(",") if c]
    items: list[RoundSpend | Refusal] = [*spends, *refusals]
    for item in sorted(items, key=lambda i: i.entry):
        if item.country not in countries:
            countries.append(item.country)
    first = spends[0].record if spends else None
    target = _number(info, "target_epsilon")
    delta = _number(info, "delta")
    accountant = _text(info, "accountant")
    if first is not None:
        target = first.target_epsilon if target is None else target
        delta = first.delta if delta is None else delta
        accountant = first.accountant.value if accountant is None else accountant
    rounds = _number(info, "rounds")
    return RunReport(
        run=run,
        job=_text(info, "job") or (first.job if first else None),
        status=_text(info, "status"),
        started=_text(info, "started"),
        finished=_text(info, "finished"),
        rounds_planned=None if rounds is None else int(rounds),
        target_epsilon=target,
        delta=delta,
        accountant=accountant,
        dp_accounting_agreement=_agreement(accountant),
        update=_text(info, "update"),
        countries=[
            _country(
                country,
                [s for s in spends if s.country == country],
                [r for r in refusals if r.country == country],
                by_entry,
            )
            for country in countries
        ],
    )


def _agreement(accountant: str | None) -> str | None:
    try:
        return AGREEMENT[AccountantKind(accountant or "")]
    except ValueError:
        return None


def _unique(values: Iterable[_T]) -> list[_T]:
    return list(dict.fromkeys(values))


def _country(
    country: str,
    spends: Sequence[RoundSpend],
    refusals: Sequence[Refusal],
    by_entry: dict[int, list[str]],
) -> CountryReport:
    spends = sorted(spends, key=lambda s: (s.round, s.entry))
    rows = [
        RoundRow(
            round=s.round,
            entry=s.entry,
            epsilon_round=s.record.epsilon_round,
            epsilon_recorded=s.record.epsilon,
            epsilon_opacus=s.epsilon_opacus,
            epsilon_dp_accounting=s.epsilon_dp_accounting,
            epsilon_dataset=s.epsilon_dataset,
            budget_epsilon=s.record.budget_epsilon,
            target_epsilon=s.record.target_epsilon,
            noise_multiplier=s.record.noise_multiplier,
            sample_rate=s.record.sample_rate,
            steps=s.record.steps,
            max_grad_norm=s.record.max_grad_norm,
            averaged=s.averaged,
            problems=by_entry.get(s.entry, []),
        )
        for s in spends
    ]
    last = rows[-1] if rows else None
    return CountryReport(
        country=country,
        rounds=rows,
        refusals=[
            RefusalRow(
                round=r.round, entry=r.entry, reason=r.reason, problems=by_entry.get(r.entry, [])
            )
            for r in sorted(refusals, key=lambda r: (r.round, r.entry))
        ],
        policies=_unique(
            PolicyRef(name=s.record.policy_name, sha256=s.record.policy) for s in spends
        ),
        datasets=_unique(s.record.dataset for s in spends),
        keys=_unique(key_id(s.record.key) for s in spends),
        epsilon_recorded=None if last is None else last.epsilon_recorded,
        epsilon_dataset=None if last is None else last.epsilon_dataset,
        budget_epsilon=None if last is None else last.budget_epsilon,
        privacy_unit=spends[-1].record.privacy_unit.value if spends else "record",
        records_per_person=spends[-1].record.records_per_person if spends else None,
    )
