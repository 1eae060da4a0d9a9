"""The auditor's report on a verified ledger: HTML with burn-down plots, JSON or Markdown.

Every number comes from a ``Verification``: each node's recorded epsilon stands beside the
auditor's own recomputations (Opacus and Google's dp-accounting), and every problem the verifier
found is shown with its entry number, so the report says what was checked, not only what was
claimed; every budget reset a node operator made is listed with the operator's reason. The
HTML page is one self-contained file (inline CSS and SVG, no script, no external URL, no web
font) so it can be archived, mailed and opened offline; rendering the same ledger twice gives
the same bytes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from html import escape
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from residency.auditor.burndown import Burndown, RoundEpsilons, render_burndown
from residency.auditor.crosscheck import AGREEMENT_RTOL
from residency.auditor.report_format import ReportFormat
from residency.auditor.verify import (
    SAME_LIBRARY_RTOL,
    Problem,
    Refusal,
    Reset,
    RoundSpend,
    Verification,
)
from residency.common.config.job import AccountantKind
from residency.common.privacy.signing import key_id
from residency.common.version import __version__

_T = TypeVar("_T")
SHORT_HASH = 12
"""Hex digits shown of a dataset account or policy hash (the JSON keeps all 64)."""


class _Model(BaseModel):
    # Infinite recomputed epsilons (a round with no noise) are written as JSON null.
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="null")


class Finding(_Model):
    """A problem or note from the verifier; ``entry`` is ``None`` for the ledger as a whole."""

    entry: int | None
    what: str


class RoundRow(_Model):
    """One node record: its claims and the auditor's recomputed epsilons."""

    round: int
    entry: int
    epsilon_round: float
    epsilon_recorded: float
    epsilon_opacus: float
    epsilon_dp_accounting: float
    epsilon_dataset: float
    budget_epsilon: float
    target_epsilon: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    averaged: bool
    problems: list[str]


class RefusalRow(_Model):
    """A round the node declined, with its reason verbatim."""

    round: int
    entry: int
    reason: str
    problems: list[str]


class ResetRow(_Model):
    """A node operator opened a new budget account for a dataset, in the operator's words.

    ``entry`` is an entry number of ``ledger`` (a node's ledger, not necessarily the one
    reported on).
    """

    ledger: str
    entry: int
    at: str
    country: str
    dataset: str
    old_account: str
    new_account: str
    reason: str


class PolicyRef(_Model):
    """The node's jurisdiction policy in force, by name and SHA-256 of its rules."""

    name: str | None
    sha256: str | None


class CountryReport(_Model):
    """One country's part in one run."""

    country: str
    rounds: list[RoundRow]
    refusals: list[RefusalRow]
    policies: list[PolicyRef]
    datasets: list[str]
    keys: list[str]
    epsilon_recorded: float | None
    epsilon_dataset: float | None
    budget_epsilon: float | None


class RunReport(_Model):
    """One run: what it asked for (its run-started entry) and each country's spend."""

    run: str
    job: str | None
    status: str | None
    started: str | None
    finished: str | None
    rounds_planned: int | None
    target_epsilon: float | None
    delta: float | None
    accountant: str | None
    dp_accounting_rtol: float | None
    update: str | None
    countries: list[CountryReport]


class LedgerInfo(_Model):
    """The ledger file and its chain."""

    path: str
    entries: int
    keeper: str | None
    keeper_key_id: str | None
    head: str | None
    head_entry: int | None


class Report(_Model):
    """The whole report; its JSON is the ``--format json`` output (see docs/audit-report.md)."""

    schema_version: Literal[1] = 1
    generator: str
    ledger: LedgerInfo
    verified: bool
    verdict: str
    problems: list[Finding]
    notes: list[Finding]
    resets: list[ResetRow]
    runs: list[RunReport]


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
        resets=[_reset(reset) for reset in verification.resets],
        runs=[_run(run, verification, by_entry) for run in _run_order(verification)],
    )


def render_report(verification: Verification, *, fmt: ReportFormat) -> str:
    """The report on ``verification`` as an HTML page, JSON document or Markdown text."""
    report = build_report(verification)
    if fmt is ReportFormat.JSON:
        return report.model_dump_json(indent=2) + "\n"
    if fmt is ReportFormat.MD:
        return _markdown(report)
    return _html(report)


