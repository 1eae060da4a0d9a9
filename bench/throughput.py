"""Training throughput: non-private against DP-SGD, per update kind and clipping mode, one run.

Every configuration trains the same model on the same synthetic batches on this machine, each
in its own fresh Python process so its peak memory is its own: non-private full fine-tuning,
LoRA and LoRA-FA, and DP-SGD for each of them in every clipping mode the trainer offers
(``residency.common.updates.GradSampleMode``), plus full fine-tuning with Opacus' own ghost
criterion, to show what the trainer's cheaper first pass is worth, and person-level DP-SGD
(``hooks-person``: each person's rows' gradients summed before one clip, 4 rows a person).
Each step is the product's: ``build_classifier``, ``model_inputs`` (trim, explicit position
and token type ids), ``pick_compute().autocast()`` (bf16 on a CUDA GPU that has it), AdamW,
and for DP the trainer's ``make_private`` and ``PrivateTraining.backward``. Batches have a
fixed size, unlike Poisson batches, so every step does the same work; noise is on (z = 1),
clipping at C = 1.

It prints samples per second (batch size over the median step time, after warm-up steps),
peak memory (CPU: the process's peak RSS; CUDA: ``torch.cuda.max_memory_allocated``), both as
ratios to the non-private run of the same update kind, and the issue's two targets, met or
missed, for the mode ``dp_mode_for`` picks. Usage::

    python bench/throughput.py [--model tiny|minilm|PATH] [--device cpu|cuda]
        [--steps N] [--warmup N] [--batch-size B] [--seq-len T] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping
from torch.utils.data import DataLoader, TensorDataset

from residency.client.trainer import dp_mode_for
from residency.common.config.kinds import AccountantKind, GradSampleMode, UpdateKind
from residency.common.data.encoding import model_inputs
from residency.common.device import Compute, pick_compute
from residency.common.model import ModelSpec, build_classifier
from residency.common.privacy.dp_sgd import DpSgdSettings, forward_precision, make_private

NON_PRIVATE = "non-private"
OPACUS_GHOST = "ghost-opacus"
PERSON = "hooks-person"
PERSON_ROWS = 4
"""Person-level DP-SGD's rows per person in the bench's batches: the trainer sums each
person's per-row gradients (hooks mode, the only one a person's sum allows) before clipping."""
LORA_TARGET = 0.95
FULL_TARGET = 0.6
SEED = 0


class BenchFailed(RuntimeError):
    """A configuration's worker process failed; the message carries the end of its output."""


@dataclass(frozen=True)
class Config:
    """One row: an update kind trained without DP or with DP in one clipping mode."""

    update: str
    mode: str

    @property
    def label(self) -> str:
        """How the table names it."""
        return f"{self.update}, {'non-private' if self.mode == NON_PRIVATE else 'DP ' + self.mode}"


@dataclass(frozen=True)
class Measured:
    """What one worker process measured."""

    update: str
    mode: str
    trainable: int
    step_s: list[float]
    peak_mib: float
    memory: str
    device: str
    precision: str

    @property
    def median_step_s(self) -> float:
        """Median time of the timed steps: robust to the odd interrupted step."""
        return statistics.median(self.step_s)

    def samples_per_s(self, batch_size: int) -> float:
        """Training examples per second at the median step."""
        return batch_size / self.median_step_s


def configs() -> list[Config]:
    """Every configuration, non-private first within each update kind."""
    rows = []
    for update in (UpdateKind.FULL, UpdateKind.LORA, UpdateKind.LORA_FA):
        rows.append(Config(update.value, NON_PRIVATE))
        rows.extend(Config(update.value, mode.value) for mode in GradSampleMode)
        rows.append(Config(update.value, PERSON))
        if update is UpdateKind.FULL:
            rows.append(Config(update.value, OPACUS_GHOST))
    return rows


# ---------------------------------------------------------------- one configuration (worker)


Step = Callable[[dict[str, Any], Any], None]


