"""Flower's SuperLink, started with a longer SQLite lock timeout so large updates survive.

With ``--database`` the SuperLink keeps message chunks in SQLite and deletes a delivered
message's whole chunk tree in one write transaction: 2.5 s for a 438 MB (BERT-base) update on
an idle 2-core machine, 4-13 s under load. Flower 1.42 waits at most 5 s for the write lock
(``busy_timeout``) and answers HTTP 500 on ``database is locked``, which its clients do not
retry: the ServerApp and the launcher's log stream died in 3 of 6 runs of
``tests/integration/test_large_update.py``. 25 s stays below Flower's 30 s HTTP client
timeout, so a waiting request gets its answer rather than a client-side retry (a retried
pull would lose replies already marked delivered).
"""

from __future__ import annotations

import sys

SQLITE_BUSY_TIMEOUT_MS = 25_000


def raise_lock_timeout() -> None:
    """Make every SQLite connection Flower opens from now on wait ``SQLITE_BUSY_TIMEOUT_MS``."""
    from flwr.supercore import sql_mixin

    # _set_sqlite_pragmas reads this module attribute on every new connection (Flower 1.42.0,
    # pinned); patched before the SuperLink opens its first one.
    module = vars(sql_mixin)
    module["SQLITE_PRAGMAS"] = tuple(
        (name, str(SQLITE_BUSY_TIMEOUT_MS) if name == "busy_timeout" else value)
        for name, value in module["SQLITE_PRAGMAS"]
    )


def run_superlink() -> None:
    """``flower-superlink`` with ``busy_timeout`` raised; every argument passes through."""
    from flwr.superlink.cli import flower_superlink

    raise_lock_timeout()
    sys.argv[0] = "flower-superlink"
    flower_superlink()


if __name__ == "__main__":
    run_superlink()
