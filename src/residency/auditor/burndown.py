"""The data of the audit report's per-country epsilon burn-down chart, as a plotly figure.

The chart itself is drawn by :func:`residency.common.charts.burndown_chart`, the same function
the coordinator's dashboard uses; this module turns a country's recorded and recomputed
epsilons into its series. It takes plain values, not the report's models, so the page layout
and the chart can change independently; the same input gives the same figure.

Text a node wrote never reaches the figure (plotly renders some HTML in titles and labels): the
country code is named in the title only when it is an assigned ISO 3166-1 code, the series
names are this module's own words, and everything else is numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from residency.common import charts
from residency.common.country import iso_country

_CODE = re.compile(r"[A-Z]{2}")
UNLISTED = "Country"
"""The chart title's name for a country whose code is not an ISO 3166-1 code (the page's
heading above the chart shows the code as the ledger has it, escaped)."""


@dataclass(frozen=True)
class RoundEpsilons:
    """One recorded round's cumulative epsilons; an infinite one is left out of its line."""

    round: int
    recorded: float
    opacus: float
    dp_accounting: float
    dataset: float | None
    """The dataset's lifetime epsilon, where a node's ledger states it (else no point)."""
    flagged: bool
    """The verifier found a problem with this round's entry; its recorded point is ringed."""


@dataclass(frozen=True)
class Burndown:
    """What one chart shows: a country's rounds in one run against its two limits."""

    country: str
    rounds: tuple[RoundEpsilons, ...]
    refused: tuple[int, ...]
    """Rounds the node declined, ascending, each marked on the round axis."""
    rounds_planned: int | None
    target: float | None
    """The job's target for the run's epsilon."""
    budget: float | None
    """The dataset's lifetime epsilon budget."""


HEIGHT_PX = 400
"""Taller than the dashboard's charts: the report's legend has up to nine entries."""

RECORDED = "run ε, as recorded"
OPACUS = "run ε, Opacus (auditor)"
DP_ACCOUNTING = "run ε, dp-accounting (auditor)"
DATASET = "dataset ε, lifetime"
FLAGGED = "entry with a problem"
SERIES = (RECORDED, OPACUS, DP_ACCOUNTING, DATASET)
"""The chart's lines, in trace order: the node's claim first, drawn under the auditor's
recomputations so that agreement shows as a dashed line on a solid one."""


def chart_label(country: str) -> str:
    """``country`` if it is an ISO 3166-1 alpha-2 code, safe in a plotly title; else a word."""
    if not _CODE.fullmatch(country):
        return UNLISTED
    try:
        return iso_country(country)
    except ValueError:
        return UNLISTED


def last_round(chart: Burndown) -> int:
    """The round axis's extent: the planned rounds, or the last round seen if later."""
    return max([chart.rounds_planned or 0, *(r.round for r in chart.rounds), *chart.refused, 1])


def burndown_figure(chart: Burndown) -> charts.Figure:
    """The chart as plotly figure JSON: four lines, two limits, refusals and ringed problems.

    The lines differ by dash and marker as well as colour, so they stay apart in greyscale.
    """
    rounds = [r.round for r in chart.rounds]
    series = [
        charts.Series(RECORDED, rounds, [r.recorded for r in chart.rounds], charts.BLUE, width=3.0),
        charts.Series(
            OPACUS,
            rounds,
            [r.opacus for r in chart.rounds],
            charts.ORANGE,
            dash="dash",
            marker="square-open",
        ),
        charts.Series(
            DP_ACCOUNTING,
            rounds,
            [r.dp_accounting for r in chart.rounds],
            charts.GREEN,
            dash="dot",
            marker="diamond-open",
            width=1.75,
        ),
        charts.Series(
            DATASET,
            [r.round for r in chart.rounds if r.dataset is not None],
            [r.dataset for r in chart.rounds if r.dataset is not None],
            charts.PURPLE,
            dash="longdash",
            marker="triangle-up-open",
            width=1.5,
        ),
    ]
    flagged = [r for r in chart.rounds if r.flagged]
    rings = (
        [
            charts.Rings(
                FLAGGED, [r.round for r in flagged], [r.recorded for r in flagged], charts.RED
            )
        ]
        if flagged
        else []
    )
    figure = charts.burndown_chart(
        chart_label(chart.country),
        series,
        rounds=last_round(chart),
        target=chart.target,
        budget=chart.budget,
        refused=chart.refused,
        rings=rings,
    )
    figure["layout"]["height"] = HEIGHT_PX
    return figure