# --- building -------------------------------------------------------------------------------


def _key_id(public: str | None) -> str | None:
    if public is None:
        return None
    try:
        return key_id(public)
    except ValueError:
        return None


def _findings(problems: Iterable[Problem]) -> list[Finding]:
    return [Finding(entry=p.entry, what=p.what) for p in problems]


def _reset(reset: Reset) -> ResetRow:
    return ResetRow(
        ledger=str(reset.ledger),
        entry=reset.entry,
        at=reset.at,
        country=reset.country,
        dataset=reset.dataset,
        old_account=reset.old_account,
        new_account=reset.new_account,
        reason=reset.reason,
    )


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
        dp_accounting_rtol=_rtol(accountant),
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


def _rtol(accountant: str | None) -> float | None:
    try:
        return AGREEMENT_RTOL[AccountantKind(accountant or "")]
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
            epsilon_dataset=s.record.epsilon_dataset,
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
    )


# --- formatting helpers ---------------------------------------------------------------------


def _eps(value: float | None) -> str:
    if value is None:
        return "–"
    return "∞" if math.isinf(value) else f"{value:.4f}"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def _short(digest: str | None) -> str:
    return "–" if not digest else digest[:SHORT_HASH]


def _where(entry: int | None) -> str:
    return "ledger" if entry is None else f"entry {entry}"


def _policy(policy: PolicyRef) -> str:
    return f"{policy.name or '(unnamed)'} {_short(policy.sha256)}"


def _head(ledger: LedgerInfo) -> str | None:
    """``ENTRY:HASH``, as ``audit verify --since`` takes it."""
    return None if ledger.head is None else f"{ledger.head_entry}:{ledger.head}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _status(run: RunReport) -> str:
    return run.status or "not finished"


# --- burn-down plot -------------------------------------------------------------------------


def _burndown(run: RunReport, country: CountryReport, *, ident: str) -> str:
    """The country's chart, its text alternative written with the tables' number format."""
    rows = country.rounds
    refused = tuple(sorted({r.round for r in country.refusals if r.round >= 1}))
    target = run.target_epsilon
    budget = country.budget_epsilon
    title = f"{country.country}, run {run.run}: cumulative epsilon by round"
    if target is not None:
        title += f" against the job target {target:g}"
    if budget is not None:
        title += f" and the dataset budget {budget:g}"
    desc = (
        "; ".join(
            f"round {r.round}: recorded {_eps(r.epsilon_recorded)}, "
            f"Opacus {_eps(r.epsilon_opacus)}, "
            f"dp-accounting {_eps(r.epsilon_dp_accounting)}, dataset {_eps(r.epsilon_dataset)}"
            for r in rows
        )
        or "no rounds recorded"
    )
    if refused:
        desc += "; refused rounds: " + ", ".join(map(str, refused))
    chart = Burndown(
        country=country.country,
        title=title,
        description=desc,
        rounds=tuple(
            RoundEpsilons(
                round=r.round,
                recorded=r.epsilon_recorded,
                opacus=r.epsilon_opacus,
                dp_accounting=r.epsilon_dp_accounting,
                dataset=r.epsilon_dataset,
                flagged=bool(r.problems),
            )
            for r in rows
        ),
        refused=refused,
        rounds_planned=run.rounds_planned,
        target=target,
        budget=budget,
    )
    return render_burndown(chart, ident=ident)


# --- HTML -----------------------------------------------------------------------------------

