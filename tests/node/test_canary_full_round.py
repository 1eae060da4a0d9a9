"""The one-run canary audit of a whole node round: 25,000 canaries, tens of seconds.

The audit's rules on small rounds are checked in ``tests/unit/test_canary.py``.
"""

from __future__ import annotations

import pytest

from residency.auditor.canary import audit_canaries
from residency.auditor.canary_settings import CanarySettings, Mechanism


@pytest.mark.node
@pytest.mark.slow
def test_node_like_config_claiming_epsilon_8_with_noise_off_is_flagged() -> None:
    """A realistic round (q = 1/25, 2,250 steps) with no noise, claiming epsilon 8 at 1e-5.

    At delta 1e-5 the delta term caps what any number of canaries can show near 8.2
    (docs/audit-canary.md); 25,000 canaries, all guesses right on 95% of them, reach 8.19.
    About 20-30 s on two cores (more when they are shared).
    """
    node = Mechanism(noise_multiplier=0.0, sample_rate=0.04, steps=2250)
    audit = audit_canaries(node, CanarySettings(canaries=25_000, claimed_epsilon=8.0))
    assert audit.flagged
    assert audit.correct == audit.guesses
    assert 8.0 < audit.epsilon_lower_bound <= audit.epsilon_ceiling
    # The same configuration with the noise it claims (1.5: epsilon 6.8) is not.
    honest = audit_canaries(
        node.model_copy(update={"noise_multiplier": 1.5}),
        CanarySettings(canaries=5000, seed=1),
    )
    assert not honest.flagged
    assert honest.epsilon_lower_bound < honest.claimed_epsilon
