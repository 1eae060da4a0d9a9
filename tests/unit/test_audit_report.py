"""Audit report: built from the auditor's numbers, escaped, problems shown at their entries."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ledger_factory import BUDGET, RESET_REASON, TARGET, LedgerFixture, account, write_ledger
from residency.auditor.burndown import DATASET, DP_ACCOUNTING, FLAGGED, OPACUS, RECORDED
from residency.auditor.report import html_page, render_report
from residency.auditor.report_format import ReportFormat
from residency.auditor.verify import Verification, load_keys, verify_ledger
from residency.cli.audit_report import report
from residency.common.charts import Figure, plotly_js
from residency.common.privacy.ledger import LEDGER_FILE, LedgerEntry
from residency.common.privacy.signing import key_id

pytestmark = pytest.mark.unit

HOSTILE = '<script>alert("x")</script> | **bold** & <img src=https://evil.example/x.png>'
VOID = {"meta", "br", "img", "hr", "input", "link", "col", "area", "base", "source", "wbr"}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> LedgerFixture:
    return write_ledger(tmp_path_factory.mktemp("ledger"))


@pytest.fixture(scope="module")
def verified(written: LedgerFixture) -> Verification:
    return verify_ledger(
        written.ledger, load_keys(written.keys), node_ledgers=written.node_ledgers.values()
    )


def tampered_copy(written: LedgerFixture, folder: Path) -> Path:
    """A copy of the coordinator's ledger folder (entries and update files) to edit."""
    shutil.copytree(written.ledger.parent, folder)
    return folder / LEDGER_FILE


def edit_entry(ledger: Path, index: int, **changes: object) -> None:
    """Change fields of one entry in place, leaving its hash and signature as they were."""
    lines = ledger.read_text("ascii").splitlines()
    entry = json.loads(lines[index])
    entry.update(changes)
    lines[index] = json.dumps(entry, separators=(",", ":"))
    ledger.write_text("\n".join(lines) + "\n", "ascii")


@dataclass
class Chart:
    """A chart on the page: its element, its figure (parsed from the page) and its caption."""

    attrs: dict[str, str]
    figure: Figure
    title: str = ""
    description: str = ""


@dataclass
class Parsed:
    """What the page holds: its executable scripts, its charts, and text by element id."""

    scripts: list[str] = field(default_factory=list)
    figures: dict[str, tuple[dict[str, str], str]] = field(default_factory=dict)
    charts: list[dict[str, str]] = field(default_factory=list)
    text: dict[str, str] = field(default_factory=dict)
    csp: str = ""

    def chart_list(self) -> list[Chart]:
        """Each chart div with the figure that names it and its text alternative."""
        by_chart = {attrs["data-chart"]: json.loads(text) for attrs, text in self.figures.values()}
        assert len(by_chart) == len(self.figures) == len(self.charts)
        out = []
        for attrs in self.charts:
            title, desc = attrs["aria-labelledby"], attrs["aria-describedby"]
            out.append(Chart(attrs, by_chart[attrs["id"]], self.text[title], self.text[desc]))
        return out


