"""One round of local DP-SGD with Opacus: Poisson sampling, per-sample clipping, Gaussian noise.

The accountant's history comes in and goes out, so the caller composes epsilon over every
round; a fresh ``PrivacyEngine`` per round would otherwise forget earlier rounds. The
mechanism itself (clipping modes, non-finite gradients counted as zero, the noise) is
:mod:`residency.common.privacy.dp_sgd`, which the canary audit runs too; :func:`dp_mode_for`
picks the faster clipping mode per update kind, as measured by ``bench/throughput.py``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, TensorDataset

from residency.client.linear_probe import trained_part
from residency.client.randomness import RoundRandomness
from residency.common.config.kinds import GradSampleMode, Optimizer, StepRule, UpdateKind
from residency.common.device import Compute
from residency.common.privacy.accountant import History
from residency.common.privacy.dp_sgd import (
    DpSgdSettings,
    forward_precision,
    make_private,
    noise_only_step,
)
from residency.common.privacy.mechanism_log import MechanismLog
from residency.common.privacy.people import People, PeopleData, collate_people
from residency.common.privacy.sampling import poisson_schedule
from residency.common.updates.traits import traits_for


def dp_mode_for(update: UpdateKind) -> GradSampleMode:
    """The faster correct clipping mode for an update kind, as its module declares it.

    ``bench/throughput.py`` measured each (MiniLM-L6, batch 32 x 64 tokens, 2 CPU cores):
    ghost clipping for full fine-tuning, Opacus' hooks for LoRA, LoRA-FA and the head.
    """
    return traits_for(update).grad_sample_mode


STABLE_STEP = 16.0
"""The ``noise`` step rule's largest step on the mean gradient, times the clipping norm.

Where noise dominates (few records, tight budget) the rule's step grows with the node's
records over its noise multiplier; where signal dominates, the step that still descends is
set by the loss's curvature on the standardised features, which does not grow with the
record count. Measured without noise (``bench/pipeline_replay.py``, docs/performance.md):
full-batch steps up to 32 improve the release's head from the first round on every bench
corpus, steps of 64 and more make the first round fall below it (tweets 0.645 to 0.623)."""


@dataclass(frozen=True)
class LocalSchedule:
    """How long and how fast the node optimises in one round (no seed: see ``randomness``)."""

    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: Optimizer = Optimizer.ADAMW

    def scaled(
        self,
        rule: StepRule,
        *,
        expected_batch: float,
        noise: float,
        max_grad_norm: float,
        records_per_unit: float = 1.0,
    ) -> LocalSchedule:
        """This schedule with the step size ``rule`` gives for the node's batch and noise.

        ``records_per_unit`` (person-level DP): the records a person holds on average, from
        the node's two public sizes. A person's summed gradient is more coherent than one
        record's, so one clipped step goes further along it; the stable step is divided by
        it (``bench/person_level.py``: at 5.5 records a person, the head trained best at a
        step of 2, where records trained best at 8).
        """
        if rule is StepRule.FIXED:
            return self
        rate = self.learning_rate * expected_batch / max(noise, 1e-12)
        rate = min(rate, STABLE_STEP / max_grad_norm / max(records_per_unit, 1.0))
        return dataclasses.replace(self, learning_rate=rate)


@dataclass(frozen=True)
class RoundOutcome:
    """What one round of local training did, for the node's records and its reply."""

    examples: int
    steps: int
    sample_rate: float
    mean_loss: float
    history: History
    mechanism: MechanismLog


