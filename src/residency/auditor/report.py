"""The auditor's report on a verified ledger: HTML with burn-down charts, JSON or Markdown.

Every number comes from a ``Verification``: each node's recorded epsilon stands beside the
auditor's own recomputations (Opacus and Google's dp-accounting), and every problem the verifier
found is shown with its entry number, so the report says what was checked, not only what was
claimed; every budget reset a node operator made is listed with the operator's reason.

The HTML page is rendered from ``templates/report.html.j2`` (autoescaped) with plain data built
here, and draws each country's chart with plotly.js from :mod:`residency.common.charts`, the
dashboard's charts. It stays one self-contained file that an auditor can archive, mail and open
offline: plotly.js is inlined from the installed ``plotly`` package (about 4.8 MB, hence a page
of about 5 MB), figures are JSON in the page, nothing is fetched, and its Content-Security-Policy
lets only the page's own two scripts run. Rendering the same ledger twice gives the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from html import escape
from typing import Literal, TypeVar

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from plotly.offline import get_plotlyjs_version
from pydantic import BaseModel, ConfigDict

from residency.auditor.burndown import Burndown, RoundEpsilons, burndown_figure
from residency.auditor.crosscheck import AGREEMENT
from residency.auditor.report_format import ReportFormat
from residency.auditor.verify import (
    SAME_LIBRARY_RTOL,
    Problem,
    Refusal,
    Reset,
    RoundSpend,
    Verification,
)
from residency.common import charts
from residency.common.charts import plotly_js
from residency.common.config.kinds import AccountantKind
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
    epsilon_dataset: float | None  # from a node's ledger (or a record before schema 5)
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
    privacy_unit: str = "record"  # what its ε is per, from its latest signed record
    records_per_person: int | None = None

    @property
    def per(self) -> str:
        """``per record``, or ``per person (at most 10 records each)``."""
        cap = self.records_per_person
        return f"per {self.privacy_unit}" + (
            "" if cap is None else f" (at most {cap} records each)"
        )


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
    dp_accounting_agreement: str | None
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
    resets: list[Reset]
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
        resets=list(verification.resets),
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


def _head(ledger: LedgerInfo) -> str | None:
    """``ENTRY:HASH``, as ``audit verify --since`` takes it."""
    return None if ledger.head is None else f"{ledger.head_entry}:{ledger.head}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _status(run: RunReport) -> str:
    return run.status or "not finished"


def _sample(value: float) -> str:
    return f"{value:.4g}"


def _pipeline(update: str | None) -> str:
    """The run's update kind, or its phases: "prototypes+head" starts with a release."""
    if not update:
        return "–"
    release, plus, trained = update.partition("+")
    if not plus:
        return update
    return f"{update}: round 1 the {release} release, then {trained} training"


# --- HTML -----------------------------------------------------------------------------------

