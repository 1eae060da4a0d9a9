"""Each country's privacy spend in a run, as far as the coordinator can vouch for it.

A node charges its budget before it trains, so what a country spent is not what was averaged:
a reply whose update fails validation still came with a valid signed record of a charged
round, and a node that timed out or failed after its charge may have spent up to its plan
with no record to show for it. The tally keeps each country's latest valid signed record,
averaged or not, and counts its rounds three ways, so ``results.json`` shows the difference.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from residency.common.config.job import Job
from residency.common.privacy.record import PrivacyRecord
from residency.server.results import CountryPrivacy


@dataclass
class _Country:
    latest: PrivacyRecord | None = None
    averaged: int = 0
    charged: int = 0
    unconfirmed: int = 0


class SpendTally:
    """What each country's signed records say it spent, and the rounds no record covers."""

    def __init__(self, job: Job, carried: Mapping[str, CountryPrivacy] | None = None) -> None:
        """``carried``: the tally of the run this one resumes, which its counts continue."""
        self._job = job
        self._countries: dict[str, _Country] = {}
        self._carried = dict(carried or {})

    def _of(self, country: str) -> _Country:
        return self._countries.setdefault(country, _Country())

    def charged(self, record: PrivacyRecord, *, averaged: bool) -> None:
        """A valid signed record arrived (checked by ``received_record``), averaged or not."""
        tally = self._of(record.country)
        tally.latest = record
        tally.charged += 1
        tally.averaged += int(averaged)

    def unconfirmed(self, country: str) -> None:
        """``country`` was sent a round and did not refuse it, but no valid record came back."""
        self._of(country).unconfirmed += 1

    def summary(self) -> dict[str, CountryPrivacy]:
        """The ``privacy`` object of ``results.json``, by country."""
        countries = sorted({*self._countries, *self._carried})
        return {country: self._continued(country) for country in countries}

    def _continued(self, country: str) -> CountryPrivacy:
        """This run's figures for ``country`` (the resumed run's, until a record arrives)."""
        tally = self._countries.get(country, _Country())
        before = self._carried.get(country)
        if before is None:
            return self._privacy(tally)
        mine = before if tally.latest is None else self._privacy(tally)
        return mine.model_copy(
            update={
                "rounds_averaged": before.rounds_averaged + tally.averaged,
                "rounds_charged": before.rounds_charged + tally.charged,
                "rounds_unconfirmed": before.rounds_unconfirmed + tally.unconfirmed,
            }
        )

    def _privacy(self, tally: _Country) -> CountryPrivacy:
        privacy = self._job.privacy
        record = tally.latest
        return CountryPrivacy(
            epsilon=None if record is None else record.epsilon,
            delta=privacy.delta if record is None else record.delta,
            target_epsilon=privacy.target_epsilon,
            accountant=(record.accountant if record else privacy.accountant).value,
            noise_multiplier=None if record is None else record.noise_multiplier,
            sample_rate=None if record is None else record.sample_rate,
            steps=None if record is None else sum(n for _, _, n in record.run_history),
            rounds_averaged=tally.averaged,
            rounds_charged=tally.charged,
            rounds_unconfirmed=tally.unconfirmed,
            dataset_account=None if record is None else record.dataset,
            epsilon_dataset=None if record is None else record.epsilon_dataset,
            budget_epsilon=None if record is None else record.budget_epsilon,
            privacy_unit="record" if record is None else record.privacy_unit.value,
            records_per_person=None if record is None else record.records_per_person,
        )
