"""``residency audit canary``: a one-run canary audit of a node's DP-SGD configuration.

Exit codes: 0 the claim stands (not flagged); 3 flagged: the empirical epsilon lower bound
exceeds the claimed epsilon; 2 invalid input, with one line naming the flag and the fix.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from residency.auditor.canary_settings import (
    DEFAULT_CANARIES,
    DEFAULT_CONFIDENCE,
    MIN_CANARIES,
    CanaryAudit,
    CanarySettings,
    Mechanism,
)
from residency.cli.common import EXIT_FAILED, EXIT_INPUT, console, err_console, fail
from residency.common.config.kinds import AccountantKind

_FIXES = {
    "noise_multiplier": "pass the node's noise multiplier, 0 or more",
    "max_grad_norm": "pass the node's clipping norm, above 0",
    "sample_rate": "pass the node's Poisson rate 1/k for k batches per epoch, e.g. 0.04",
    "steps": "pass the DP-SGD steps the claim covers, 1 or more",
    "delta": "pass the claim's delta, in (0, 1), e.g. 1e-5",
    "accountant": "pass prv or rdp",
    "claimed_epsilon": "pass a positive epsilon, or leave it out to check Opacus' epsilon",
    "canaries": f"pass {MIN_CANARIES} or more",
    "confidence": "pass a confidence in (0, 1), e.g. 0.95",
    "seed": "pass a whole number, 0 or more",
}


def _input_error(exc: ValidationError) -> typer.Exit:
    error = exc.errors(include_url=False)[0]
    field = str(error["loc"][0]) if error["loc"] else ""
    reason = str(error["msg"]).removeprefix("Value error, ")
    flag = "--" + field.replace("_", "-")
    return fail(
        f"{flag}: {error['input']!r}: {reason}; fix: {_FIXES.get(field, 'see --help')}",
        EXIT_INPUT,
    )


def _table(audit: CanaryAudit) -> Table:
    mechanism = audit.mechanism
    table = Table(title="one-run canary audit", show_header=False)
    table.add_column("", style="bold", no_wrap=True)
    table.add_column("", no_wrap=True)
    table.add_row(
        "configuration",
        f"z={mechanism.noise_multiplier:g} C={mechanism.max_grad_norm:g} "
        f"q={mechanism.sample_rate:.6g} T={mechanism.steps} δ={mechanism.delta:g}",
    )
    per = mechanism.records_per_person
    table.add_row(
        "claimed ε",
        f"{audit.claimed_epsilon:.3f}"
        + ("" if per is None else f" per person (canary people of {per} records)"),
    )
    table.add_row(
        "canaries",
        f"{audit.canaries} ({audit.included} included) in {audit.runs} "
        f"run{'s' if audit.runs > 1 else ''} of ≤{audit.canaries_per_run}",
    )
    table.add_row(
        "guesses",
        f"{audit.correct} of {audit.guesses} correct (in {audit.guess_in_fraction:g}, "
        f"out {audit.guess_out_fraction:g} of each half)",
    )
    table.add_row(f"ε lower bound ({audit.confidence:.0%})", f"{audit.epsilon_lower_bound:.3f}")
    table.add_row("most it could show", f"{audit.epsilon_ceiling:.3f}")
    table.add_row("time", f"{audit.elapsed_s:.1f} s")
    return table


def _verdict(audit: CanaryAudit) -> str:
    bound, claimed = audit.epsilon_lower_bound, audit.claimed_epsilon
    if audit.flagged:
        return (
            f"FLAGGED: ε ≥ {bound:.3f} with {audit.confidence:.0%} confidence, above the "
            f"claimed ε={claimed:.3f}: this configuration does not deliver its budget"
        )
    line = f"not flagged: ε lower bound {bound:.3f} ≤ claimed ε={claimed:.3f}"
    if claimed >= audit.epsilon_ceiling:
        line += (
            f" (with {audit.canaries} canaries these guesses cannot show more than "
            f"ε={audit.epsilon_ceiling:.3f})"
        )
    return line


def _from_ledger(ledger: Path, entry: int) -> list[dict[str, Any]]:
    """Each mechanism of one signed record, with its own claim: what that node says it ran.

    A default job's record holds two mechanisms (a class-statistics release, one step at
    sample rate 1, then the training rounds), composed by the accountant into the record's
    epsilon. A one-run audit tests one mechanism, so each is audited on its own, against the
    epsilon the same accountant gives it alone: if every part delivers its own epsilon, the
    composition the record states is the accountant's arithmetic, which ``audit verify``
    recomputes.
    """
    from residency.common.privacy.accountant import epsilon_spent
    from residency.common.privacy.ledger import LedgerEntry, read_lines

    if not ledger.is_file():
        raise fail(f"--ledger: {ledger}: not found; fix: pass a ledger.jsonl", EXIT_INPUT)
    lines = read_lines(ledger)
    if not 0 <= entry < len(lines):
        raise fail(
            f"--entry: {entry}: the ledger has entries 0..{len(lines) - 1}; fix: pick a record",
            EXIT_INPUT,
        )
    try:
        found = LedgerEntry.model_validate_json(lines[entry])
    except ValidationError as exc:
        raise fail(
            f"--entry: {entry}: not a valid entry; fix: run `residency audit verify` first",
            EXIT_INPUT,
        ) from exc
    if found.record is None:
        raise fail(
            f"--entry: {entry} is a {found.kind} entry; fix: pick a record entry", EXIT_INPUT
        )
    record = json.loads(found.record.body)
    steps: dict[tuple[float, float], int] = {}
    for z, q, n in record["history"]:
        steps[(z, q)] = steps.get((z, q), 0) + n
    kind = AccountantKind(record["accountant"])
    whole = len(steps) == 1
    return [
        {
            "noise_multiplier": z,
            "sample_rate": q,
            "steps": n,
            "max_grad_norm": record["max_grad_norm"],
            "delta": record["delta"],
            "accountant": kind,
            "records_per_person": record.get("records_per_person"),  # person-level (schema 6)
            "claimed_epsilon": record["epsilon"]
            if whole
            else epsilon_spent(((z, q, n),), delta=record["delta"], kind=kind),
        }
        for (z, q), n in steps.items()
    ]


def canary(
    noise_multiplier: Annotated[
        float | None,
        typer.Option(help="Noise multiplier z of the node's DP-SGD (0 = no noise)."),
    ] = None,
    sample_rate: Annotated[
        float | None, typer.Option(help="Poisson sample rate q = 1/k (k batches per epoch).")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="DP-SGD steps T the claimed epsilon covers.")
    ] = None,
    ledger: Annotated[
        Path | None,
        typer.Option(help="Take the configuration and claim from a record in this ledger."),
    ] = None,
    entry: Annotated[int, typer.Option(help="The record's entry number in --ledger.")] = -1,
    max_grad_norm: Annotated[float, typer.Option(help="Per-example clipping norm C.")] = 1.0,
    delta: Annotated[float, typer.Option(help="Delta of the claim.")] = 1e-5,
    accountant: Annotated[
        AccountantKind, typer.Option(help="Accountant for the default claimed epsilon.")
    ] = AccountantKind.PRV,
    claimed_epsilon: Annotated[
        float | None,
        typer.Option(help="Epsilon the node claims (default: Opacus' epsilon for z, q, T, δ)."),
    ] = None,
    records_per_person: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Person-level DP: each canary is a person with this many records (the node's "
            "cap); the claim is then per person.",
        ),
    ] = None,
    canaries: Annotated[
        int, typer.Option(help="Canaries, each included with probability 1/2.")
    ] = DEFAULT_CANARIES,
    confidence: Annotated[
        float, typer.Option(help="Confidence of the epsilon lower bound.")
    ] = DEFAULT_CONFIDENCE,
    seed: Annotated[int, typer.Option(help="Seed of inclusions, sampling and noise.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Empirical one-run privacy audit (Steinke et al. 2023) of a DP-SGD configuration.

    Trains gradient canaries through the node's own Opacus mechanism and flags the
    configuration (exit 3) when the epsilon lower bound exceeds the claimed epsilon. The
    configuration comes from the flags, or from a node's signed record (--ledger, --entry).
    """
    if ledger is not None:
        phases = _from_ledger(ledger, entry)
        audits = [_audit(phase, canaries, confidence, seed) for phase in phases]
        if as_json:
            print(audits[0].model_dump_json() if len(audits) == 1 else _json_list(audits))
        else:
            for number, audit in enumerate(audits, start=1):
                if len(audits) > 1:
                    console.print(f"mechanism {number} of {len(audits)} in entry {entry}:")
                console.print(_table(audit))
                console.print(_verdict(audit), highlight=False, soft_wrap=True)
        if any(audit.flagged for audit in audits):
            raise typer.Exit(EXIT_FAILED)
        return
    if noise_multiplier is None or sample_rate is None or steps is None:
        raise fail(
            "--noise-multiplier, --sample-rate, --steps: missing; fix: pass all three, or "
            "--ledger LEDGER --entry N to audit a node's recorded configuration",
            EXIT_INPUT,
        )
    audit = _audit(
        {
            "noise_multiplier": noise_multiplier,
            "sample_rate": sample_rate,
            "steps": steps,
            "max_grad_norm": max_grad_norm,
            "delta": delta,
            "accountant": accountant,
            "claimed_epsilon": claimed_epsilon,
            "records_per_person": records_per_person,
        },
        canaries,
        confidence,
        seed,
    )
    if as_json:
        print(audit.model_dump_json())
    else:
        console.print(_table(audit))
        console.print(_verdict(audit), highlight=False, soft_wrap=True)
    if audit.flagged:
        raise typer.Exit(EXIT_FAILED)


