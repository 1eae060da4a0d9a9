"""The node's DP-SGD mechanism, built on Opacus: Poisson sampling, per-example clipping, noise.

The one place the mechanism is configured (:func:`make_private`), shared by the node's
trainer (``client/trainer.py``) and the canary audit (``auditor/canary.py``), so an audit
runs exactly what training runs without the auditor importing node code.

Two ways of clipping give the same update (``tests/unit/test_dp_modes.py`` checks both against
a batch-size-1 loop); ``client/trainer.py::dp_mode_for`` picks the faster one per update kind,
as measured by ``bench/throughput.py``.

In both, an example whose gradient is not finite counts as a zero gradient before clipping:
what the coordinator sends (weights, a feature transform) could otherwise make one record's
gradient NaN and, through the sum, the whole update, an outcome that tells whether the record
is there. A zero gradient is within the clipping norm, so the sensitivity, and the epsilon
charged, are unchanged.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from torch.utils.data import DataLoader

from residency.common.config.kinds import AccountantKind, GradSampleMode
from residency.common.device import Compute
from residency.common.privacy.accountant import History
from residency.common.privacy.mechanism_log import MechanismLog
from residency.common.privacy.people import per_person, row_weights


def forward_precision(
    compute: Compute, mode: GradSampleMode
) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast where the mode clips exactly under it (hooks); float32 for ghost."""
    return compute.autocast() if mode is GradSampleMode.HOOKS else contextlib.nullcontext()


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
    log: MechanismLog = field(default_factory=MechanismLog)

    def backward(
        self, logits: torch.Tensor, labels: torch.Tensor, owners: torch.Tensor | None = None
    ) -> float:
        """Back-propagate a non-empty batch's cross-entropy for the optimizer's clipped step.

        ``owners`` (person-level DP, :mod:`.people`): each row's person in the batch. A
        person's rows then weigh ``1 / n`` each and the optimizer clips one gradient per
        person, the sum of their rows'; only ``hooks`` mode keeps the per-row gradients that
        sum needs.

        Returns the batch's mean cross-entropy (what a non-private loop would log). ``hooks``:
        one pass; Opacus keeps each example's gradient for the optimizer to clip. ``ghost``:
        the first pass only finds each example's gradient norm, the second back-propagates
        ``sum_i c_i * loss_i`` with clip factors ``c_i = min(1, C / (norm_i + 1e-6))`` (as
        Opacus' ghost criterion does), which leaves the clipped sum in ``.grad``. In both, an
        example whose gradient (or loss) is not finite counts as a zero gradient.
        """
        per_example = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
        self.optimizer.owners = owners
        units = len(labels)
        if owners is not None:
            if self.mode is not GradSampleMode.HOOKS:
                raise RuntimeError("person-level DP-SGD clips per person in hooks mode only")
            units = int(owners.max()) + 1
            per_example = per_example * row_weights(owners).to(per_example.device)
        self.log.batch(units)
        mean = per_example.mean()  # people: Opacus scales each row's gradient back by the rows
        with warnings.catch_warnings():
            # Frozen embeddings (LoRA): the first adapter's input needs no gradient, so torch
            # notes that its hook fires on the output, which is what Opacus expects.
            warnings.filterwarnings("ignore", message="Full backward hook", category=UserWarning)
            if self.mode is GradSampleMode.HOOKS:
                mean.backward()  # type: ignore[no-untyped-call]
            else:
                self._ghost_backward(logits, labels, per_example, mean)
        people_mean = float(per_example.detach().sum()) / units  # the mean of people's means
        return float(mean.item()) if owners is None else people_mean

    def _ghost_backward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        per_example: torch.Tensor,
        mean: torch.Tensor,
    ) -> None:
        """Ghost clipping's two passes; a row whose loss or norm is not finite weighs zero.

        Its weight is zero and its logits are cut out of the second pass (``torch.where``
        passes back an exact zero, where ``0 * inf`` would be NaN), so every layer below
        back-propagates exact zeros for it: with the finite forward pass the weight bounds
        give (:data:`residency.common.model.WEIGHT_BOUND`), the clipped sum is finite.
        """
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
        norms = model.get_norm_sample().to(per_example.device)
        counted = torch.isfinite(norms) & torch.isfinite(per_example)
        factors = torch.where(
            counted, (model.max_grad_norm / (norms + 1e-6)).clamp(max=1.0), torch.zeros_like(norms)
        )
        kept = torch.where(counted.unsqueeze(1), logits.float(), torch.zeros_like(logits.float()))
        weighted = torch.nn.functional.cross_entropy(kept, labels, reduction="none")
        model.disable_hooks()
        try:
            (factors * weighted).sum().backward()  # type: ignore[no-untyped-call]
        finally:
            model.enable_hooks()
        self.log.clipped(
            [len(param._norm_sample) for param in trainable],
            _total_norm(param.grad for param in trainable),
            float(model.max_grad_norm),
        )


