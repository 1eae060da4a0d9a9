"""The per-country epsilon burn-down chart of the audit report, as inline SVG.

Kept apart from the report so the page layout and the plot geometry can change independently.
The chart takes plain values, not the report's models, and writes no script, font or external
URL, so the page that embeds it stays one self-contained file; the same input gives the same
bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Literal

_Scale = Callable[[float], float]
_Marker = Literal["circle", "square", "cross", "ring", "none"]


@dataclass(frozen=True)
class RoundEpsilons:
    """One recorded round's cumulative epsilons; an infinite one is left out of its line."""

    round: int
    recorded: float
    opacus: float
    dp_accounting: float
    dataset: float
    flagged: bool
    """The verifier found a problem with this round's entry; its recorded point is ringed."""


@dataclass(frozen=True)
class Burndown:
    """What one chart shows: a country's rounds in one run against its two limits.

    ``title`` and ``description`` are the chart's text alternative; the caller writes them so
    their numbers read as in its tables.
    """

    country: str
    title: str
    description: str
    rounds: tuple[RoundEpsilons, ...]
    refused: tuple[int, ...]
    """Rounds the node declined, ascending, each drawn as a marked vertical line."""
    rounds_planned: int | None
    target: float | None
    """The job's target for the run's epsilon."""
    budget: float | None
    """The dataset's lifetime epsilon budget."""


@dataclass(frozen=True)
class _Series:
    css: str
    label: str
    colour: str
    dash: str | None
    width: float
    marker: _Marker


_SERIES = (
    _Series("dataset", "dataset ε, lifetime", "#6a3d9a", "10 4", 1.5, "none"),
    _Series("recorded", "run ε, as recorded", "#0072b2", None, 2.75, "circle"),
    _Series("opacus", "run ε, Opacus (auditor)", "#e69f00", "6 4", 2.0, "square"),
    _Series("dp-accounting", "run ε, dp-accounting (auditor)", "#009e73", "1.5 3.5", 1.75, "none"),
)
_TARGET = "#333333"
_BUDGET = "#b2182b"
_REFUSED = "#cc79a7"
_PROBLEM = "#d7191c"
_W, _H = 900, 340
_LEFT, _RIGHT, _TOP, _BOTTOM = 60, 250, 24, 52


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / ticks
    power = 10.0 ** math.floor(math.log10(raw))
    for mult in (1.0, 2.0, 2.5, 5.0):
        if raw <= mult * power:
            return mult * power
    return 10 * power


def _value(row: RoundEpsilons, series: str) -> float:
    return {
        "dataset": row.dataset,
        "recorded": row.recorded,
        "opacus": row.opacus,
        "dp-accounting": row.dp_accounting,
    }[series]


def _f(value: float) -> str:
    return f"{value:.1f}"


