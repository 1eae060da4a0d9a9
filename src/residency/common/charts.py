"""Charts shared by the coordinator's dashboard and the auditor's report, as plotly figures.

Both pages draw with plotly.js, whose bundle ships inside the ``plotly`` Python package
(:func:`plotly_js`): nothing is fetched from a CDN, so a page works on a host with no internet
and an auditor's report stays one file. Figures are built here in Python, validated by
plotly's figure classes, and handed to the page as JSON, so the dashboard's live updates and
the report's static charts draw the same thing from the same numbers.

Hostile text stays out of figures: plotly renders a subset of HTML in titles and labels, so
only country codes (checked ISO 3166-1), numbers and this module's own words go in; reasons
and names a node wrote are shown by the pages' autoescaped templates instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
BLUE = "#0072b2"
ORANGE = "#e69f00"
GREEN = "#009e73"
PURPLE = "#6a3d9a"
RED = "#b2182b"
PINK = "#cc79a7"
GREY = "#333333"
_GRID = "#e5e5e5"
OVERVIEW_LEGEND = 12
"""Countries up to which the overview keeps a legend; beyond it, hover names each line."""

Figure = dict[str, Any]
"""A plotly figure as JSON: ``{"data": [...], "layout": {...}}``."""


@cache
def plotly_js() -> str:
    """The plotly.js bundle from the installed ``plotly`` package (no network)."""
    return str(get_plotlyjs())


@dataclass(frozen=True)
class Series:
    """One line: a value per round; ``None`` (or a non-finite value) leaves a gap."""

    name: str
    rounds: Sequence[int]
    values: Sequence[float | None]
    colour: str
    dash: str = "solid"
    marker: str = "circle"
    width: float = 2.0


@dataclass(frozen=True)
class Limit:
    """A horizontal line across the chart: a target or a budget."""

    name: str
    value: float
    colour: str
    dash: str = "dash"


@dataclass(frozen=True)
class Events:
    """Rounds where something happened to a country, drawn as markers on the round axis."""

    name: str
    rounds: Sequence[int]
    colour: str
    symbol: str


@dataclass(frozen=True)
class Rings:
    """Points ringed to draw the eye, e.g. rounds whose ledger entry has a problem.

    Each ring sits at ``(round, value)``; a ``None`` or non-finite value has no ring.
    """

    name: str
    rounds: Sequence[int]
    values: Sequence[float | None]
    colour: str


def _finite(values: Sequence[float | None]) -> list[float | None]:
    return [v if v is not None and math.isfinite(v) else None for v in values]


def _layout(title: str, y_title: str, rounds: int, *, percent: bool) -> go.Layout:
    return go.Layout(
        title={"text": title, "x": 0.0, "xanchor": "left"},
        xaxis={
            "title": {"text": "round"},
            "dtick": 1,
            "range": [0.5, max(rounds, 1) + 0.5],
            "gridcolor": _GRID,
            "zeroline": False,
        },
        yaxis={
            "title": {"text": y_title},
            "rangemode": "tozero",
            "gridcolor": _GRID,
            "zerolinecolor": "#999",
            **({"tickformat": ".0%", "range": [0, 1.02]} if percent else {}),
        },
        margin={"l": 60, "r": 20, "t": 48, "b": 48},
        height=320,
        legend={"orientation": "h", "y": -0.25},
        # Styled here rather than by a named template: a template is copied into every
        # figure's JSON (6 KB) and costs 30 ms to build; the page redraws figures live.
        template="none",
        font={"family": "DejaVu Sans, sans-serif", "size": 12, "color": "#222"},
        plot_bgcolor="white",
        paper_bgcolor="white",
        hovermode="x unified",
    )


def _to_json(figure: go.Figure) -> Figure:
    result: Figure = json.loads(figure.to_json())
    return result


def line_chart(
    title: str,
    y_title: str,
    series: Sequence[Series],
    *,
    rounds: int,
    percent: bool = False,
    limits: Sequence[Limit] = (),
    events: Sequence[Events] = (),
    rings: Sequence[Rings] = (),
) -> Figure:
    """Values per round, with horizontal limits, event markers and rings; ``rounds``: the axis."""
    figure = go.Figure(layout=_layout(title, y_title, rounds, percent=percent))
    for line in series:
        figure.add_trace(
            go.Scatter(
                name=line.name,
                x=list(line.rounds),
                y=_finite(line.values),
                mode="lines+markers",
                line={"color": line.colour, "dash": line.dash, "width": line.width},
                marker={"symbol": line.marker, "size": 7},
                connectgaps=False,
            )
        )
    for limit in limits:
        figure.add_trace(_limit_trace(limit, rounds))
    for event in events:
        figure.add_trace(
            go.Scatter(
                name=event.name,
                x=list(event.rounds),
                y=[0.0] * len(event.rounds),
                mode="markers",
                marker={"color": event.colour, "symbol": event.symbol, "size": 11},
                cliponaxis=False,  # markers on the round axis, drawn whole
                hoverinfo="name+x",
            )
        )
    for ring in rings:
        ringed = [
            (r, v) for r, v in zip(ring.rounds, _finite(ring.values), strict=True) if v is not None
        ]
        figure.add_trace(
            go.Scatter(
                name=ring.name,
                x=[r for r, _ in ringed],
                y=[v for _, v in ringed],
                mode="markers",
                marker={
                    "color": ring.colour,
                    "symbol": "circle-open",
                    "size": 18,
                    "line": {"width": 2.5},
                },
                hoverinfo="name+x",
            )
        )
    return _to_json(figure)


def burndown_chart(
    country: str,
    series: Sequence[Series],
    *,
    rounds: int,
    target: float | None,
    budget: float | None,
    refused: Sequence[int] = (),
    dropped: Sequence[int] = (),
    rings: Sequence[Rings] = (),
) -> Figure:
    """A country's ε per round against the job's target and its dataset's lifetime budget."""
    limits = []
    if target is not None and math.isfinite(target):
        limits.append(Limit("job target ε", target, GREY))
    if budget is not None and math.isfinite(budget):
        limits.append(Limit("lifetime budget ε", budget, RED, dash="dashdot"))
    events = []
    if refused:
        events.append(Events("refused", refused, PINK, "x"))
    if dropped:
        events.append(Events("dropped", dropped, ORANGE, "triangle-down"))
    return line_chart(
        f"{country}: ε spent",
        "ε",
        series,
        rounds=rounds,
        limits=limits,
        events=events,
        rings=rings,
    )