class _Page(HTMLParser):
    """Checks each closing tag closes the innermost open element; collects what ``Parsed`` holds."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[tuple[str, dict[str, str]]] = []
        self.script: list[str] = []
        self.parsed = Parsed()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        assert not any(k.startswith("on") for k in values), f"<{tag}> has an event handler"
        if tag == "meta" and values.get("http-equiv") == "Content-Security-Policy":
            self.parsed.csp = values["content"]
        if tag == "div" and "chart" in values.get("class", "").split():
            self.parsed.charts.append(values)
        if tag not in VOID:
            self.open.append((tag, values))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        pass

    def handle_data(self, data: str) -> None:
        if self.open and self.open[-1][0] == "script":
            self.script.append(data)
            return
        for _, attrs in self.open:
            if "id" in attrs:
                self.parsed.text[attrs["id"]] = self.parsed.text.get(attrs["id"], "") + data

    def handle_endtag(self, tag: str) -> None:
        assert [t for t, _ in self.open[-1:]] == [tag], f"</{tag}> closes {self.open[-1:]}"
        _, attrs = self.open.pop()
        if tag == "script":
            text, self.script = "".join(self.script), []
            assert "src" not in attrs
            if attrs.get("type") == "application/json":
                self.parsed.figures[attrs["id"]] = (attrs, text)
            else:
                assert "type" not in attrs
                self.parsed.scripts.append(text)


def parse(page: str) -> Parsed:
    """The page parsed, after checking it is well formed and runs only its two own scripts."""
    assert page.startswith('<!DOCTYPE html>\n<html lang="en">')
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert parser.open == []
    parsed = parser.parsed
    assert parsed.scripts[0] == plotly_js()  # inlined verbatim from the plotly package
    assert len(parsed.scripts) == 2
    assert "Plotly.newPlot" in parsed.scripts[1]
    hashes = sorted(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in parsed.scripts
    )
    directives = dict(d.strip().split(" ", 1) for d in parsed.csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert sorted(directives["script-src"].split()) == hashes
    return parsed


def assert_well_formed(page: str) -> None:
    parse(page)


def without_plotly(page: str) -> str:
    """The page with its one copy of plotly.js cut out: what the report itself wrote."""
    assert page.count(plotly_js()) == 1
    return page.replace(plotly_js(), "")


def traces(figure: Figure) -> dict[str, dict[str, object]]:
    return {trace["name"]: trace for trace in figure["data"]}


def test_json_is_the_verification_numbers(verified: Verification) -> None:
    assert verified.ok, verified.problems
    doc = json.loads(render_report(verified, fmt=ReportFormat.JSON))
    assert doc["schema_version"] == 1
    assert doc["verified"] is True
    assert doc["verdict"] == "VERIFIED"
    assert doc["problems"] == []
    assert doc["resets"] == []
    assert doc["ledger"] == {
        "path": str(verified.ledger),
        "entries": verified.entries,
        "keeper": verified.keeper,
        "keeper_key_id": key_id(verified.keeper or ""),
        "head": verified.head,
        "head_entry": verified.entries - 1,
    }
    [run] = doc["runs"]
    assert (run["run"], run["job"], run["status"]) == ("7", "triage", "completed")
    assert (run["target_epsilon"], run["delta"], run["accountant"]) == (8.0, 1e-5, "prv")
    assert [c["country"] for c in run["countries"]] == ["DE", "FR"]
    rows = {(c["country"], r["round"]): r for c in run["countries"] for r in c["rounds"]}
    assert len(rows) == len(verified.spends) == 5
    for spend in verified.spends:
        row = rows[(spend.country, spend.round)]
        record = spend.record
        assert row == {
            "round": spend.round,
            "entry": spend.entry,
            "epsilon_round": record.epsilon_round,
            "epsilon_recorded": record.epsilon,
            "epsilon_opacus": spend.epsilon_opacus,
            "epsilon_dp_accounting": spend.epsilon_dp_accounting,
            "epsilon_dataset": spend.epsilon_dataset,
            "budget_epsilon": record.budget_epsilon,
            "target_epsilon": record.target_epsilon,
            "noise_multiplier": record.noise_multiplier,
            "sample_rate": record.sample_rate,
            "steps": record.steps,
            "max_grad_norm": record.max_grad_norm,
            "averaged": True,
            "problems": [],
        }
    fr = run["countries"][1]
    [refusal] = verified.refusals
    assert fr["refusals"] == [
        {"round": 3, "entry": refusal.entry, "reason": refusal.reason, "problems": []}
    ]
    assert fr["policies"] == [{"name": "eu-health", "sha256": "ab" * 32}]
    assert fr["keys"] == [key_id(verified.spends[1].record.key)]
    assert fr["epsilon_recorded"] == rows[("FR", 2)]["epsilon_recorded"]


def test_markdown_has_the_tables(verified: Verification) -> None:
    text = render_report(verified, fmt=ReportFormat.MD)
    lines = text.splitlines()
    assert lines[0] == "# Privacy ledger audit: VERIFIED"
    assert "## Run 7 · job triage" in lines
    assert {"### DE", "### FR"} <= set(lines)
    header = next(line for line in lines if line.startswith("| Round | Entry | ε round"))
    assert header.count("|") == 15
    for spend in verified.spends:
        row = f"| {spend.round} | {spend.entry} | {spend.record.epsilon_round:.4f} |"
        assert any(line.startswith(row) for line in lines), row
        assert f"{spend.epsilon_dp_accounting:.4f}" in text
    assert (
        "| 3 | 6 | FR refused round 3: dataset budget 12.00, spent 11.50, round needs 1.20 | ok |"
    ) in lines
    assert "- round 3: refused" in lines


def test_html_is_one_self_contained_page(verified: Verification) -> None:
    page = render_report(verified, fmt=ReportFormat.HTML)
    parse(page)  # well formed; only plotly.js and the drawing script, both by hash
    own = without_plotly(page)
    for external in ("http://", "https://", "url(", "@import", "src=", "<link", "fetch("):
        assert external not in own
    assert 'class="verdict ok" role="status">VERIFIED<' in page
    assert key_id(verified.keeper or "") in page
    assert page == render_report(verified, fmt=ReportFormat.HTML)  # deterministic


def test_html_has_one_chart_per_country_with_every_round(verified: Verification) -> None:
    charts = parse(render_report(verified, fmt=ReportFormat.HTML)).chart_list()
    assert [c.attrs["data-country"] for c in charts] == ["DE", "FR"]
    assert [c.attrs["id"] for c in charts] == ["run0-c0-chart", "run0-c1-chart"]
    refused = {r.country: [r.round] for r in verified.refusals}
    for chart in charts:
        country = chart.attrs["data-country"]
        assert chart.attrs["role"] == "img"
        spends = sorted((s for s in verified.spends if s.country == country), key=lambda s: s.round)
        rounds = [s.round for s in spends]
        lines = traces(chart.figure)
        assert chart.figure["layout"]["title"]["text"] == f"{country}: ε spent"
        assert [t["name"] for t in chart.figure["data"][:4]] == [
            RECORDED,
            OPACUS,
            DP_ACCOUNTING,
            DATASET,
        ]
        for name, values in [
            (RECORDED, [s.record.epsilon for s in spends]),
            (OPACUS, [s.epsilon_opacus for s in spends]),
            (DP_ACCOUNTING, [s.epsilon_dp_accounting for s in spends]),
            (DATASET, [s.epsilon_dataset for s in spends]),
        ]:
            assert (lines[name]["x"], lines[name]["y"]) == (rounds, values), name
        assert lines["job target ε"]["y"] == [TARGET, TARGET]
        assert lines["lifetime budget ε"]["y"] == [BUDGET, BUDGET]
        assert lines.get("refused", {}).get("x", []) == refused.get(country, [])
        assert FLAGGED not in lines
        # the text alternative: what the chart shows, each point in the tables' format
        assert chart.title == (
            f"{country}, run 7: cumulative epsilon per record by round against the job "
            "target 8 and the dataset budget 12"
        )
        points = [f"round {s.round}: recorded {s.record.epsilon:.4f}, " for s in spends]
        assert all(point in chart.description for point in points)
        if country in refused:
            assert chart.description.endswith("; refused rounds: 3.")


def test_hostile_text_in_a_figure_cannot_close_its_script(
    verified: Verification, monkeypatch: pytest.MonkeyPatch
) -> None:
    figure = {"data": [], "layout": {"title": {"text": HOSTILE + "</script><!-- ]]>"}}}
    monkeypatch.setattr(html_page, "burndown_figure", lambda chart: figure)
    page = render_report(verified, fmt=ReportFormat.HTML)
    own = without_plotly(page)
    assert "</script><!--" not in own
    assert '<script>alert("x")' not in own
    charts = parse(page).chart_list()
    assert [c.figure for c in charts] == [figure, figure]


def test_hostile_refusal_reason_is_escaped_and_its_entry_flagged(
    written: LedgerFixture, tmp_path: Path
) -> None:
    ledger = tampered_copy(written, tmp_path / "ledger")
    refusal = next(
        i
        for i, line in enumerate(ledger.read_text("ascii").splitlines())
        if LedgerEntry.model_validate_json(line).kind == "refusal"
    )
    edit_entry(ledger, refusal, reason=HOSTILE, country="<i>FR</i>")
    result = verify_ledger(ledger, load_keys(written.keys))
    assert [p.entry for p in result.problems] == [refusal]

    page = render_report(result, fmt=ReportFormat.HTML)
    parsed = parse(page)  # still only the report's own two scripts
    own = without_plotly(page)
    for raw in ('<script>alert("x")', "<img", "<i>"):
        assert raw not in own
    assert '<h3 id="run0-c2-heading">&lt;i&gt;FR&lt;/i&gt;</h3>' in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; | **bold** &amp; &lt;img" in page
    # the hostile country has its chart, but its name stays out of plotly's labels
    charts = parsed.chart_list()
    assert [c.attrs["data-country"] for c in charts] == ["DE", "FR", "<i>FR</i>"]
    hostile = charts[2].figure
    assert hostile["layout"]["title"]["text"] == "Country: ε spent"
    assert traces(hostile)["refused"]["x"] == [3]
    for chart in charts:
        text = json.dumps(chart.figure, ensure_ascii=False)
        for raw in ("<i>", "alert", "evil.example"):
            assert raw not in text
    assert "&lt;i&gt;FR&lt;/i&gt;, run 7: cumulative epsilon" in page
    assert 'class="verdict bad" role="status">1 PROBLEM<' in page
    assert f'href="#entry-{refusal}">entry {refusal}</a>: content does not match' in page

    text = render_report(result, fmt=ReportFormat.MD)
    for raw in ("<script", "<img", "<i>"):
        assert raw not in text
    assert r'&lt;script&gt;alert("x")&lt;/script&gt; \| \*\*bold\*\* &amp; &lt;img' in text
    assert f"1. **entry {refusal}**: content does not match its hash" in text

    doc = json.loads(render_report(result, fmt=ReportFormat.JSON))
    countries = doc["runs"][0]["countries"]
    assert [c["country"] for c in countries] == ["DE", "FR", "<i>FR</i>"]
    assert countries[2]["rounds"] == []
    assert countries[2]["refusals"] == [
        {"round": 3, "entry": refusal, "reason": HOSTILE, "problems": [result.problems[0].what]}
    ]


def test_removed_entry_is_shown_at_its_entry_number(written: LedgerFixture, tmp_path: Path) -> None:
    ledger = tampered_copy(written, tmp_path / "ledger")
    lines = ledger.read_text("ascii").splitlines()
    del lines[3]  # DE's round 2 record
    ledger.write_text("\n".join(lines) + "\n", "ascii")
    result = verify_ledger(ledger, load_keys(written.keys))
    assert not result.ok
    flagged = {p.entry for p in result.problems}
    assert 3 in flagged

    doc = json.loads(render_report(result, fmt=ReportFormat.JSON))
    assert doc["verified"] is False
    assert doc["verdict"] == f"{len(result.problems)} PROBLEMS"
    assert {p["entry"] for p in doc["problems"]} == flagged
    rows = [r for c in doc["runs"][0]["countries"] for r in c["rounds"]]
    moved = next(r for r in rows if r["entry"] == 3)
    assert any("entries were removed" in what for what in moved["problems"])
    assert [r["round"] for r in doc["runs"][0]["countries"][0]["rounds"]] == [1, 3]

    page = render_report(result, fmt=ReportFormat.HTML)
    charts = parse(page).chart_list()
    assert '<a class="where" href="#entry-3">entry 3</a>: numbered 4: entries were' in page
    assert '<tr id="entry-3" class="bad">' in page
    countries = doc["runs"][0]["countries"]
    assert [c.attrs["data-country"] for c in charts] == [c["country"] for c in countries]
    for chart, country in zip(charts, countries, strict=True):
        bad = [r for r in country["rounds"] if r["problems"]]
        ring = traces(chart.figure).get(FLAGGED, {"x": [], "y": []})  # ringed recorded points
        assert (ring["x"], ring["y"]) == (
            [r["round"] for r in bad],
            [r["epsilon_recorded"] for r in bad],
        )
        for r in bad:
            assert f"round {r['round']}: recorded {r['epsilon_recorded']:.4f}" in chart.description
    [fr] = [c for c, d in zip(charts, countries, strict=True) if moved in d["rounds"]]
    assert traces(fr.figure)[FLAGGED]["x"] == [moved["round"]]
    assert "(entry with a problem)" in fr.description

    text = render_report(result, fmt=ReportFormat.MD)
    assert "**entry 3**: numbered 4: entries were removed" in text


def test_budget_resets_are_listed_in_every_format_and_escaped(tmp_path: Path) -> None:
    made = write_ledger(tmp_path / "reset", reset="FR")
    node = made.node_ledgers["FR"]
    lines = node.read_text("ascii").splitlines()
    assert LedgerEntry.model_validate_json(lines[0]).kind == "budget-reset"
    result = verify_ledger(made.ledger, load_keys(made.keys), node_ledgers=[node])
    assert result.ok, result.problems
    hostile = result.resets[0].model_copy(update={"reason": HOSTILE})
    result = replace(result, resets=[hostile])

    doc = json.loads(render_report(result, fmt=ReportFormat.JSON))
    assert doc["verdict"] == "VERIFIED"
    assert doc["resets"] == [
        {
            "ledger": str(node),
            "entry": 0,
            "at": hostile.at,
            "country": "FR",
            "dataset": "fr-notes",
            "old_account": account("FR"),
            "new_account": account("FR", 2),
            "reason": HOSTILE,
        }
    ]

    page = render_report(result, fmt=ReportFormat.HTML)
    assert_well_formed(page)
    assert '<h2 id="resets-heading">Budget resets (1)</h2>' in page
    assert f"<code>{account('FR')[:12]}</code> → <code>{account('FR', 2)[:12]}</code>" in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    own = without_plotly(page)
    for raw in ('<script>alert("x")', "<img"):
        assert raw not in own

    text = render_report(result, fmt=ReportFormat.MD)
    assert "## Budget resets (1)" in text.splitlines()
    row = next(line for line in text.splitlines() if line.startswith("| FR | fr-notes |"))
    assert f"`{account('FR')[:12]}` | `{account('FR', 2)[:12]}`" in row
    assert r'&lt;script&gt;alert("x")&lt;/script&gt; \| \*\*bold\*\* &amp; &lt;img' in row

    plain = render_report(replace(result, resets=[]), fmt=ReportFormat.HTML)
    assert "Budget resets" not in plain
    assert RESET_REASON not in render_report(result, fmt=ReportFormat.MD)


def test_no_run_at_all_still_renders(tmp_path: Path) -> None:
    empty = Verification(tmp_path / "ledger.jsonl")
    empty.flag(None, "the ledger is empty")
    for fmt in ReportFormat:
        assert "the ledger is empty" in render_report(empty, fmt=fmt)
    assert_well_formed(render_report(empty, fmt=ReportFormat.HTML))


# --- the command ----------------------------------------------------------------------------


def invoke(*args: str) -> tuple[int, str, str]:
    app = typer.Typer()
    app.command()(report)
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def test_command_writes_html_and_exits_zero(
    written: LedgerFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = invoke(str(written.ledger), "--keys", str(written.keys))
    assert code == 0, out
    assert (tmp_path / "audit-report.html").read_text().startswith("<!DOCTYPE html>")
    assert out.strip().startswith(
        "VERIFIED: 8 entries, 1 run(s), 5 record(s), 1 refusal(s), 0 budget reset(s)"
    )
    assert "audit-report.html" in out

    args = [str(written.ledger), "--keys", str(written.keys), "--format", "md", "-o", "r.md"]
    args += [f"--node-ledger={path}" for path in written.node_ledgers.values()]
    code, out, _ = invoke(*args)
    assert code == 0
    assert (tmp_path / "r.md").read_text().startswith("# Privacy ledger audit: VERIFIED")


def test_command_json_to_stdout_is_only_the_report(written: LedgerFixture) -> None:
    code, out, err = invoke(str(written.ledger), "--keys", str(written.keys), "--format", "json")
    assert code == 0
    assert json.loads(out)["verdict"] == "VERIFIED"
    assert "VERIFIED: 8 entries" in err


def test_command_with_problems_writes_the_report_and_exits_three(
    written: LedgerFixture, tmp_path: Path
) -> None:
    ledger = tampered_copy(written, tmp_path / "ledger")
    edit_entry(ledger, 6, reason="edited")
    out_file = tmp_path / "report.html"
    code, out, _ = invoke(str(ledger), "--keys", str(written.keys), "-o", str(out_file))
    assert code == 3
    assert out.startswith("1 PROBLEM: ")
    assert "entry 6</a>: content does not match its hash" in out_file.read_text()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing-ledger", "ledger not found"),
        ("missing-keys", "not a folder"),
        ("empty-keys", "no .pub files"),
    ],
)
def test_bad_input_is_one_line_and_exit_two(
    written: LedgerFixture, tmp_path: Path, case: str, message: str
) -> None:
    ledger, keys = str(written.ledger), str(written.keys)
    if case == "missing-ledger":
        ledger = str(tmp_path / "nope.jsonl")
    else:
        keys = str(tmp_path / "nokeys") if case == "missing-keys" else str(tmp_path)
    code, out, err = invoke(ledger, "--keys", keys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert "; fix: " in lines[0]
    assert out == ""


def test_bad_key_file_names_a_fix(written: LedgerFixture, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    shutil.copytree(written.keys, keys)
    (keys / "DE.pub").write_text("ssh-ed25519 AAAAC3Nz DE\n")  # truncated
    code, _, err = invoke(str(written.ledger), "--keys", str(keys))
    assert code == 2
    assert "DE.pub: not an OpenSSH public key" in err
    assert "; fix: copy the party's .pub file as is" in err


def test_infinite_recomputed_epsilon_is_null_in_json_and_off_the_plot(
    verified: Verification,
) -> None:
    spend = replace(verified.spends[0], epsilon_opacus=math.inf)
    broken = replace(verified, spends=[spend, *verified.spends[1:]], problems=[])
    broken.flag(spend.entry, "epsilon 2.01 recorded, Opacus gives inf")
    doc = json.loads(render_report(broken, fmt=ReportFormat.JSON))
    row = doc["runs"][0]["countries"][0]["rounds"][0]
    assert (row["entry"], row["epsilon_opacus"]) == (spend.entry, None)
    page = render_report(broken, fmt=ReportFormat.HTML)
    charts = parse(page).chart_list()
    assert '<td class="auditor">∞</td>' in page
    lines = [traces(c.figure)[OPACUS] for c in charts]
    de = lines[0]["y"]
    assert de[0] is None  # DE's round 1 is off the plot: a gap in the line
    assert len(de) == 3  # rounds 1 to 3
    assert all(math.isfinite(v) for v in de[1:])
    assert all(v is None or math.isfinite(v) for line in lines for v in line["y"])
    assert traces(charts[0].figure)[FLAGGED]["x"] == [1]
    assert f"round 1: recorded {spend.record.epsilon:.4f}, Opacus ∞," in charts[0].description


def test_without_node_ledgers_the_dataset_lifetime_is_a_dash_not_a_number(
    written: LedgerFixture,
) -> None:
    alone = verify_ledger(written.ledger, load_keys(written.keys))

    doc = json.loads(render_report(alone, fmt=ReportFormat.JSON))
    countries = doc["runs"][0]["countries"]
    assert [c["epsilon_dataset"] for c in countries] == [None, None]
    assert {r["epsilon_dataset"] for c in countries for r in c["rounds"]} == {None}
    assert all(c["budget_epsilon"] == BUDGET for c in countries)
    text = render_report(alone, fmt=ReportFormat.MD)
    assert "- Dataset lifetime ε: – (budget 12)" in text.splitlines()
    page = render_report(alone, fmt=ReportFormat.HTML)
    assert_well_formed(page)
    for chart in parse(page).chart_list():
        assert traces(chart.figure)[DATASET]["y"] == []