_CSS = """
:root { --ink: #1a1a1a; --muted: #595959; --rule: #d4d4d4; --soft: #f4f5f7;
  --ok: #1b7837; --ok-bg: #edf7ef; --bad: #b2182b; --bad-bg: #fcefef; --warn: #8c510a;
  --warn-bg: #fdf6ea; }
* { box-sizing: border-box; }
html { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
body { margin: 0; color: var(--ink); background: #ffffff; font: 15px/1.5 system-ui,
  -apple-system, "Segoe UI", Roboto, "Helvetica Neue", "Liberation Sans", "DejaVu Sans", Arial,
  sans-serif; }
.page { max-width: 1120px; margin: 0 auto; padding: 28px 40px 48px; }
h1 { font-size: 26px; margin: 0 0 2px; }
h2 { font-size: 21px; margin: 0 0 6px; }
h3 { font-size: 17px; margin: 0 0 4px; }
h4 { font-size: 14px; margin: 16px 0 4px; text-transform: uppercase; letter-spacing: .05em;
  color: var(--muted); }
.subtitle { color: var(--muted); margin: 0 0 16px; }
.verdict { display: inline-block; font-weight: 700; font-size: 18px; letter-spacing: .06em;
  padding: 4px 14px; border: 2px solid; border-radius: 4px; }
.verdict.ok { color: var(--ok); border-color: var(--ok); background: var(--ok-bg); }
.verdict.bad { color: var(--bad); border-color: var(--bad); background: var(--bad-bg); }
dl.facts { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: 2px 18px;
  margin: 12px 0; }
dl.facts.grid { grid-template-columns: repeat(3, max-content minmax(max-content, 1fr)); }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; }
code { font-family: "DejaVu Sans Mono", "Liberation Mono", Menlo, Consolas, monospace;
  font-size: 13px; overflow-wrap: anywhere; }
.box { border-left: 6px solid; padding: 10px 20px; margin: 18px 0; }
.box h2 { font-size: 17px; }
.box ol, .box ul { margin: 4px 0; padding-left: 22px; }
.problems { border-color: var(--bad); background: var(--bad-bg); }
.problems h2 { color: var(--bad); }
.notes { border-color: var(--warn); background: var(--warn-bg); }
.resets { border-color: var(--muted); background: var(--soft); }
.where { font-weight: 600; color: inherit; }
section.run { border-top: 3px solid var(--ink); margin-top: 32px; padding-top: 10px; }
section.country { border-top: 1px solid var(--rule); margin-top: 24px; padding-top: 12px; }
.summary { margin: 0 0 8px; }
figure { margin: 8px 0 12px; }
figcaption { color: var(--muted); font-size: 13px; }
svg.burndown { display: block; width: 100%; max-width: 900px; height: auto; }
svg.burndown text { font-family: inherit; font-size: 12px; fill: #333333; }
svg.burndown .axis-label { font-size: 13px; font-weight: 600; }
svg.burndown .line-label, svg.burndown .refused-label { font-size: 11.5px; font-weight: 600; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 13px;
  font-variant-numeric: tabular-nums; }
th, td { padding: 4px 7px; text-align: right; white-space: nowrap;
  border-bottom: 1px solid var(--rule); }
thead th { background: var(--soft); border-bottom: 2px solid #8c8c8c; font-weight: 600;
  vertical-align: bottom; white-space: normal; }
th.text, td.text { text-align: left; white-space: normal; }
td.auditor { background: #f7f9fc; }
tr.bad td, tr.bad th { background: var(--bad-bg); }
tr.bad td.check { color: var(--bad); font-weight: 600; }
td.check { text-align: left; white-space: normal; min-width: 12em; }
table.refusals td.text { width: 100%; }
table.rounds caption { caption-side: bottom; text-align: left; color: var(--muted);
  font-size: 12px; padding-top: 3px; }
.muted { color: var(--muted); }
footer { margin-top: 36px; border-top: 1px solid var(--rule); padding-top: 10px;
  color: var(--muted); font-size: 13px; }
@page { size: A4; margin: 14mm; }
@media print {
  body { font-size: 10.5pt; }
  .page { max-width: none; padding: 0; }
  section.country { break-inside: avoid-page; }
  .table-wrap { overflow: visible; }
  th, td { padding: 2px 5px; }
}
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_ROUND_COLUMNS = (
    ("Round", ""),
    ("Entry", "ledger entry number"),
    ("ε round", "epsilon of this round alone, recorded"),
    ("ε run recorded", "cumulative epsilon of the run, as the node signed it"),
    ("ε Opacus", "the auditor's recomputation with Opacus"),
    ("ε dp-accounting", "the auditor's recomputation with Google's dp-accounting"),
    ("ε dataset", "the dataset's lifetime epsilon, recorded"),
    ("Budget", "the dataset's lifetime epsilon budget"),
    ("σ noise", "noise multiplier"),
    ("q sample", "Poisson sample rate"),
    ("Steps", "DP-SGD steps this round"),
    ("C clip", "max per-example gradient norm; for a prototypes release, its L2 sensitivity"),
    ("Averaged", "whether the coordinator averaged the update"),
)


def _h(value: object) -> str:
    return escape(str(value))


def _findings_html(title: str, css: str, findings: Sequence[Finding], rows: frozenset[int]) -> str:
    """The findings, each linked to its entry's row in a table below where there is one."""
    if not findings:
        return ""
    items = "".join(
        f'<li><a class="where" href="#entry-{f.entry}">{_where(f.entry)}</a>: {_h(f.what)}</li>'
        if f.entry in rows
        else f'<li><span class="where">{_where(f.entry)}</span>: {_h(f.what)}</li>'
        for f in findings
    )
    return (
        f'<section class="box {css}" aria-labelledby="{css}-heading">'
        f'<h2 id="{css}-heading">{_h(title)} ({len(findings)})</h2><ol>{items}</ol></section>'
    )


