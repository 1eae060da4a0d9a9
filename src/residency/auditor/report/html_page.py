"""The report as one self-contained HTML page with a burn-down chart per country.

The page is rendered from ``templates/report.html.j2`` (autoescaped) with plain data built
here, and draws each country's chart with plotly.js from :mod:`residency.common.charts`, the
dashboard's charts. It stays one file that an auditor can archive, mail and open offline:
plotly.js is inlined from the installed ``plotly`` package (about 4.8 MB, hence a page of about
5 MB), figures are JSON in the page, nothing is fetched, and its Content-Security-Policy lets
only the page's own two scripts run. Rendering the same ledger twice gives the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from functools import cache

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from plotly.offline import get_plotlyjs_version

from residency.auditor.burndown import Burndown, RoundEpsilons, burndown_figure
from residency.auditor.report.display import (
    ROUND_COLUMNS,
    count,
    eps,
    head,
    num,
    pipeline,
    sample,
    short,
    status,
    where,
)
from residency.auditor.report.model import CountryReport, Report, RunReport
from residency.auditor.verify import SAME_LIBRARY_RTOL
from residency.common import charts
from residency.common.charts import plotly_js


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


def render_html(report: Report) -> str:
    """The page: ``report.html.j2`` rendered with the report's numbers and one chart a country."""
    return _environment().get_template("report.html.j2").render(page=_page(report))


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
        eps=eps,
        num=num,
        short=short,
        where=where,
        head=head,
        count=count,
        status=status,
        pipeline=pipeline,
        sample=sample,
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
        f"round {r.round}: recorded {eps(r.epsilon_recorded)}, "
        f"Opacus {eps(r.epsilon_opacus)}, "
        f"dp-accounting {eps(r.epsilon_dp_accounting)}, dataset {eps(r.epsilon_dataset)}"
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
