"""A round's randomness is the node's secret: OS entropy, unless its operator seeds it.

Whole rounds that show it in what nodes send are in ``tests/node/test_node_randomness.py``.
"""

from __future__ import annotations

import pytest

from residency.client import randomness
from residency.common.privacy.record import NoiseSource


@pytest.mark.unit
def test_round_randomness_comes_from_os_entropy_unless_the_operator_seeds_it() -> None:
    secret = [randomness.round_randomness(None, server_round=1) for _ in range(2)]
    assert secret[0].source is NoiseSource.OS_ENTROPY
    assert secret[0].noise_seed != secret[1].noise_seed
    assert "seed" not in repr(secret[0]).replace("noise_seed", "").replace("_seed", "")
    seeded = randomness.round_randomness(3, server_round=1)
    assert seeded == randomness.round_randomness(3, server_round=1)
    assert seeded != randomness.round_randomness(3, server_round=2)
    assert len({seeded.sampling_seed, seeded.noise_seed, seeded.dropout_seed}) == 3
