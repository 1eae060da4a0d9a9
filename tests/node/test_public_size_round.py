"""Add/remove adjacency through a whole round: no figure that leaves the node tells D from D'.

The differential test of ``docs/privacy.md``: a dataset D and D plus one record, under the same
``public_records``, give the same observable outcome (every non-noised figure of the signed
record, the metrics, the step size) through the node's ClientApp (seconds). Refusals, the
trainer's sampling and how the public size is declared are checked in
``tests/unit/test_public_size.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from node_harness import signed_record, train_round
from public_size_pair import d_and_d_plus_one, node_pair
from residency.client import client_app, trainer
from residency.common import wire
from residency.common.config.job import load_job
from residency.common.privacy.sampling import poisson_schedule

FIGURES = (
    "examples",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "max_grad_norm",
    "accountant",
    "delta",
    "history",
    "epsilon_round",
    "epsilon",
    "target_epsilon",
    "epsilon_dataset",
    "budget_epsilon",
    "policy",
)
"""Every figure of a signed record that is not noised, an identifier, a hash or a time."""


@pytest.mark.node
def test_one_more_record_changes_no_figure_that_leaves_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """D and D + 1 record under one public size: the same metrics, record and step size.

    The public size is far above both counts, so each round also warns the operator, in the
    node's log only.
    """
    job = load_job(d_and_d_plus_one(tmp_path, train='update = "head"\nstep_rule = "noise"'))
    rates: list[float] = []
    real_round = client_app.train_dp_round

    def spy(*args: Any, **kwargs: Any) -> trainer.RoundOutcome:
        rates.append(kwargs["schedule"].learning_rate)
        return real_round(*args, **kwargs)

    monkeypatch.setattr(client_app, "train_dp_round", spy)
    public = 130  # more than twice either count
    replies = []
    with caplog.at_level(logging.WARNING, logger="residency.node"):
        for settings in node_pair(tmp_path, public):
            reply = train_round(job, settings, run_id=1, server_round=1)
            assert not reply.has_error()
            replies.append(reply)
    d, d1 = (signed_record(reply) for reply in replies)
    assert {f: getattr(d, f) for f in FIGURES} == {f: getattr(d1, f) for f in FIGURES}
    assert d.examples == public
    sample_rate, steps_per_epoch = poisson_schedule(examples=public, batch_size=16)
    assert (d.sample_rate, d.steps) == (sample_rate, 2 * steps_per_epoch)
    metrics = [dict(reply.content.metric_records[wire.METRICS]) for reply in replies]
    assert metrics[0] == metrics[1]
    assert metrics[0][wire.NUM_EXAMPLES] == public
    assert rates[0] == rates[1] == pytest.approx(0.1 * public * sample_rate / d.noise_multiplier)
    warnings = [r.getMessage() for r in caplog.records if "public_records = 130" in r.getMessage()]
    assert len(warnings) == 2  # the operator's log; nothing of it is in the replies above
