"""Where training runs: CUDA with bf16 autocast when present, otherwise the CPU."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Compute:
    """A device plus whether bf16 autocast is safe on it."""

    device: torch.device
    bf16: bool

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Run the forward pass in bf16 on GPUs that support it; a no-op elsewhere."""
        if self.bf16:
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
                yield
        else:
            yield


def pick_compute() -> Compute:
    """Choose the accelerator; ``RESIDENCY_DEVICE=cpu`` forces the CPU (e.g. to share a GPU)."""
    wanted = os.environ.get("RESIDENCY_DEVICE", "auto").lower()
    if wanted != "cpu" and torch.cuda.is_available():
        return Compute(torch.device("cuda"), bf16=torch.cuda.is_bf16_supported())
    if wanted == "cuda":
        raise RuntimeError("RESIDENCY_DEVICE=cuda but no CUDA device is available")
    return Compute(torch.device("cpu"), bf16=False)