def _step_fn(config: Config, args: argparse.Namespace, compute: Compute) -> tuple[Step, Any]:
    """Build the model on ``compute`` and one training step of ``config``; return both."""
    model = build_classifier(
        ModelSpec(source=args.model, labels=("yes", "no"), update=UpdateKind(config.update))
    )
    model.to(compute.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    if config.mode == NON_PRIVATE:

        def plain(inputs: dict[str, Any], labels: Any) -> None:
            with compute.autocast():
                logits = model(**inputs).logits
            torch.nn.functional.cross_entropy(logits.float(), labels).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return plain, model

    mode = (
        GradSampleMode.GHOST
        if config.mode == OPACUS_GHOST
        else GradSampleMode.HOOKS
        if config.mode == PERSON
        else GradSampleMode(config.mode)
    )
    owners = None
    if config.mode == PERSON:  # people of PERSON_ROWS consecutive rows
        owners = torch.arange(args.batch_size, device=compute.device) // PERSON_ROWS
    # make_private reads only the loader's length and data set (sample rate, expected batch).
    template = DataLoader(
        TensorDataset(torch.zeros(args.batch_size * 4)), batch_size=args.batch_size
    )
    private = make_private(
        model,
        optimizer,
        template,
        dp=DpSgdSettings(
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            accountant=AccountantKind.PRV,
            grad_sample_mode=mode,
        ),
        history=(),
    )
    opacus_loss = (
        DPLossFastGradientClipping(
            private.model, private.optimizer, torch.nn.CrossEntropyLoss(), "mean"
        )
        if config.mode == OPACUS_GHOST
        else None
    )

    def dp(inputs: dict[str, Any], labels: Any) -> None:
        with forward_precision(compute, mode):  # the trainer's rule: ghost stays in float32
            logits = private.model(**inputs).logits
        if opacus_loss is None:
            private.backward(logits, labels, owners)
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Full backward hook")
                opacus_loss(logits.float(), labels).backward()
        private.optimizer.step()
        private.optimizer.zero_grad(set_to_none=True)

    return dp, model


def measure(config: Config, args: argparse.Namespace) -> Measured:
    """Train ``args.warmup`` then ``args.steps`` steps of ``config`` in this process."""
    os.environ["RESIDENCY_DEVICE"] = args.device  # pick_compute: the trainer's own choice
    compute = pick_compute()
    cuda = compute.device.type == "cuda"
    step, model = _step_fn(config, args, compute)
    vocab = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(SEED)
    batches = []
    for _ in range(args.warmup + args.steps):
        body = torch.randint(
            1000, min(vocab, 30000), (args.batch_size, args.seq_len - 2), generator=generator
        )
        ids = torch.cat(
            [
                torch.full((args.batch_size, 1), 101),  # [CLS] in BERT's uncased vocabulary
                body,
                torch.full((args.batch_size, 1), 102),  # [SEP]
            ],
            dim=1,
        )
        labels = torch.randint(0, 2, (args.batch_size,), generator=generator)
        batches.append((ids, torch.ones_like(ids), labels))
    times = []
    for index, (ids, mask, labels) in enumerate(batches):
        if index == args.warmup and cuda:
            torch.cuda.reset_peak_memory_stats()
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        step(model_inputs(ids, mask, device=compute.device), labels.to(compute.device))
        if cuda:
            torch.cuda.synchronize()
        if index >= args.warmup:
            times.append(time.perf_counter() - started)
    if cuda:
        peak, memory = torch.cuda.max_memory_allocated() / 2**20, "GPU memory allocated"
    else:
        # Linux reports ru_maxrss in KiB; a fresh process per configuration keeps it its own.
        peak, memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process RSS"
    return Measured(
        update=config.update,
        mode=config.mode,
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        step_s=times,
        peak_mib=peak,
        memory=memory,
        device=torch.cuda.get_device_name() if cuda else f"cpu, {torch.get_num_threads()} threads",
        precision="bf16 autocast" if compute.bf16 else "fp32",
    )


# ---------------------------------------------------------------- the run (parent)


def _worker_args(args: argparse.Namespace, config: Config) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        *("--model", args.model, "--device", args.device),
        *("--steps", str(args.steps), "--warmup", str(args.warmup)),
        *("--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)),
        *("--worker", json.dumps(asdict(config))),
    ]


def run_worker(args: argparse.Namespace, config: Config) -> Measured:
    """Measure ``config`` in a fresh Python process."""
    done = subprocess.run(
        _worker_args(args, config), capture_output=True, text=True, timeout=1800, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise BenchFailed(f"{config.label}: worker exited {done.returncode}: " + " | ".join(tail))
    return Measured(**json.loads(lines[-1].removeprefix("RESULT ")))


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def _ratio(value: float, base: float | None) -> str:
    return "n/a" if base is None or base == 0 else f"{value / base:.2f}x"


def report(results: Sequence[Measured], batch_size: int) -> tuple[str, dict[str, object]]:
    """The table and the target checks, as text and as a JSON-ready summary."""
    baseline = {r.update: r for r in results if r.mode == NON_PRIVATE}
    header = (
        f"{'configuration':<26} {'trainable':>10} {'s/step':>7} {'samples/s':>10} "
        f"{'vs non-priv':>11} {'peak MiB':>9} {'vs non-priv':>11}"
    )
    lines = [header, "-" * len(header)]
    rows = []
    for r in results:
        base = baseline.get(r.update)
        speed = r.samples_per_s(batch_size)
        base_speed = base.samples_per_s(batch_size) if base else None
        lines.append(
            f"{Config(r.update, r.mode).label:<26} {_count(r.trainable):>10} "
            f"{r.median_step_s:>7.3f} {speed:>10.1f} {_ratio(speed, base_speed):>11} "
            f"{r.peak_mib:>9.0f} {_ratio(r.peak_mib, base.peak_mib if base else None):>11}"
        )
        rows.append(
            {
                **asdict(r),
                "samples_per_s": speed,
                "speed_ratio": speed / base_speed if base_speed else None,
                "memory_ratio": r.peak_mib / base.peak_mib if base else None,
            }
        )
    lines.append("")
    targets = []
    for update, floor in (
        (UpdateKind.LORA, LORA_TARGET),
        (UpdateKind.LORA_FA, LORA_TARGET),
        (UpdateKind.FULL, FULL_TARGET),
    ):
        chosen = dp_mode_for(update).value
        dp_rows = [
            r
            for r in results
            if r.update == update.value and r.mode not in (NON_PRIVATE, OPACUS_GHOST, PERSON)
        ]
        picked = next((r for r in dp_rows if r.mode == chosen), None)
        base = baseline.get(update.value)
        if picked is None or base is None:
            continue
        ratio = picked.samples_per_s(batch_size) / base.samples_per_s(batch_size)
        fastest = max(dp_rows, key=lambda r: r.samples_per_s(batch_size)).mode
        verdict = "met" if ratio >= floor else "MISSED"
        lines.append(
            f"target DP {update.value} >= {floor:.2f}x non-private {update.value}: {verdict} "
            f"({chosen}: {ratio:.2f}x, {picked.samples_per_s(batch_size):.1f} vs "
            f"{base.samples_per_s(batch_size):.1f} samples/s); fastest DP mode measured: {fastest}"
            + ("" if fastest == chosen else f" (dp_mode_for picks {chosen})")
        )
        targets.append(
            {
                "update": update.value,
                "mode": chosen,
                "ratio": ratio,
                "target": floor,
                "met": ratio >= floor,
                "fastest_measured": fastest,
            }
        )
    return "\n".join(lines), {"results": rows, "targets": targets}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default="minilm", help="tiny, minilm or a checkpoint folder")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per example, all used")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or args.seq_len < 3:
        parser.error("--steps >= 1, --warmup >= 0, --batch-size >= 1, --seq-len >= 3")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        measured = measure(Config(**json.loads(args.worker)), args)
        print("RESULT " + json.dumps(asdict(measured)), flush=True)
        return 0
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    print(
        f"model {args.model}, device {args.device}, batch {args.batch_size} x {args.seq_len} "
        f"tokens, {args.warmup} warm-up + {args.steps} timed steps per configuration, "
        "each in its own process",
        flush=True,
    )
    results = []
    for config in configs():
        print(f"[{time.perf_counter() - started:6.1f} s] {config.label}", flush=True)
        results.append(run_worker(args, config))
    load_after = os.getloadavg()[0]
    first = results[0]
    print(f"\n{first.device}, {first.precision}, peak memory = {first.memory}\n")
    text, summary = report(results, args.batch_size)
    print(text)
    cores = os.cpu_count() or 1
    if args.device == "cpu" and max(load_before, load_after) > cores:
        print(
            f"warning: 1-min load average reached {max(load_before, load_after):.1f} on {cores} "
            "cores; other processes shared the CPU, so these times are inflated and the ratios "
            "noisy: rerun on an idle machine"
        )
    elapsed = time.perf_counter() - started
    print(f"\nbench took {elapsed:.0f} s")
    if args.json:
        summary.update(
            model=args.model,
            device=first.device,
            precision=first.precision,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            steps=args.steps,
            warmup=args.warmup,
            load_average=[load_before, load_after],
            seconds=elapsed,
        )
        args.json.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