def _resets_html(resets: Sequence[ResetRow]) -> str:
    """Each budget reset: not a fault, but the one way a dataset's budget starts over."""
    if not resets:
        return ""
    head = "".join(
        f'<th scope="col" class="text">{_h(name)}</th>'
        for name in ("Country", "Dataset", "Account", "At", "Ledger entry", "Reason, verbatim")
    )
    rows = "".join(
        f'<tr><th scope="row" class="text">{_h(r.country)}</th>'
        f'<td class="text">{_h(r.dataset)}</td>'
        f'<td class="text">{_code(_short(r.old_account))} → {_code(_short(r.new_account))}</td>'
        f'<td class="text">{_h(r.at)}</td>'
        f'<td class="text">{_code(r.ledger)} entry {r.entry}</td>'
        f'<td class="text"><q>{_h(r.reason)}</q></td></tr>'
        for r in resets
    )
    return (
        '<section class="box resets" aria-labelledby="resets-heading">'
        f'<h2 id="resets-heading">Budget resets ({len(resets)})</h2>'
        "<p>A node operator opened a new budget account for a dataset: its lifetime ε starts "
        "again from 0 and the old account's spend no longer binds it. Each is a signed entry "
        "of the node's ledger, not a fault; whether the reason justifies it is for the "
        "auditor to judge.</p>"
        f'<div class="table-wrap"><table class="resets"><thead><tr>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div></section>"
    )


def _facts(pairs: Iterable[tuple[str, str]], *, grid: bool = False) -> str:
    """A definition list; values must already be HTML."""
    items = "".join(f"<dt>{_h(k)}</dt><dd>{v}</dd>" for k, v in pairs)
    return f'<dl class="facts{" grid" if grid else ""}">{items}</dl>'


def _code(value: str | None) -> str:
    return "–" if value is None else f"<code>{_h(value)}</code>"


def _pipeline(update: str | None) -> str:
    """The run's update kind, or its phases: "prototypes+head" starts with a release."""
    if not update:
        return "–"
    release, plus, trained = update.partition("+")
    if not plus:
        return update
    return f"{update}: round 1 the {release} release, then {trained} training"


