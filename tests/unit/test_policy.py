"""Jurisdiction policies: example files load, rules refuse, the hash names the exact rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from residency.client.daemon import check_coordinator_allowed, init_node
from residency.client.policy import ca_fingerprint, load_policy
from residency.common.errors import ConfigError
from residency.server.tls import create_tls

pytestmark = pytest.mark.unit

POLICIES = Path(__file__).parents[2] / "docs" / "policies"


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*.toml")), ids=lambda p: p.name)
def test_example_policies_are_valid(path: Path) -> None:
    policy = load_policy(path)
    assert policy.name == path.stem
    assert len(policy.digest()) == 64


def test_digest_changes_with_any_rule(tmp_path: Path) -> None:
    base = load_policy(POLICIES / "eu-health.toml")
    assert base.digest() == load_policy(POLICIES / "eu-health.toml").digest()
    assert base.model_copy(update={"max_delta": 1e-6}).digest() != base.digest()


def test_unknown_policy_key_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('name = "x"\nmax_epsilon = 3.0\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"p\.toml: max_epsilon: unknown key; fix:"):
        load_policy(path)


def test_node_start_refuses_a_coordinator_the_policy_does_not_list(tmp_path: Path) -> None:
    trusted = create_tls(tmp_path / "trusted", names=["127.0.0.1"], common_name="a")
    other = create_tls(tmp_path / "other", names=["127.0.0.1"], common_name="b")
    policy = tmp_path / "policy.toml"
    fingerprint = ca_fingerprint(trusted.ca_cert.read_bytes())
    policy.write_text(
        f'name = "pinned"\nallowed_coordinators = ["{fingerprint}"]\n', encoding="utf-8"
    )
    data = tmp_path / "d.csv"
    data.write_text("text,label\na,b\n", encoding="utf-8")
    node = init_node(
        tmp_path / "n",
        country="DE",
        data=data,
        labels=["b", "c"],
        budget_epsilon=8,
        delta=1e-5,
        policy=policy,
    )
    settings = node.load()
    check_coordinator_allowed(settings, trusted.ca_cert)
    with pytest.raises(ConfigError, match=r"allowed_coordinators: CA .* is not listed; fix:"):
        check_coordinator_allowed(settings, other.ca_cert)
    with pytest.raises(ConfigError, match="plain-text coordinator cannot be identified"):
        check_coordinator_allowed(settings, None)
