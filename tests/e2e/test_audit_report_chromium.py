"""The HTML audit report as a browser renders it: headless Chromium, its DOM and a screenshot.

JavaScript is on and the network is off (every host name fails to resolve, and the page's
Content-Security-Policy allows nothing from elsewhere): plotly.js, inlined in the page, must draw
every chart from the page alone, with no console message (a blocked load, a CSP violation or a
script error would print one). Chromium is a test requirement (Debian: ``apt-get install -y
chromium``); without it this test fails rather than skips, so a page that renders blank can
never pass unnoticed.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ledger_factory import write_ledger
from residency.auditor.burndown import DATASET, DP_ACCOUNTING, OPACUS, RECORDED
from residency.auditor.report import render_report
from residency.auditor.report_format import ReportFormat
from residency.auditor.verify import load_keys, verify_ledger

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
COUNTRIES = ("DE", "FR", "IT")
WIDTH, HEIGHT = 1200, 1600
RECORDED_BLUE = (0x00, 0x72, 0xB2)
BUDGET_RED = (0xB2, 0x18, 0x2B)


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    if binary is None:
        pytest.fail(
            f"{CHROMIUM} not found: this test renders the audit report in headless Chromium; "
            "install it with `apt-get install -y chromium` (Debian)"
        )
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]
    return subprocess.run(
        [binary, *flags, *args], capture_output=True, text=True, timeout=180, check=False
    )


VOID = {"meta", "br", "img", "hr", "input", "link", "col", "area", "base", "source", "wbr"}


class _Dom(HTMLParser):
    """The elements of the rendered page, each with its attributes, its text and its ancestors."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.parents: list[tuple[int, ...]] = []  # indices of each element's open ancestors
        self.texts: dict[int, str] = {}  # element index: the text directly inside it
        self.open: list[int] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))
        self.parents.append(tuple(self.open))
        if tag not in VOID:
            self.open.append(len(self.elements) - 1)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))
        self.parents.append(tuple(self.open))

    def handle_endtag(self, tag: str) -> None:
        while self.open and self.elements[self.open[-1]][0] != tag:
            self.open.pop()  # an element the serializer left open (not one of ours)
        if self.open:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        if data.strip() and self.open:
            at = self.open[-1]
            self.texts[at] = self.texts.get(at, "") + data.strip()

    def find(self, tag: str, css: str = "", *, inside: int | None = None) -> list[int]:
        """Indices of the ``tag`` elements with all classes in ``css`` (within ``inside``)."""
        return [
            i
            for i, (name, attrs) in enumerate(self.elements)
            if name == tag
            and set(css.split()) <= set(attrs.get("class", "").split())
            and (inside is None or inside in self.parents[i])
        ]

    def attrs(self, index: int) -> dict[str, str]:
        return self.elements[index][1]

    def text(self, tag: str, css: str = "", *, inside: int | None = None) -> list[str]:
        return [self.texts.get(i, "") for i in self.find(tag, css, inside=inside)]

    def by_id(self, ident: str) -> int:
        [index] = [i for i, (_, attrs) in enumerate(self.elements) if attrs.get("id") == ident]
        return index

    def all_text(self, index: int) -> str:
        """The text of an element and everything inside it."""
        inner = [i for i, parents in enumerate(self.parents) if index in parents]
        return " ".join(self.texts.get(i, "") for i in [index, *inner] if self.texts.get(i))