def _rounds_table(country: CountryReport) -> str:
    if not country.rounds:
        return '<p class="muted">No record from this country in this run.</p>'
    head = "".join(
        f'<th scope="col" title="{_h(tip or name)}">{_h(name)}</th>' for name, tip in _ROUND_COLUMNS
    )
    head += '<th scope="col" class="text">Check</th>'
    body = []
    for r in country.rounds:
        check = "; ".join(r.problems) if r.problems else "ok"
        body.append(
            f'<tr id="entry-{r.entry}" class="{"bad" if r.problems else "ok"}">'
            f'<th scope="row">{r.round}</th><td>{r.entry}</td>'
            f"<td>{_eps(r.epsilon_round)}</td><td>{_eps(r.epsilon_recorded)}</td>"
            f'<td class="auditor">{_eps(r.epsilon_opacus)}</td>'
            f'<td class="auditor">{_eps(r.epsilon_dp_accounting)}</td>'
            f"<td>{_eps(r.epsilon_dataset)}</td><td>{_num(r.budget_epsilon)}</td>"
            f"<td>{_num(r.noise_multiplier)}</td><td>{r.sample_rate:.4g}</td>"
            f"<td>{r.steps}</td><td>{_num(r.max_grad_norm)}</td>"
            f"<td>{'yes' if r.averaged else 'no'}</td>"
            f'<td class="check">{_h(check)}</td></tr>'
        )
    return (
        '<div class="table-wrap"><table class="rounds"><caption>Shaded columns: the auditor\'s '
        "recomputation.</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def _refusals_html(country: CountryReport) -> str:
    if not country.refusals:
        return ""
    items = "".join(
        f'<tr id="entry-{r.entry}" class="{"bad" if r.problems else "ok"}">'
        + f'<th scope="row">{r.round}</th>'
        + f'<td>{r.entry}</td><td class="text"><q>{_h(r.reason)}</q>'
        + (f' <span class="where">({_h("; ".join(r.problems))})</span>' if r.problems else "")
        + "</td></tr>"
        for r in country.refusals
    )
    return (
        "<h4>Refusals</h4>"
        '<div class="table-wrap"><table class="refusals"><thead><tr><th scope="col">Round</th>'
        '<th scope="col">Entry</th><th scope="col" class="text">Reason, verbatim</th></tr>'
        f"</thead><tbody>{items}</tbody></table></div>"
    )


def _country_html(run: RunReport, country: CountryReport, ident: str) -> str:
    spent = f"ε {_eps(country.epsilon_recorded)}"
    if run.target_epsilon is not None:
        spent += f" of the job's target {run.target_epsilon:g}"
    lifetime = f"dataset ε {_eps(country.epsilon_dataset)}"
    if country.budget_epsilon is not None:
        lifetime += f" of its budget {country.budget_epsilon:g}"
    summary = (
        f"{spent}; {lifetime}; {_count(len(country.rounds), 'round')} recorded, "
        f"{len(country.refusals)} refused"
    )
    facts = _facts(
        [
            (
                "Policy",
                ", ".join(
                    f"{_h(p.name or '(unnamed)')} <code>{_h(_short(p.sha256))}</code>"
                    for p in country.policies
                )
                or "–",
            ),
            ("Dataset", ", ".join(_code(_short(d)) for d in country.datasets) or "–"),
            ("Signing key", ", ".join(_code(k) for k in country.keys) or "–"),
        ]
    )
    return (
        f'<section class="country" aria-labelledby="{ident}-heading">'
        f'<h3 id="{ident}-heading">{_h(country.country)}</h3>'
        f'<p class="summary">{_h(summary)}</p>{facts}'
        f"<figure>{_burndown(run, country, ident=ident)}"
        f"<figcaption>Cumulative ε of run {_h(run.run)} in {_h(country.country)} by round: "
        "as the node recorded it and as the auditor recomputed it, against the job's target "
        "and the dataset's lifetime budget.</figcaption></figure>"
        f"<h4>Rounds</h4>{_rounds_table(country)}{_refusals_html(country)}</section>"
    )


def _run_html(run: RunReport, number: int) -> str:
    ident = f"run{number}"
    rtol = "–" if run.dp_accounting_rtol is None else f"{run.dp_accounting_rtol:.0%}"
    facts = _facts(
        [
            ("Job", _h(run.job or "–")),
            ("Status", _h(_status(run))),
            ("Started", _h(run.started or "–")),
            ("Finished", _h(run.finished or "–")),
            ("Rounds planned", _h(_num(run.rounds_planned))),
            ("Target ε", _h(_num(run.target_epsilon))),
            ("δ", _h(_num(run.delta))),
            ("Accountant", _h(run.accountant or "–")),
            ("dp-accounting tolerance", _h(rtol)),
            ("Update", _h(_pipeline(run.update))),
            ("Countries", _h(", ".join(c.country for c in run.countries) or "–")),
        ],
        grid=True,
    )
    countries = "".join(
        _country_html(run, country, f"{ident}-c{i}") for i, country in enumerate(run.countries)
    )
    return (
        f'<section class="run" aria-labelledby="{ident}-heading">'
        f'<h2 id="{ident}-heading">Run {_h(run.run)}'
        f"{' · job ' + _h(run.job) if run.job else ''}</h2>{facts}{countries}</section>"
    )


def _html(report: Report) -> str:
    ledger = report.ledger
    ok = report.verified
    header = _facts(
        [
            ("Ledger", _code(ledger.path)),
            ("Entries", _h(ledger.entries)),
            ("Keeper key", _code(ledger.keeper_key_id)),
            ("Head", _code(_head(ledger))),
            ("Runs", _h(len(report.runs))),
        ]
    )
    runs = "".join(_run_html(run, i) for i, run in enumerate(report.runs))
    rows = frozenset(
        entry
        for run in report.runs
        for country in run.countries
        for entry in [*(r.entry for r in country.rounds), *(r.entry for r in country.refusals)]
    )
    if not report.runs:
        runs = '<p class="muted">The ledger records no run.</p>'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="{_h(report.generator)}">\n'
        f"<title>Privacy ledger audit: {_h(report.verdict)}</title>\n"
        f'<style>{_CSS}</style>\n</head>\n<body>\n<div class="page">\n'
        "<header><h1>Privacy ledger audit</h1>"
        '<p class="subtitle">Every epsilon below was recomputed by the auditor from the '
        "recorded mechanism; signatures and the hash chain were checked entry by entry.</p>"
        f'<p class="verdict {"ok" if ok else "bad"}" role="status">{_h(report.verdict)}</p>'
        f"{header}</header>\n"
        f"{_findings_html('Problems', 'problems', report.problems, rows)}"
        f"{_findings_html('Notes', 'notes', report.notes, rows)}"
        f"{_resets_html(report.resets)}\n"
        f"<main>{runs}</main>\n"
        "<footer><p>ε Opacus: Opacus' accountant re-run on each record's history; it must equal "
        f"the recorded ε (relative {SAME_LIBRARY_RTOL:g}). ε dp-accounting: Google's "
        "independent implementation on the same history; it must agree with Opacus within the "
        "run's tolerance. Budget lines: the job's target bounds the run's ε, the dataset budget "
        f"bounds its lifetime ε. Generated by {_h(report.generator)}.</p></footer>\n"
        "</div>\n</body>\n</html>\n"
    )


