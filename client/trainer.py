"""One round of local DP-SGD with Opacus: Poisson sampling, per-sample clipping, Gaussian noise.

The accountant's history comes in and goes out, so the caller composes epsilon over every
round; a fresh ``PrivacyEngine`` per round would otherwise forget earlier rounds.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from torch.utils.data import DataLoader, TensorDataset

from residency.common.config.job import AccountantKind
from residency.common.data.encoding import bert_inputs, trim
from residency.common.device import Compute
from residency.common.privacy.accountant import History, poisson_schedule


@dataclass(frozen=True)
class DpSgdSettings:
    """The mechanism of one round; the node, not the coordinator, fixes the noise."""

    noise_multiplier: float
    max_grad_norm: float
    accountant: AccountantKind


@dataclass(frozen=True)
class LocalSchedule:
    """How long and how fast the node optimises in one round."""

    epochs: int
    batch_size: int
    learning_rate: float
    seed: int


@dataclass(frozen=True)
class RoundOutcome:
    """What one round of local training did, for the node's records and its reply."""

    examples: int
    steps: int
    sample_rate: float
    mean_loss: float
    history: History


@dataclass(frozen=True)
class PrivateTraining:
    """Opacus' private model, optimizer and Poisson loader, and the engine that accounts."""

    engine: PrivacyEngine
    model: GradSampleModule
    optimizer: DPOptimizer
    loader: DPDataLoader


def make_private(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader[tuple[torch.Tensor, ...]],
    *,
    dp: DpSgdSettings,
    history: History,
    noise_generator: torch.Generator | None = None,
) -> PrivateTraining:
    """Wrap model, optimizer and loader in the node's DP-SGD mechanism.

    The one place the mechanism is configured (Poisson sampling at ``1 / len(loader)``,
    per-sample gradients by hooks, flat clipping at ``dp.max_grad_norm``, Gaussian noise of
    ``dp.noise_multiplier`` times that), so the canary audit runs exactly what training runs.
    The accountant starts from ``history``. Without ``noise_generator`` the noise comes from
    torch's global generator, and the sampler from the loader's generator or the global one.
    """
    with warnings.catch_warnings():
        # Opacus warns that secure_mode is off; the noise generator choice is documented.
        warnings.simplefilter("ignore", UserWarning)
        engine = PrivacyEngine(accountant=dp.accountant.value)
        engine.accountant.history = list(history)
        private_model, dp_optimizer, dp_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            poisson_sampling=True,
            grad_sample_mode="hooks",
            noise_generator=noise_generator,
        )
    return PrivateTraining(
        engine=engine, model=private_model, optimizer=dp_optimizer, loader=dp_loader
    )


def noise_only_step(optimizer: DPOptimizer) -> None:
    """Take a DP step for an empty Poisson batch: zero gradients plus the full noise.

    BERT cannot run a forward pass on zero rows, but skipping the step would under-count it;
    Opacus clips an empty batch to zero, adds noise and lets the accountant count the step.
    """
    for param in optimizer.params:
        param.grad_sample = torch.zeros((0, *param.shape), device=param.device, dtype=param.dtype)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def train_dp_round(
    model: torch.nn.Module,
    data: TensorDataset,
    *,
    schedule: LocalSchedule,
    dp: DpSgdSettings,
    history: History,
    compute: Compute,
) -> RoundOutcome:
    """Train ``model`` in place for one round and return the composed accountant history."""
    examples = len(data)
    sample_rate, steps_per_epoch = poisson_schedule(
        examples=examples, batch_size=schedule.batch_size
    )
    torch.manual_seed(schedule.seed)
    model.to(compute.device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=schedule.learning_rate, weight_decay=0.0)
    loader = DataLoader(data, batch_size=schedule.batch_size)
    private = make_private(model, optimizer, loader, dp=dp, history=history)
    private_model, dp_optimizer, dp_loader = private.model, private.optimizer, private.loader
    if not math.isclose(dp_loader.sample_rate, sample_rate):
        raise RuntimeError(f"Opacus sample rate {dp_loader.sample_rate} != planned {sample_rate}")
    losses: list[float] = []
    steps = 0
    try:
        for _ in range(schedule.epochs):
            for input_ids, mask, labels in dp_loader:
                steps += 1
                if len(labels) == 0:
                    noise_only_step(dp_optimizer)
                    continue
                ids, mask = trim(input_ids, mask)
                inputs = bert_inputs(ids.to(compute.device), mask.to(compute.device))
                with compute.autocast():
                    logits = private_model(**inputs).logits
                loss = torch.nn.functional.cross_entropy(logits.float(), labels.to(compute.device))
                loss.backward()  # type: ignore[no-untyped-call]
                dp_optimizer.step()
                dp_optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.item()))
    finally:
        private_model._close()  # remove Opacus hooks so the model can be reused or exported
    if steps != schedule.epochs * steps_per_epoch:
        raise RuntimeError(f"ran {steps} steps, planned {schedule.epochs * steps_per_epoch}")
    return RoundOutcome(
        examples=examples,
        steps=steps,
        sample_rate=sample_rate,
        mean_loss=sum(losses) / len(losses) if losses else float("nan"),
        history=tuple(
            (float(z), float(q), int(n)) for z, q, n in private.engine.accountant.history
        ),
    )