def train_dp_round(
    model: torch.nn.Module,
    data: TensorDataset,
    *,
    schedule: LocalSchedule,
    dp: DpSgdSettings,
    history: History,
    compute: Compute,
    randomness: RoundRandomness,
    public_records: int,
    people: People | None = None,
) -> RoundOutcome:
    """Train ``model`` in place for one round and return the composed accountant history.

    Poisson masks, noise and dropout come from ``randomness`` alone (the node's secret
    seeds), never from torch's global state as the caller left it. When only the classifier
    head trains (``update = "head"``), the encoder runs once over ``data`` and DP-SGD trains
    the head on those features (:mod:`.linear_probe`): the same mechanism on the same rows,
    without an encoder pass per step.

    The schedule is the public size's, not ``len(data)``'s: each row is sampled at
    ``1 / ceil(P / batch_size)`` for that many steps per epoch, and the noisy sum is divided
    by ``P`` times that rate, so the sample rate, the step count and the scale of every step
    are the same whether or not one record is present (add/remove adjacency,
    ``docs/privacy.md``).

    With ``people`` (person-level DP, :mod:`residency.common.privacy.people`) the unit is a
    person: Poisson sampling draws people, ``public_records`` is then the public count of
    people, and each sampled person's capped records make one clipped gradient (``hooks``
    mode only).
    """
    if people is not None and dp.grad_sample_mode is not GradSampleMode.HOOKS:
        raise ValueError("person-level DP-SGD needs hooks mode: ghost clipping norms rows")
    if people is not None:  # only the rows people keep are read (encoded, for the head)
        data, people = people.kept(data), people.compacted()
    sample_rate, steps_per_epoch = poisson_schedule(
        examples=public_records, batch_size=schedule.batch_size
    )
    torch.manual_seed(randomness.dropout_seed)
    model.to(compute.device)
    part = trained_part(model, data, compute=compute)
    part.module.train()
    params = [p for p in part.module.parameters() if p.requires_grad]
    optimizer: torch.optim.Optimizer
    if schedule.optimizer is Optimizer.SGD:
        optimizer = torch.optim.SGD(params, lr=schedule.learning_rate)
    else:
        optimizer = torch.optim.AdamW(params, lr=schedule.learning_rate, weight_decay=0.0)
    # Opacus samples every row of the loader's data set at 1 / len(loader): a template
    # of ceil(P / B) one-row batches fixes that rate from the public size alone.
    loader: DataLoader[tuple[torch.Tensor, ...]] = DataLoader(
        part.data if people is None else PeopleData(part.data, people),
        batch_size=1,
        sampler=range(round(1 / sample_rate)),
        generator=randomness.sampling_generator(),
        collate_fn=None if people is None else collate_people,
    )
    private = make_private(
        part.module,
        optimizer,
        loader,
        dp=dp,
        history=history,
        noise_generator=randomness.noise_generator(compute.device),
        expected_batch=public_records * sample_rate,
    )
    private_model, dp_optimizer, dp_loader = private.model, private.optimizer, private.loader
    if not math.isclose(dp_loader.sample_rate, sample_rate):
        raise RuntimeError(f"Opacus sample rate {dp_loader.sample_rate} != planned {sample_rate}")
    losses: list[float] = []
    steps = 0
    try:
        for _ in range(schedule.epochs):
            for batch in dp_loader:
                steps += 1
                if len(batch[0]) == 0:
                    noise_only_step(dp_optimizer)
                    continue
                owners = None
                if people is not None:
                    *batch, owners = batch
                *inputs, labels = batch
                with forward_precision(compute, dp.grad_sample_mode):
                    logits = part.logits(private_model, inputs, device=compute.device)
                losses.append(private.backward(logits, labels.to(compute.device), owners))
                dp_optimizer.step()
                dp_optimizer.zero_grad(set_to_none=True)
    finally:
        private_model._close()  # remove Opacus hooks so the model can be reused or exported
    if steps != schedule.epochs * steps_per_epoch:
        raise RuntimeError(f"ran {steps} steps, planned {schedule.epochs * steps_per_epoch}")
    return RoundOutcome(
        examples=public_records,
        steps=steps,
        sample_rate=sample_rate,
        mean_loss=sum(losses) / len(losses) if losses else float("nan"),
        history=tuple(
            (float(z), float(q), int(n)) for z, q, n in private.engine.accountant.history
        ),
        mechanism=private.log,
    )