# --- Markdown -------------------------------------------------------------------------------

_MD_SPECIAL = str.maketrans({c: f"\\{c}" for c in "\\`*_[]|#"})


def _md(value: object) -> str:
    """Plain text safe in Markdown and in a table cell: no markup, no raw HTML, one line."""
    text = " ".join(str(value).split())
    return escape(text, quote=False).translate(_MD_SPECIAL)


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]], *, align: str) -> list[str]:
    """A pipe table; ``align`` has an ``l`` or ``r`` per column."""
    rule = [":---" if a == "l" else "---:" for a in align]
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(rule) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _md_findings(title: str, findings: Sequence[Finding]) -> list[str]:
    if not findings:
        return []
    return [
        f"## {title} ({len(findings)})",
        "",
        *(f"{i}. **{_where(f.entry)}**: {_md(f.what)}" for i, f in enumerate(findings, 1)),
        "",
    ]


def _md_resets(resets: Sequence[ResetRow]) -> list[str]:
    if not resets:
        return []
    return [
        f"## Budget resets ({len(resets)})",
        "",
        "A node operator opened a new budget account for a dataset: its lifetime ε starts again "
        "from 0. Not a fault; the auditor judges the reason.",
        "",
        *_md_table(
            ["Country", "Dataset", "Old account", "New account", "At", "Ledger", "Entry", "Reason"],
            (
                [
                    _md(r.country),
                    _md(r.dataset),
                    f"`{_short(r.old_account)}`",
                    f"`{_short(r.new_account)}`",
                    _md(r.at),
                    _md(r.ledger),
                    str(r.entry),
                    _md(r.reason),
                ]
                for r in resets
            ),
            align="llllllrl",
        ),
        "",
    ]


