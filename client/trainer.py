"""One round of local DP-SGD with Opacus: Poisson sampling, per-sample clipping, Gaussian noise.

The accountant's history comes in and goes out, so the caller composes epsilon over every
round; a fresh ``PrivacyEngine`` per round would otherwise forget earlier rounds.

Two ways of clipping give the same update (``tests/unit/test_dp_modes.py`` checks both against
a batch-size-1 loop); :func:`dp_mode_for` picks the faster one per update kind, as measured by
``bench/throughput.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from dataclasses import dataclass

import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from torch.utils.data import DataLoader, TensorDataset

from residency.client.linear_probe import trained_part
from residency.client.randomness import RoundRandomness
from residency.common.config.job import AccountantKind, Optimizer, StepRule, UpdateKind
from residency.common.device import Compute
from residency.common.privacy.accountant import History, poisson_schedule
from residency.common.updates import GradSampleMode, method_for


def forward_precision(
    compute: Compute, mode: GradSampleMode
) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast where the mode clips exactly under it (hooks); float32 for ghost."""
    return compute.autocast() if mode is GradSampleMode.HOOKS else contextlib.nullcontext()


def dp_mode_for(update: UpdateKind) -> GradSampleMode:
    """The faster correct clipping mode for an update kind, as its module declares it.

    ``bench/throughput.py`` measured each (MiniLM-L6, batch 32 x 64 tokens, 2 CPU cores):
    ghost clipping for full fine-tuning, Opacus' hooks for LoRA, LoRA-FA and the head.
    """
    return method_for(update).grad_sample_mode


@dataclass(frozen=True)
class DpSgdSettings:
    """The mechanism of one round; the node, not the coordinator, fixes the noise.

    ``grad_sample_mode`` changes only the speed and memory of clipping, never the mechanism
    or what the accountant charges.
    """

    noise_multiplier: float
    max_grad_norm: float
    accountant: AccountantKind
    grad_sample_mode: GradSampleMode = GradSampleMode.HOOKS


@dataclass(frozen=True)
class LocalSchedule:
    """How long and how fast the node optimises in one round (no seed: see ``randomness``)."""

    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: Optimizer = Optimizer.ADAMW

    def scaled(self, rule: StepRule, *, expected_batch: float, noise: float) -> LocalSchedule:
        """This schedule with the step size ``rule`` gives for the node's batch and noise."""
        if rule is StepRule.FIXED:
            return self
        rate = self.learning_rate * expected_batch / max(noise, 1e-12)
        return dataclasses.replace(self, learning_rate=rate)


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
    """Opacus' private model, optimizer and Poisson loader, and the engine that accounts.

    ``model`` is a ``GradSampleModule`` in ``hooks`` mode and a
    ``GradSampleModuleFastGradientClipping`` in ``ghost`` mode; :meth:`backward` drives
    either, so a training loop is the same for both.
    """

    engine: PrivacyEngine
    model: GradSampleModule | GradSampleModuleFastGradientClipping
    optimizer: DPOptimizer
    loader: DPDataLoader
    mode: GradSampleMode = GradSampleMode.HOOKS

    def backward(self, logits: torch.Tensor, labels: torch.Tensor) -> float:
        """Back-propagate a non-empty batch's cross-entropy for the optimizer's clipped step.

        Returns the batch's mean cross-entropy (what a non-private loop would log). ``hooks``:
        one pass; Opacus keeps each example's gradient for the optimizer to clip. ``ghost``:
        the first pass only finds each example's gradient norm, the second back-propagates
        ``sum_i c_i * loss_i`` with clip factors ``c_i = min(1, C / (norm_i + 1e-6))`` (as
        Opacus' ghost criterion does), which leaves the clipped sum in ``.grad``.
        """
        per_example = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
        mean = per_example.mean()
        with warnings.catch_warnings():
            # Frozen embeddings (LoRA): the first adapter's input needs no gradient, so torch
            # notes that its hook fires on the output, which is what Opacus expects.
            warnings.filterwarnings("ignore", message="Full backward hook", category=UserWarning)
            if self.mode is GradSampleMode.HOOKS:
                mean.backward()  # type: ignore[no-untyped-call]
            else:
                self._ghost_backward(per_example, mean)
        return float(mean.item())

    def _ghost_backward(self, per_example: torch.Tensor, mean: torch.Tensor) -> None:
        model = self.model
        trainable = [p for p in model.parameters() if p.requires_grad]
        for param in trainable:
            if hasattr(param, "_norm_sample"):
                del param._norm_sample  # a stale norm must not stand in for a missing one
        mean.backward(inputs=_norm_pass_inputs(model), retain_graph=True)  # type: ignore[no-untyped-call]
        if any(not hasattr(param, "_norm_sample") for param in trainable):
            raise RuntimeError("ghost clipping: a trainable tensor got no per-example norm")
        for param in trainable:
            param.grad = None
        factors = model.get_clipping_coef().to(per_example.device)
        model.disable_hooks()
        try:
            (factors * per_example).sum().backward()
        finally:
            model.enable_hooks()


