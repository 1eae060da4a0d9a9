"""``flower-supernode`` that ends with ``residency node start``, even when that is SIGKILLed.

Flower's SuperNode retries an unreachable coordinator for ever; orphaned by a killed
supervisor it would go on dialling out (and training, if its coordinator came back) with
nobody to stop it. Run as ``python -m residency.client.supernode --residency-parent-pid PID
<flower-supernode arguments>``, it watches its supervisor and stops the way SIGINT stops it.
"""

from __future__ import annotations

import sys

from residency.common.parent_watch import interrupt_then_exit, take_parent_flag, when_orphaned

STOP_GRACE_S = 10.0


def main() -> None:
    """Watch the supervisor named by the flag, then run Flower's SuperNode with the rest."""
    from flwr.supernode.cli import flower_supernode

    args = sys.argv[1:]
    parent = take_parent_flag(args)
    if parent is not None:
        when_orphaned(parent, interrupt_then_exit(STOP_GRACE_S))
    sys.argv[:] = ["flower-supernode", *args]
    flower_supernode()


if __name__ == "__main__":
    main()