def _json_list(audits: list[CanaryAudit]) -> str:
    return "[" + ",".join(audit.model_dump_json() for audit in audits) + "]"


def _audit(phase: dict[str, Any], canaries: int, confidence: float, seed: int) -> CanaryAudit:
    """One mechanism's audit, or a one-line input error (exit 2)."""
    claimed = phase["claimed_epsilon"]
    try:
        mechanism = Mechanism(**{k: v for k, v in phase.items() if k != "claimed_epsilon"})
        settings = CanarySettings(
            canaries=canaries, confidence=confidence, seed=seed, claimed_epsilon=claimed
        )
    except ValidationError as exc:
        raise _input_error(exc) from exc
    from residency.auditor.canary import audit_canaries, min_canaries, run_sizes

    try:
        run_sizes(mechanism, settings.canaries)
    except ValueError as exc:
        raise fail(
            f"--canaries: {exc}; fix: pass --canaries {min_canaries(mechanism)} or more",
            EXIT_INPUT,
        ) from exc
    if settings.claimed_epsilon is None and not math.isfinite(mechanism.opacus_epsilon()):
        raise fail(
            f"--claimed-epsilon: noise multiplier {mechanism.noise_multiplier:g} has no finite "
            "epsilon to check; fix: pass the epsilon the node claims",
            EXIT_INPUT,
        )
    with err_console.status("training canaries through the node's DP-SGD…"):
        return audit_canaries(mechanism, settings)