def _norm_pass_inputs(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What ghost clipping's first pass must back-propagate into: the trainable embedding tables.

    Each layer's norm hook fires once the gradient reaches that layer's input (or, for an
    embedding, whose input is token ids, its output), so a pass into the embedding tables
    reaches every layer above them, while sparing the weight gradients of every other layer,
    which that pass would compute only to throw away. A model without trainable embeddings
    gets the ordinary pass into every trainable tensor. :meth:`PrivateTraining.backward`
    checks that every trainable tensor got its norm.
    """
    tables = [
        param
        for module in model.modules()
        if isinstance(module, torch.nn.Embedding)
        for param in module.parameters(recurse=False)
        if param.requires_grad
    ]
    return tables or [p for p in model.parameters() if p.requires_grad]


def make_private(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader[tuple[torch.Tensor, ...]],
    *,
    dp: DpSgdSettings,
    history: History,
    noise_generator: torch.Generator | None = None,
    expected_batch: float | None = None,
) -> PrivateTraining:
    """Wrap model, optimizer and loader in the node's DP-SGD mechanism.

    The one place the mechanism is configured (Poisson sampling of every row of
    ``loader.dataset`` at ``1 / len(loader)``, per-sample gradients by
    ``dp.grad_sample_mode``, flat clipping at ``dp.max_grad_norm``, Gaussian noise of
    ``dp.noise_multiplier`` times that), so the canary audit runs exactly what training runs.
    The accountant starts from ``history``. The Poisson sampler draws from ``loader``'s
    generator and the noise from ``noise_generator``: the node passes generators seeded from
    its own OS entropy (:mod:`.randomness`).

    ``expected_batch`` is what the optimizer divides the noisy sum by. Opacus sets it to
    ``int(len(dataset) * rate)``, from the exact row count, which would make the size of
    every (noised) step depend on whether one record is present; the node passes its public
    size times the rate (:func:`train_dp_round`). ``None`` keeps Opacus' figure (the canary
    audit and benchmarks, whose row counts are not a node's data).

    The noise is drawn as Opacus' secure mode draws it (the sum of four Gaussians, halved:
    the defence of Holohan et al. against floating-point attacks on the sampler) without
    Opacus' ``PrivacyEngine(secure_mode=True)``, which needs ``torchcsprng``, unbuilt for
    this torch. In ``ghost`` mode Opacus also returns a criterion that runs both backward
    passes; :meth:`PrivateTraining.backward` runs them instead, with a cheaper first pass.
    """
    with warnings.catch_warnings():
        # Opacus warns that secure_mode is off; the noise generator choice is documented.
        warnings.simplefilter("ignore", UserWarning)
        engine = PrivacyEngine(accountant=dp.accountant.value)
        engine.accountant.history = list(history)
        private_model, dp_optimizer, *_, dp_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            criterion=torch.nn.CrossEntropyLoss(),
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            poisson_sampling=True,
            grad_sample_mode=dp.grad_sample_mode.value,
            noise_generator=noise_generator,
        )
    dp_optimizer.secure_mode = True  # Opacus' 2n-draw Gaussian; the generator is ours
    if expected_batch is not None:
        dp_optimizer.expected_batch_size = expected_batch
    return PrivateTraining(
        engine=engine,
        model=private_model,
        optimizer=dp_optimizer,
        loader=dp_loader,
        mode=dp.grad_sample_mode,
    )


def noise_only_step(optimizer: DPOptimizer) -> None:
    """Take a DP step for an empty Poisson batch: zero gradients plus the full noise.

    BERT cannot run a forward pass on zero rows, but skipping the step would under-count it;
    Opacus clips an empty batch to zero, adds noise and lets the accountant count the step.
    The ghost optimizer reads the clipped sum from ``.grad`` (zero), the others clip
    per-example gradients (none).
    """
    for param in optimizer.params:
        if isinstance(optimizer, DPOptimizerFastGradientClipping):
            param.grad = torch.zeros_like(param)
        else:
            param.grad_sample = torch.zeros(
                (0, *param.shape), device=param.device, dtype=param.dtype
            )
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
    randomness: RoundRandomness,
    public_records: int,
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
    """
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
    loader = DataLoader(
        part.data,
        batch_size=1,
        sampler=range(round(1 / sample_rate)),
        generator=randomness.sampling_generator(),
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
            for *inputs, labels in dp_loader:
                steps += 1
                if len(labels) == 0:
                    noise_only_step(dp_optimizer)
                    continue
                with forward_precision(compute, dp.grad_sample_mode):
                    logits = part.logits(private_model, inputs, device=compute.device)
                losses.append(private.backward(logits, labels.to(compute.device)))
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
    )