class FiniteDPOptimizer(DPOptimizer):  # type: ignore[misc]
    """Opacus' flat-clipping optimizer that counts a non-finite per-sample gradient as zero.

    An example with a NaN or infinite entry in any trainable tensor's per-sample gradient
    gets a zero gradient in every tensor before Opacus clips: its norm is then 0 and it adds
    nothing, where it would otherwise make its clip factor, and so the whole noisy sum, NaN.
    A finite gradient whose norm overflows to infinity gets clip factor 0 from Opacus itself.

    The per-sample gradients are also cast to their tensor's precision first: under bf16
    autocast they arrive in bf16, Opacus would compute their norms (and so the clip factors)
    in bf16, and a row would be clipped to a few tenths of a percent above ``max_grad_norm``
    (0.3% measured, ``tests/unit/test_dp_modes.py``).
    """

    mechanism_log: MechanismLog | None = None
    owners: torch.Tensor | None = None
    """Each row's person in the batch (person-level DP), set by :meth:`PrivateTraining.backward`."""

    def clip_and_accumulate(self) -> None:
        """Zero the non-finite examples' gradients, then clip and sum as Opacus does.

        Under person-level DP the per-row gradients are first summed per person, so each
        person is one example: clipped once, whatever their number of rows.
        """
        samples = self.grad_samples
        if self.owners is not None and samples and len(samples[0]):
            people = int(self.owners.max()) + 1
            for param, sample in zip(self.params, samples, strict=True):
                param.grad_sample = per_person(sample, self.owners, people)
            samples = self.grad_samples
        if samples and len(samples[0]):
            device = samples[0].device
            finite = torch.stack(
                [s.reshape(len(s), -1).isfinite().all(dim=1).to(device) for s in samples]
            ).all(dim=0)
            for param, sample in zip(self.params, samples, strict=True):
                rows = finite.to(sample.device).view(-1, *([1] * (sample.dim() - 1)))
                kept = torch.where(rows, sample, torch.zeros_like(sample))
                param.grad_sample = kept.to(param.dtype)  # bf16 norms: factors overshoot C
        super().clip_and_accumulate()
        if self.mechanism_log is not None and samples and len(samples[0]):
            self.mechanism_log.clipped(
                [len(sample) for sample in samples],
                _total_norm(param.summed_grad for param in self.params),
                float(self.max_grad_norm),
            )

    def add_noise(self) -> None:
        """Opacus' noise, logged with the standard deviation it was drawn with."""
        super().add_noise()
        if self.mechanism_log is not None:
            self.mechanism_log.noised(self.noise_multiplier * self.max_grad_norm, self.params)


class CheckedGhostOptimizer(DPOptimizerFastGradientClipping):  # type: ignore[misc]
    """Opacus' ghost-clipping optimizer, logging the noise each step adds.

    The clipping itself is logged by :meth:`PrivateTraining.backward`, which runs it.
    """

    mechanism_log: MechanismLog | None = None

    def add_noise(self) -> None:
        """Opacus' noise, logged with the standard deviation it was drawn with."""
        super().add_noise()
        if self.mechanism_log is not None:
            multiplier = getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier)
            self.mechanism_log.noised(multiplier * self.max_grad_norm, self.params)


def _total_norm(tensors: Iterable[torch.Tensor | None]) -> float:
    """The L2 norm of all ``tensors`` together, in float64 (inf if one is missing)."""
    total = 0.0
    for tensor in tensors:
        if tensor is None:
            return math.inf
        total += float(tensor.detach().double().square().sum())
    return math.sqrt(total)


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

    In ``hooks`` mode the optimizer is a :class:`FiniteDPOptimizer` (Opacus' own, for which
    a non-finite per-sample gradient counts as zero); ``ghost`` mode does the same in
    :meth:`PrivateTraining.backward`. Either way the returned ``log`` tallies what the
    mechanism did at each step, for the checks the node signs (:mod:`.mechanism_check`).

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
    if type(dp_optimizer) is DPOptimizer:  # hooks: clip through FiniteDPOptimizer
        dp_optimizer.__class__ = FiniteDPOptimizer
    elif type(dp_optimizer) is DPOptimizerFastGradientClipping:
        dp_optimizer.__class__ = CheckedGhostOptimizer
    else:
        raise RuntimeError(f"unexpected Opacus optimizer {type(dp_optimizer).__name__}")
    log = MechanismLog()
    dp_optimizer.mechanism_log = log
    if expected_batch is not None:
        dp_optimizer.expected_batch_size = expected_batch
    return PrivateTraining(
        engine=engine,
        model=private_model,
        optimizer=dp_optimizer,
        loader=dp_loader,
        mode=dp.grad_sample_mode,
        log=log,
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
    log = getattr(optimizer, "mechanism_log", None)
    if isinstance(log, MechanismLog):
        log.empty_batch()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
