"""An update kind's code: its traits (:mod:`.traits`) and what makes a classifier train them.

Each kind is one module of this package (PEFT keeps one folder per method for the same
reason): adding a kind is its traits, one new module and one line in the registry
(:mod:`.registry`), not an ``if`` in the model builder, the trainer and the job's rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from residency.common.updates.traits import UpdateTraits

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from residency.common.model import ModelSpec


@dataclass(frozen=True)
class UpdateMethod:
    """One update kind, whole: its traits, and the code that trains them.

    ``prepare`` makes the base classifier train (and so send) exactly this kind's tensors.
    """

    traits: UpdateTraits
    prepare: Callable[[PreTrainedModel, ModelSpec], torch.nn.Module]