def render_burndown(chart: Burndown, *, ident: str) -> str:
    """The chart as an ``<svg>`` element for an HTML page.

    ``ident`` prefixes the element ids (it must be unique in the page and safe in an id).
    """
    rows = chart.rounds
    refused = chart.refused
    last_round = max([chart.rounds_planned or 0, *(r.round for r in rows), *refused, 1])
    target = chart.target
    budget = chart.budget
    values = [v for row in rows for s in _SERIES if math.isfinite(v := _value(row, s.css))]
    top = max([*values, target or 0.0, budget or 0.0, 0.0])
    step = _nice_step(top * 1.08 if top > 0 else 1.0)
    y_max = step * math.ceil((top * 1.04 if top > 0 else 1.0) / step)
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x(round_: float) -> float:
        return _LEFT + (round_ - 0.5) / last_round * plot_w

    def y(eps: float) -> float:
        return _TOP + plot_h - min(eps, y_max) / y_max * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="burndown" viewBox="0 0 {_W} {_H}" '
        f'role="img" aria-labelledby="{ident}-title {ident}-desc" '
        f'data-country="{escape(chart.country)}">',
        f'<title id="{ident}-title">{escape(chart.title)}</title>',
        f'<desc id="{ident}-desc">{escape(chart.description)}.</desc>',
        f'<rect class="plot-area" x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" '
        'fill="#ffffff" stroke="none"/>',
    ]
    ticks = [i * step for i in range(round(y_max / step) + 1)]
    out.append('<g class="y-axis" aria-hidden="true">')
    for tick in ticks:
        ty = _f(y(tick))
        out.append(
            f'<line class="grid" x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{ty}" y2="{ty}" '
            'stroke="#d9d9d9" stroke-width="1"/>'
        )
        out.append(
            f'<text class="tick-label" x="{_LEFT - 8}" y="{ty}" text-anchor="end" '
            f'dominant-baseline="middle">{tick:g}</text>'
        )
    out.append(
        f'<text class="axis-label" transform="translate(16 {_f(_TOP + plot_h / 2)}) rotate(-90)" '
        'text-anchor="middle">Cumulative ε</text>'
    )
    out.append("</g>")
    every = max(1, math.ceil(last_round / 12))
    out.append('<g class="x-axis" aria-hidden="true">')
    base = _TOP + plot_h
    for tick in range(1, last_round + 1, every):
        tx = _f(x(tick))
        out.append(
            f'<line x1="{tx}" x2="{tx}" y1="{base}" y2="{base + 5}" stroke="#333333" '
            'stroke-width="1"/>'
        )
        out.append(
            f'<text class="tick-label" x="{tx}" y="{base + 19}" text-anchor="middle">{tick}</text>'
        )
    out.append(
        f'<text class="axis-label" x="{_f(_LEFT + plot_w / 2)}" y="{_H - 10}" '
        'text-anchor="middle">Round</text>'
    )
    out.append("</g>")
    out.append(
        f'<path class="axes" d="M{_LEFT} {_TOP}V{base}H{_LEFT + plot_w}" fill="none" '
        'stroke="#333333" stroke-width="1.25"/>'
    )
    for r in refused:
        rx = _f(x(r))
        out.append(
            f'<g class="refused" data-round="{r}"><title>round {r} refused</title>'
            f'<line x1="{rx}" x2="{rx}" y1="{_TOP}" y2="{base}" stroke="{_REFUSED}" '
            'stroke-width="2" stroke-dasharray="3 3"/>'
            f'<path d="M{_f(x(r) - 6)} {base - 18}l12 12m0 -12l-12 12" stroke="{_REFUSED}" '
            'stroke-width="2.5" fill="none"/>'
            f'<text class="refused-label" x="{_f(x(r) + 9)}" y="{base - 12}" '
            'dominant-baseline="middle" fill="#7a2e5c">refused</text></g>'
        )
    if target is not None:
        ty = _f(y(target))
        out.append(
            f'<g class="target"><line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{ty}" y2="{ty}" '
            f'stroke="{_TARGET}" stroke-width="1.5" stroke-dasharray="8 4"/>'
            f'<text class="line-label" x="{_LEFT + 6}" y="{_f(y(target) - 5)}" '
            f'fill="{_TARGET}">job target {target:g}</text></g>'
        )
    if budget is not None:
        by = _f(y(budget))
        out.append(
            f'<g class="budget"><line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{by}" y2="{by}" '
            f'stroke="{_BUDGET}" stroke-width="2.25" stroke-dasharray="12 3 2 3"/>'
            f'<text class="line-label" x="{_LEFT + plot_w - 6}" y="{_f(y(budget) - 5)}" '
            f'text-anchor="end" fill="{_BUDGET}">dataset budget {budget:g}</text></g>'
        )
    for series in _SERIES:
        out.append(_series_svg(series, rows, x, y, chart.country))
    out.append(_legend(refused=bool(refused), flagged=any(r.flagged for r in rows)))
    out.append("</svg>")
    return "\n".join(out)


