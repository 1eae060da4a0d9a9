"""The node's privacy accounting state, kept in Flower's per-node ``context.state``.

One accountant history per dataset fingerprint, composed over every round the node trains on
that dataset, and the noise multiplier fixed for each (job, dataset) at its first round.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context
from pydantic import BaseModel, ConfigDict

from residency.common.privacy.accountant import History

STATE_KEY = "residency.privacy"


class PrivacyState(BaseModel):
    """Serialisable accounting state; replaced whole, never edited in place."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    histories: dict[str, History] = {}
    noise: dict[str, float] = {}

    def history(self, dataset: str) -> History:
        """Everything spent on ``dataset`` so far."""
        return self.histories.get(dataset, ())

    def with_history(self, dataset: str, history: History) -> PrivacyState:
        """A copy that records ``history`` for ``dataset``."""
        return self.model_copy(update={"histories": {**self.histories, dataset: history}})

    def with_noise(self, key: str, noise: float) -> PrivacyState:
        """A copy that fixes the noise multiplier for a (job, dataset) key."""
        return self.model_copy(update={"noise": {**self.noise, key: noise}})


def load_state(context: Context) -> PrivacyState:
    """Read the state from the node context (empty on a node's first round)."""
    record = context.state.config_records.get(STATE_KEY)
    if record is None:
        return PrivacyState()
    return PrivacyState.model_validate_json(str(record["json"]))


def save_state(context: Context, state: PrivacyState) -> None:
    """Store the state in the node context for the next round."""
    context.state.config_records[STATE_KEY] = ConfigRecord({"json": state.model_dump_json()})