ROUND_COLUMNS = (
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
"""The rounds table's columns: heading and tooltip (the HTML's and the Markdown's)."""


@dataclass(frozen=True)
class ChartView:
    """One country's burn-down chart on the page: its figure and its text alternative."""

    ident: str
    """Prefix of the chart's element ids, unique in the page: the same ledger, the same ids."""
    title: str
    points: list[str]
    """One plain sentence per plotted round, for screen readers."""
    refused: tuple[int, ...]
    figure: charts.Figure


@dataclass(frozen=True)
class CountryView:
    """A country's section of a run."""

    ident: str
    country: CountryReport
    chart: ChartView


@dataclass(frozen=True)
class RunView:
    """A run's section of the page."""

    ident: str
    run: RunReport
    countries: list[CountryView]


@dataclass(frozen=True)
class PageView:
    """Everything ``report.html.j2`` renders; plain values apart from the two trusted scripts."""

    report: Report
    runs: list[RunView]
    linked: frozenset[int]
    """Entry numbers with a row in a table below, which a finding links to."""
    round_columns: tuple[tuple[str, str], ...]
    same_library_rtol: float
    plotly_version: str
    plotly_js: Markup
    draw_js: Markup
    csp: str


def _csp(*scripts: str) -> str:
    """Nothing from elsewhere; scripts only the report's own, by hash; styles inline (plotly's)."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in scripts
    )
    return f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; img-src data:"


@cache
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("residency.auditor", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        eps=_eps,
        num=_num,
        short=_short,
        where=_where,
        head=_head,
        count=_count,
        status=_status,
        pipeline=_pipeline,
        sample=_sample,
    )
    return env


@cache
def _scripts() -> tuple[Markup, Markup]:
    """plotly.js and the report's drawing script, checked safe to inline in ``<script>``."""
    scripts = (plotly_js(), _environment().get_template("draw.js.j2").render())
    for script in scripts:
        lowered = script.lower()
        if "</script" in lowered or "<!--" in lowered:
            raise RuntimeError("a script would end its <script> element early; not inlined")
    return Markup(scripts[0]), Markup(scripts[1])


def _chart(run: RunReport, country: CountryReport, *, ident: str) -> ChartView:
    """The country's chart, its text alternative written with the tables' number format."""
    rows = country.rounds
    refused = tuple(sorted({r.round for r in country.refusals if r.round >= 1}))
    title = f"{country.country}, run {run.run}: cumulative epsilon {country.per} by round"
    if run.target_epsilon is not None:
        title += f" against the job target {run.target_epsilon:g}"
    if country.budget_epsilon is not None:
        title += f" and the dataset budget {country.budget_epsilon:g}"
    points = [
        f"round {r.round}: recorded {_eps(r.epsilon_recorded)}, "
        f"Opacus {_eps(r.epsilon_opacus)}, "
        f"dp-accounting {_eps(r.epsilon_dp_accounting)}, dataset {_eps(r.epsilon_dataset)}"
        + (" (entry with a problem)" if r.problems else "")
        for r in rows
    ]
    chart = Burndown(
        country=country.country,
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
        target=run.target_epsilon,
        budget=country.budget_epsilon,
    )
    return ChartView(
        ident=ident, title=title, points=points, refused=refused, figure=burndown_figure(chart)
    )


def _page(report: Report) -> PageView:
    runs = [
        RunView(
            ident=f"run{n}",
            run=run,
            countries=[
                CountryView(
                    ident=f"run{n}-c{i}",
                    country=country,
                    chart=_chart(run, country, ident=f"run{n}-c{i}"),
                )
                for i, country in enumerate(run.countries)
            ],
        )
        for n, run in enumerate(report.runs)
    ]
    linked = frozenset(
        entry
        for run in report.runs
        for country in run.countries
        for entry in [*(r.entry for r in country.rounds), *(r.entry for r in country.refusals)]
    )
    plotly, draw = _scripts()
    return PageView(
        report=report,
        runs=runs,
        linked=linked,
        round_columns=ROUND_COLUMNS,
        same_library_rtol=SAME_LIBRARY_RTOL,
        plotly_version=str(get_plotlyjs_version()),
        plotly_js=plotly,
        draw_js=draw,
        csp=_csp(plotly, draw),
    )


def _html(report: Report) -> str:
    """The page: ``report.html.j2`` rendered with the report's numbers and one chart a country."""
    return _environment().get_template("report.html.j2").render(page=_page(report))


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


def _md_resets(resets: Sequence[Reset]) -> list[str]:
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
                    _md(str(r.ledger)),
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
        f"- Run ε {country.per}: {_eps(country.epsilon_recorded)} "
        f"(target {_num(run.target_epsilon)})",
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
            [*(name for name, _ in ROUND_COLUMNS), "Check"],
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
            align="r" * len(ROUND_COLUMNS) + "l",
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
        lines += [
            f"## Run {_md(run.run)}" + (f" · job {_md(run.job)}" if run.job else ""),
            "",
            *_md_table(
                [
                    "Status",
                    "Target ε",
                    "δ",
                    "Accountant",
                    "dp-accounting agreement",
                    "Rounds",
                    "Countries",
                ],
                [
                    [
                        _md(_status(run)),
                        _num(run.target_epsilon),
                        _num(run.delta),
                        _md(run.accountant or "–"),
                        _md(run.dp_accounting_agreement or "–"),
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
