"""Epsilon from Google's ``dp-accounting``: an implementation independent of Opacus.

Used to check Opacus' numbers on the same recorded parameters (Poisson-subsampled Gaussian
mechanism, self-composed ``steps`` times per history entry).
"""

from __future__ import annotations

from collections.abc import Iterable

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from residency.common.config.job import AccountantKind
from residency.common.privacy.accountant import PrivacyStep


def dp_event(history: Iterable[PrivacyStep]) -> dp_accounting.DpEvent:
    """The DP-SGD history as one composed ``DpEvent``."""
    return dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), n
            )
            for z, q, n in history
        ]
    )


def epsilon_dp_accounting(
    history: Iterable[PrivacyStep], *, delta: float, kind: AccountantKind
) -> float:
    """Epsilon by dp-accounting: RDP for ``rdp``, privacy-loss distributions for ``prv``."""
    steps = tuple(history)
    if not steps:
        return 0.0
    accountant: dp_accounting.PrivacyAccountant
    if kind is AccountantKind.RDP:
        accountant = rdp_privacy_accountant.RdpAccountant()
    else:
        accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    accountant.compose(dp_event(steps))
    return float(accountant.get_epsilon(delta))


AGREEMENT_RTOL: dict[AccountantKind, float] = {AccountantKind.RDP: 0.01, AccountantKind.PRV: 0.03}
"""How far dp-accounting may differ from Opacus on the same history (relative).

Both RDP implementations bound the same Renyi curve on slightly different order grids and
agree within 1%; Opacus' PRV and dp-accounting's PLD are different numerical approximations of
the same tight curve and agree within a few percent (measured in tests/unit/test_accountant.py).
"""
