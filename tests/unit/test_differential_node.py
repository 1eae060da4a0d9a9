"""No membership oracle: a node answers D and D plus one record alike, whatever it is sent.

The property of issue 24, point 9: for any message a curious or hostile coordinator (or a
launcher it signed for) sends, two nodes whose datasets differ by one record of any awkward
kind give the same observable outcome (reply, refusal code and numbers, or fault), the same
charge, byte-identical non-noised fields and finite noised arrays of the same shapes, with the
node's secret noise fixed for the pair (``tests/differential.py``). Hostile messages cover
every plan field a launcher signs, the global weights (huge, infinite, NaN), the feature
transform after a release (subnormal, huge), label sets and column names, schedules and
replays. Here the short form: the filed unknown-label case, and a person-level pair for one
DP-SGD kind and the release. The other kinds and the long hypothesis search are node tier
(``tests/node/test_differential_node_search.py``); both run in CI.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from differential import NEW_PEOPLE
from differential_jobs import check_person_level_pair, check_plain_round

pytestmark = [
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
]


@pytest.mark.unit
@pytest.mark.parametrize("person_kind", list(NEW_PEOPLE))
@pytest.mark.parametrize("job_kind", ["head", "release"])
def test_a_person_level_node_answers_d_and_d_plus_one_person_alike(
    tmp_path: Path, job_kind: str, person_kind: str
) -> None:
    check_person_level_pair(tmp_path, job_kind, person_kind)


@pytest.mark.unit
@pytest.mark.parametrize("record_kind", ["unknown label"])  # the filed oracle
def test_a_plain_round_answers_d_and_d_plus_one_record_alike(
    tmp_path: Path, record_kind: str
) -> None:
    check_plain_round(tmp_path, record_kind)
