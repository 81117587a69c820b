"""The edge servers' optional NetworkPolicy: which pods it selects, what it admits, its name,
and the operator setting that turns it on."""

from __future__ import annotations

from typing import Any

import pytest

from fogline.api.edgedeployment import EdgeDeployment
from fogline.edge.daemonsets import EDGE_LABEL, ModelRef, build_site_daemonset
from fogline.edge.networkpolicy import build_edge_network_policy, network_policy_name
from fogline.settings import OperatorSettings, SettingsError

pytestmark = pytest.mark.unit

DIGEST = "sha256:" + "a" * 64


def edge(name: str = "shop", **runtime: Any) -> EdgeDeployment:
    spec = {"model": {"uri": "s3://bucket/m/1", "digest": DIGEST}, "runtime": runtime}
    return EdgeDeployment.from_body({"metadata": {"name": name, "namespace": "edge"}, "spec": spec})


def test_policy_admits_only_the_inference_port_from_the_cidrs() -> None:
    policy = build_edge_network_policy(edge(port=9000), ["10.20.0.0/16", "192.0.2.7/32"])
    assert policy["metadata"]["namespace"] == "edge"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [
        {
            "from": [{"ipBlock": {"cidr": "10.20.0.0/16"}}, {"ipBlock": {"cidr": "192.0.2.7/32"}}],
            "ports": [{"protocol": "TCP", "port": 9000}],
        }
    ]


def test_no_cidrs_admit_nobody() -> None:
    assert build_edge_network_policy(edge(), [])["spec"]["ingress"] == []


def test_policy_selects_the_pods_of_every_site_of_its_edgedeployment_only() -> None:
    e = edge()
    selector = build_edge_network_policy(e, ["10.0.0.0/8"])["spec"]["podSelector"]["matchLabels"]
    for site in ("berlin", "hamburg"):
        ds = build_site_daemonset(e, site, ModelRef("s3://bucket/m/1", DIGEST), OperatorSettings())
        labels = ds["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
    other = build_site_daemonset(
        edge("shop-2"), "berlin", ModelRef("s3://bucket/m/1", DIGEST), OperatorSettings()
    )
    assert selector[EDGE_LABEL] != other["spec"]["template"]["metadata"]["labels"][EDGE_LABEL]


def test_policy_carries_the_labels_the_operator_watches_it_by() -> None:
    labels = build_edge_network_policy(edge(), [])["metadata"]["labels"]
    assert labels == {
        "app.kubernetes.io/managed-by": "fogline",
        "app.kubernetes.io/component": "edge-server",
        EDGE_LABEL: "shop",
    }


def test_policy_name_is_distinct_and_bounded() -> None:
    assert network_policy_name("shop") == "shop-ingress"
    long_a, long_b = "a" * 250, "a" * 249 + "b"
    assert len(network_policy_name(long_a)) <= 253
    assert network_policy_name(long_a) != network_policy_name(long_b)
    assert network_policy_name(long_a).endswith("-ingress")


@pytest.mark.parametrize(
    ("value", "want"),
    [
        pytest.param(None, None, id="unset-no-policy"),
        pytest.param("null", None, id="null-no-policy"),
        pytest.param("[]", (), id="empty-admits-nobody"),
        pytest.param(
            '["10.20.0.0/16", "2001:db8::/32"]', ("10.20.0.0/16", "2001:db8::/32"), id="v4-and-v6"
        ),
    ],
)
def test_setting_turns_the_policy_on_with_a_list(value: str | None, want: Any) -> None:
    env = {} if value is None else {"FOGLINE_EDGE_INGRESS_CIDRS": value}
    assert OperatorSettings.from_env(env).edge_ingress_cidrs == want


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        pytest.param('["10.20.0.1/16"]', "host bits", id="host-bits-set"),
        pytest.param('["everywhere"]', "not a CIDR", id="not-an-address"),
        pytest.param('"10.0.0.0/8"', "list", id="not-a-list"),
    ],
)
def test_bad_cidrs_are_refused_at_start_naming_the_setting(value: str, hint: str) -> None:
    with pytest.raises(SettingsError, match="FOGLINE_EDGE_INGRESS_CIDRS") as err:
        OperatorSettings.from_env({"FOGLINE_EDGE_INGRESS_CIDRS": value})
    assert hint in str(err.value)


def test_cache_mode_setting_is_pod_by_default_and_refuses_anything_else() -> None:
    assert OperatorSettings.from_env({}).edge_cache_mode == "Pod"
    assert OperatorSettings.from_env({"FOGLINE_EDGE_CACHE_MODE": "Node"}).edge_cache_mode == "Node"
    with pytest.raises(SettingsError, match=r"FOGLINE_EDGE_CACHE_MODE.*privileged"):
        OperatorSettings.from_env({"FOGLINE_EDGE_CACHE_MODE": "node"})