def _md_country(run: RunReport, country: CountryReport) -> list[str]:
    lines = [
        f"### {_md(country.country)}",
        "",
        f"- Run ε: {_eps(country.epsilon_recorded)} (target {_num(run.target_epsilon)})",
        f"- Dataset lifetime ε: {_eps(country.epsilon_dataset)} "
        f"(budget {_num(country.budget_epsilon)})",
        "- Policy: "
        + (
            ", ".join(
                f"{_md(p.name or '(unnamed)')} `{_short(p.sha256)}`" for p in country.policies
            )
            or "–"
        ),
        "- Dataset: " + (", ".join(f"`{_short(d)}`" for d in country.datasets) or "–"),
        "- Signing key: " + (", ".join(f"`{k}`" for k in country.keys) or "–"),
        "",
    ]
    if country.rounds:
        lines += _md_table(
            [*(name for name, _ in _ROUND_COLUMNS), "Check"],
            (
                [
                    str(r.round),
                    str(r.entry),
                    _eps(r.epsilon_round),
                    _eps(r.epsilon_recorded),
                    _eps(r.epsilon_opacus),
                    _eps(r.epsilon_dp_accounting),
                    _eps(r.epsilon_dataset),
                    _num(r.budget_epsilon),
                    _num(r.noise_multiplier),
                    f"{r.sample_rate:.4g}",
                    str(r.steps),
                    _num(r.max_grad_norm),
                    "yes" if r.averaged else "no",
                    _md("; ".join(r.problems)) if r.problems else "ok",
                ]
                for r in country.rounds
            ),
            align="r" * len(_ROUND_COLUMNS) + "l",
        )
    else:
        lines.append("No record from this country in this run.")
    lines.append("")
    if country.refusals:
        lines += ["#### Refusals", ""]
        lines += _md_table(
            ["Round", "Entry", "Reason, verbatim", "Check"],
            (
                [
                    str(r.round),
                    str(r.entry),
                    _md(r.reason),
                    _md("; ".join(r.problems)) if r.problems else "ok",
                ]
                for r in country.refusals
            ),
            align="rrll",
        )
        lines.append("")
    lines += ["#### Burn-down", ""]
    lines += [
        f"- round {r.round}: run ε recorded {_eps(r.epsilon_recorded)}, Opacus "
        f"{_eps(r.epsilon_opacus)}, dp-accounting {_eps(r.epsilon_dp_accounting)}; dataset ε "
        f"{_eps(r.epsilon_dataset)} of budget {_num(r.budget_epsilon)}"
        for r in country.rounds
    ]
    lines += [f"- round {r.round}: refused" for r in country.refusals]
    lines.append("")
    return lines


def _markdown(report: Report) -> str:
    ledger = report.ledger
    lines = [
        f"# Privacy ledger audit: {report.verdict}",
        "",
        f"- Ledger: {_md(ledger.path)}",
        f"- Entries: {ledger.entries}",
        f"- Keeper key: `{ledger.keeper_key_id or '–'}`",
        f"- Head: `{_head(ledger) or '–'}`",
        f"- Verdict: **{report.verdict}**",
        f"- Generated by: {_md(report.generator)}",
        "",
        *_md_findings("Problems", report.problems),
        *_md_findings("Notes", report.notes),
        *_md_resets(report.resets),
    ]
    for run in report.runs:
        rtol = "–" if run.dp_accounting_rtol is None else f"{run.dp_accounting_rtol:.0%}"
        lines += [
            f"## Run {_md(run.run)}" + (f" · job {_md(run.job)}" if run.job else ""),
            "",
            *_md_table(
                [
                    "Status",
                    "Target ε",
                    "δ",
                    "Accountant",
                    "dp-accounting tolerance",
                    "Rounds",
                    "Countries",
                ],
                [
                    [
                        _md(_status(run)),
                        _num(run.target_epsilon),
                        _num(run.delta),
                        _md(run.accountant or "–"),
                        rtol,
                        _num(run.rounds_planned),
                        _md(", ".join(c.country for c in run.countries) or "–"),
                    ]
                ],
                align="lrrllrl",
            ),
            "",
        ]
        for country in run.countries:
            lines += _md_country(run, country)
    if not report.runs:
        lines += ["The ledger records no run.", ""]
    return "\n".join(lines)
