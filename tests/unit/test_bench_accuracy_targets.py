"""``bench/accuracy.py``'s verdicts on the issue's targets, from rows with known accuracies.

The end-to-end bench test runs one epsilon on the tiny model (each run is a simulation);
the verdict at every epsilon and the "beats every country alone" line are checked here.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def accuracy() -> ModuleType:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCH))  # the bench imports its sibling ``corpora``
        return importlib.import_module("accuracy")


def _rows(accuracy: ModuleType, federated: dict[float, float]) -> list[object]:
    row = accuracy.Row
    rows = [
        row("class means (no DP)", None, accuracy.NO_DP, 0.80),
        row("linear probe fed. (no DP)", None, accuracy.NO_DP, 0.90),
        row("majority class", None, accuracy.NO_DP, 0.40),
    ]
    for epsilon, value in federated.items():
        rows.append(row("federated", "prototypes+head", epsilon, value))
        rows.append(row("local-only DE", "prototypes+head", epsilon, 0.60))
        rows.append(row("local-only FR", "prototypes+head", epsilon, 0.70))
    return rows


def test_each_epsilon_is_judged_against_its_own_gap(accuracy: ModuleType) -> None:
    rows = _rows(accuracy, {8.0: 0.875, 3.0: 0.81, 1.0: 0.65})

    lines = accuracy.targets(rows, "prototypes+head", [1.0, 3.0, 8.0], examples=500)

    assert "best non-private federated: linear probe fed. (no DP) 0.900" in lines[1]
    assert lines[2] == "  eps=8: 0.875, gap +2.5 points, target <= 3: met"
    assert lines[3] == "  eps=3: 0.810, gap +9.0 points, target <= 8: MISSED"
    assert lines[4] == ("  eps=1: 0.650 above every local-only and the majority (0.700): MISSED")
    beats = [line for line in lines if "beats every country alone" in line]
    assert [line.rsplit(": ", 1)[1] for line in beats] == ["MISSED", "met", "met"]


def test_more_data_tightens_the_gap_at_epsilon_8(accuracy: ModuleType) -> None:
    rows = _rows(accuracy, {8.0: 0.875})

    small = accuracy.targets(rows, "prototypes+head", [8.0], examples=500)
    large = accuracy.targets(rows, "prototypes+head", [8.0], examples=2000)

    assert small[2].endswith("target <= 3: met")
    assert large[2].endswith("target <= 2: MISSED")