def _series_svg(
    series: _Series, rows: Sequence[RoundEpsilons], x: _Scale, y: _Scale, country: str
) -> str:
    points = [
        (x(r.round), y(v), r.flagged) for r in rows if math.isfinite(v := _value(r, series.css))
    ]
    dash = f' stroke-dasharray="{series.dash}"' if series.dash else ""
    out = [
        f'<g class="series {series.css}" data-country="{escape(country)}">',
        f'<polyline class="series {series.css}" data-country="{escape(country)}" '
        f'points="{" ".join(f"{_f(px)},{_f(py)}" for px, py, _ in points)}" fill="none" '
        f'stroke="{series.colour}" stroke-width="{series.width}"{dash} '
        'stroke-linejoin="round" stroke-linecap="round"/>',
    ]
    for px, py, flagged in points:
        if series.marker == "circle":
            out.append(
                f'<circle cx="{_f(px)}" cy="{_f(py)}" r="4" fill="{series.colour}" '
                'stroke="#ffffff" stroke-width="1"/>'
            )
        elif series.marker == "square":
            out.append(
                f'<rect x="{_f(px - 3.5)}" y="{_f(py - 3.5)}" width="7" height="7" fill="none" '
                f'stroke="{series.colour}" stroke-width="1.75"/>'
            )
        if flagged and series.css == "recorded":
            out.append(
                f'<circle class="flagged" cx="{_f(px)}" cy="{_f(py)}" r="9" fill="none" '
                f'stroke="{_PROBLEM}" stroke-width="2"/>'
            )
    out.append("</g>")
    return "\n".join(out)


def _legend(*, refused: bool, flagged: bool) -> str:
    x0, y0, gap = _W - _RIGHT + 18, _TOP + 8, 22
    items: list[tuple[str, str, str | None, float, _Marker]] = [
        # drawn bottom-up, listed by importance: the node's claim first, the dataset's last
        (s.label, s.colour, s.dash, s.width, s.marker)
        for s in (*_SERIES[1:], _SERIES[0])
    ]
    items += [
        ("job target", _TARGET, "8 4", 1.5, "none"),
        ("dataset budget", _BUDGET, "12 3 2 3", 2.25, "none"),
    ]
    if refused:
        items.append(("refused round", _REFUSED, "3 3", 2.0, "cross"))
    if flagged:
        items.append(("entry with a problem", _PROBLEM, None, 0.0, "ring"))
    out = ['<g class="legend" aria-hidden="true">']
    for i, (label, colour, dash, width, marker) in enumerate(items):
        ly = y0 + i * gap
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        if width:
            out.append(
                f'<line x1="{x0}" x2="{x0 + 30}" y1="{ly}" y2="{ly}" stroke="{colour}" '
                f'stroke-width="{width}"{dash_attr}/>'
            )
        if marker == "circle":
            out.append(f'<circle cx="{x0 + 15}" cy="{ly}" r="4" fill="{colour}"/>')
        elif marker == "square":
            out.append(
                f'<rect x="{x0 + 11.5}" y="{ly - 3.5}" width="7" height="7" fill="none" '
                f'stroke="{colour}" stroke-width="1.75"/>'
            )
        elif marker == "ring":
            out.append(
                f'<circle cx="{x0 + 15}" cy="{ly}" r="7" fill="none" stroke="{colour}" '
                'stroke-width="2"/>'
            )
        elif marker == "cross":
            out.append(
                f'<path d="M{x0 + 10} {ly - 5}l10 10m0 -10l-10 10" stroke="{colour}" '
                'stroke-width="2.5" fill="none"/>'
            )
        out.append(
            f'<text class="legend-label" x="{x0 + 38}" y="{ly}" dominant-baseline="middle">'
            f"{escape(label)}</text>"
        )
    out.append("</g>")
    return "\n".join(out)