def png_rgb(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB rows of an 8-bit, non-interlaced RGB(A) PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, []
    width = height = depth = colour = interlace = -1
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    assert (depth, interlace) == (8, 0)
    assert colour in (2, 6), f"PNG colour type {colour}"
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    prev = bytearray(stride)
    rows = []
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 2:  # up: the common case, done without a per-byte loop
            line = bytearray((x + y) & 255 for x, y in zip(line, prev, strict=True))
        elif kind in (1, 3, 4):  # sub, average, Paeth
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                if kind == 1:
                    line[i] = (line[i] + a) & 255
                elif kind == 3:
                    line[i] = (line[i] + ((a + b) >> 1)) & 255
                else:
                    c = prev[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    line[i] = (
                        line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)
                    ) & 255
        rows.append(b"".join(bytes(line[i : i + 3]) for i in range(0, stride, bpp)))
        prev = line
    return width, height, rows


def near(pixel: bytes, colour: tuple[int, int, int], tolerance: int = 36) -> bool:
    return sum(abs(p - c) for p, c in zip(pixel, colour, strict=True)) <= tolerance


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    written = write_ledger(tmp_path / "ledger", countries=COUNTRIES, rounds=4, refuse=("FR", 3))
    result = verify_ledger(
        written.ledger, load_keys(written.keys), node_ledgers=written.node_ledgers.values()
    )
    assert result.ok, result.problems
    page = tmp_path / "report.html"
    page.write_text(render_report(result, fmt=ReportFormat.HTML), encoding="utf-8")
    url = page.as_uri()

    dumped = chromium(tmp_path, "--dump-dom", url)
    assert dumped.returncode == 0, dumped.stderr[-3000:]
    console = [line for line in dumped.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console  # no blocked load, CSP violation or script error
    dom = _Dom()
    dom.feed(dumped.stdout)
    charts = dom.find("div", "chart")
    assert [dom.attrs(c)["data-country"] for c in charts] == list(COUNTRIES)
    legend = [RECORDED, OPACUS, DP_ACCOUNTING, DATASET, "job target ε", "lifetime budget ε"]
    for chart, country in zip(charts, COUNTRIES, strict=True):
        attrs = dom.attrs(chart)
        assert attrs["role"] == "img"
        # plotly drew it: its SVG, a title and axis titles, a trace per line in figure order
        assert len(dom.find("svg", "main-svg", inside=chart)) >= 1, country
        assert dom.text("text", "gtitle", inside=chart) == [f"{country}: ε spent"]
        assert dom.text("text", "xtitle", inside=chart) == ["round"]
        assert dom.text("text", "ytitle", inside=chart) == ["ε"]
        refused = ["refused"] if country == "FR" else []
        assert dom.text("text", "legendtext", inside=chart) == legend + refused
        traces = dom.find("g", "trace scatter", inside=chart)
        assert len(traces) == len(legend + refused)
        points = [len(dom.find("path", "point", inside=t)) for t in traces]
        recorded = 3 if country == "FR" else 4  # one point per recorded round
        assert points[:4] == [recorded] * 4, (country, points)
        assert points[6:] == ([1] if country == "FR" else [])  # FR's refused round 3
        for limit in traces[4:6]:  # the job target and the dataset budget, as lines
            assert len(dom.find("path", "js-line", inside=limit)) == 1
        # the text alternative, in the page for screen readers (plotly's SVG has none)
        title = dom.all_text(dom.by_id(attrs["aria-labelledby"]))
        assert title.startswith(f"{country}, run 7: cumulative epsilon per record by round")
        assert title.endswith("against the job target 8 and the dataset budget 12")
        desc = dom.all_text(dom.by_id(attrs["aria-describedby"]))
        assert desc.count("round ") == recorded
        assert ("refused rounds: 3" in desc) == (country == "FR")
    assert dom.text("p", "verdict") == ["VERIFIED"]

    shot = tmp_path / "report.png"
    taken = chromium(tmp_path, f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}", url)
    assert taken.returncode == 0, taken.stderr[-3000:]
    width, height, rows = png_rgb(shot.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    pixels = Counter(row[i : i + 3] for row in rows for i in range(0, len(row), 3))
    white = pixels[b"\xff\xff\xff"]
    assert 1 - white / (width * height) > 0.03, "the page rendered (almost) blank"
    assert len(pixels) > 200, "too few colours: text and plot lines are missing"
    blue = sum(n for pixel, n in pixels.items() if near(pixel, RECORDED_BLUE))
    red = sum(n for pixel, n in pixels.items() if near(pixel, BUDGET_RED))
    assert blue > 100, "the first country's epsilon line is not painted"
    assert red > 300, "the budget line is not painted"