def epsilon_overview_chart(
    countries: Sequence[Series], *, rounds: int, target: float | None
) -> Figure:
    """Every country's ε per round on one chart, against the job's target.

    At 20 to 50 countries one burn-down each is a wall of near-identical charts; here every
    country is a thin line, named on hover, and the dashboard thickens the one under the
    pointer (``dashboard.js``). Per-country detail stays in each country's burn-down.
    """
    figure = go.Figure(layout=_layout("ε spent, every country", "ε", rounds, percent=False))
    figure.update_layout(hovermode="closest", showlegend=len(countries) <= OVERVIEW_LEGEND)
    for line in countries:
        figure.add_trace(
            go.Scatter(
                name=line.name,
                x=list(line.rounds),
                y=_finite(line.values),
                mode="lines+markers",
                line={"color": line.colour, "width": line.width},
                marker={"size": 5},
                opacity=0.75,
                hovertemplate=f"{line.name}: ε %{{y:.3f}} after round %{{x}}<extra></extra>",
                connectgaps=False,
            )
        )
    if target is not None and math.isfinite(target):
        figure.add_trace(_limit_trace(Limit("job target ε", target, GREY), rounds))
    return _to_json(figure)


def _limit_trace(limit: Limit, rounds: int) -> go.Scatter:
    """A horizontal line across every round of the axis."""
    return go.Scatter(
        name=limit.name,
        x=[0.5, max(rounds, 1) + 0.5],
        y=[limit.value, limit.value],
        mode="lines",
        line={"color": limit.colour, "dash": limit.dash, "width": 1.5},
        hoverinfo="name+y",
    )
