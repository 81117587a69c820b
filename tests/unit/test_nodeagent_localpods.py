"""The pure half of the dev node agent: image mapping, kubelet $(VAR) expansion, downward-API
env, pod paths seen through a local folder, each pod's own loopback address, pod phase and
conditions."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from fogline.devcluster.localpods import (
    PodAddresses,
    PodSpecError,
    PodView,
    bind_to_pod,
    container_env,
    expand,
    image_kind,
    pod_conditions,
    pod_endpoint,
    pod_phase,
    pod_ports,
    probe_port,
    resolve_command,
)
from fogline.devcluster.topology import (
    EDGE_TAINT,
    GPU_RESOURCE,
    GPU_TAINT,
    KWOK_NODE_ANNOTATION,
    SITE_LABEL,
    Topology,
    build_nodes,
    local_nodes,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("image", "kind"),
    [
        ("fogline.dev/trainer:local", "trainer"),
        ("ghcr.io/fogline/trainer:0.1.0", "trainer"),
        ("registry.example:5000/team/fogline-trainer@sha256:" + "a" * 64, "trainer"),
        ("fogline.dev/server:local", "server"),
        ("ghcr.io/fogline/fogline-server", "server"),
        ("ghcr.io/fogline/fogline:0.1.0", "operator"),
        ("nginx:1.27", None),
        ("ghcr.io/trainer-tools/other:1", None),
        ("localhost:5000/trainerx", None),
    ],
)
def test_image_kind_recognises_foglines_images_by_repository(image: str, kind: str | None) -> None:
    assert image_kind(image) == kind


def test_image_kind_honours_the_operators_configured_images() -> None:
    assert image_kind("corp/ml-train:7", {"corp/ml-train:7": "trainer"}) == "trainer"


def test_resolve_command_uses_the_local_interpreter_and_its_scripts(tmp_path: Path) -> None:
    (tmp_path / "fogline").write_text("#!/bin/sh\n")
    python = tmp_path / "python3.11"
    assert resolve_command(["python", "-m", "x"], python, tmp_path) == [str(python), "-m", "x"]
    assert resolve_command(["/usr/bin/python3", "-V"], python, tmp_path)[0] == str(python)
    assert resolve_command(["/usr/local/bin/fogline", "serve"], python, tmp_path) == [
        str(tmp_path / "fogline"),
        "serve",
    ]
    with pytest.raises(PodSpecError, match="'bash' is not in the local Python environment"):
        resolve_command(["bash", "-c", "true"], python, tmp_path)


@pytest.mark.parametrize(
    ("text", "expanded"),
    [
        ("$(A)", "1"),
        ("--rank=$(A)-$(B)", "--rank=1-two"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$", "$"),
        ("cost $5", "cost $5"),
        ("$(A", "$(A"),
        ("end$", "end$"),
        ("$($(A))", "$($(A))"),
    ],
)
def test_expand_follows_kubelet_rules(text: str, expanded: str) -> None:
    assert expand(text, {"A": "1", "B": "two"}) == expanded


POD: dict[str, Any] = {
    "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "x"}},
    "spec": {"nodeName": "local-gpu", "serviceAccountName": "sa"},
}


def test_container_env_resolves_field_refs_and_earlier_variables() -> None:
    container = {
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "WHO", "value": "$(POD_NAME).$(NS) on $(HOST) $(LATER)"},
            {"name": "LATER", "value": "x"},
        ]
    }
    env = container_env(POD, container, {"HOST": "h"})
    assert env["POD_NAME"] == "p" and env["NS"] == "ns" and env["APP"] == "x"
    assert env["WHO"] == "p.ns on h $(LATER)"


def test_env_from_comes_before_env_which_overrides_it() -> None:
    container = {"env": [{"name": "B", "value": "mine"}, {"name": "C", "value": "$(A)"}]}
    env = container_env(POD, container, {}, {"A": "from-secret", "B": "from-secret"})
    assert env == {"A": "from-secret", "B": "mine", "C": "from-secret"}


@pytest.mark.parametrize(
    "container",
    [
        {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
        {"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.unknown"}}}]},
    ],
)
def test_container_env_refuses_what_it_cannot_resolve(container: dict[str, Any]) -> None:
    with pytest.raises(PodSpecError) as caught:
        container_env(POD, container, {})
    assert caught.value.reason == "CreateContainerConfigError"


VIEW = PodView(Path("/r"), ["/mnt/pvc/art", "/tmp", "/dev/termination-log", "/models/"])


@pytest.mark.parametrize(
    ("arg", "rewritten"),
    [
        ("--output=/mnt/pvc/art/x", "--output=/r/mnt/pvc/art/x"),
        ("/mnt/pvc/art", "/r/mnt/pvc/art"),
        ("/mnt/pvc", "/r/mnt/pvc"),  # an ancestor of a mount: FOGLINE_PVC_ROOT
        ("/mnt/pvc/other/x", "/mnt/pvc/other/x"),  # another claim is not mounted
        ("/mnt/pvc/artifacts", "/mnt/pvc/artifacts"),  # a prefix, not a path inside
        ("--termination-log=/dev/termination-log", "--termination-log=/r/dev/termination-log"),
        ("--dest=/models/current", "--dest=/r/models/current"),
        ("file:///tmp/data.npz", "file:///r/tmp/data.npz"),
        ("pvc://art/x", "pvc://art/x"),
        ("/usr/bin/env", "/usr/bin/env"),
        ("/", "/"),
        ("--lr=0.1", "--lr=0.1"),
        ("-v", "-v"),
    ],
)
def test_pod_view_rewrites_only_paths_inside_mounts(arg: str, rewritten: str) -> None:
    assert VIEW.rewrite_arg(arg) == rewritten


IP = "127.9.0.5"
SERVER_POD: dict[str, Any] = {
    "spec": {
        "containers": [
            {
                "name": "server",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"port": "http", "path": "/ready"}},
                "livenessProbe": {"tcpSocket": {"port": 9090}},
            },
            {"name": "side", "ports": [{"containerPort": 8080}, {"containerPort": 7000}]},
        ]
    }
}


def test_pod_ports_lists_declared_and_probed_ports_once() -> None:
    assert pod_ports(SERVER_POD) == [8080, 9090, 7000]


@pytest.mark.parametrize(
    ("argv", "bound"),
    [
        (["srv", "--port", "8080", "--host", "0.0.0.0"], ["srv", "--port", "8080", "--host", IP]),
        (["fogline", "serve", "--host=0.0.0.0"], ["fogline", "serve", f"--host={IP}"]),
        # The server's default is every address: it is told the pod's.
        (["fogline", "serve", "--port=8080"], ["fogline", "serve", "--port=8080", f"--host={IP}"]),
        (
            ["/v/bin/python3", "-m", "fogline.workloads.server"],
            ["/v/bin/python3", "-m", "fogline.workloads.server", f"--host={IP}"],
        ),
        (["fogline", "serve", "--host=127.0.0.1"], ["fogline", "serve", "--host=127.0.0.1"]),
        (["fogline", "fetch", "--dest=/m"], ["fogline", "fetch", "--dest=/m"]),  # no listener
        (["srv", "--name", "0.0.0.0"], ["srv", "--name", "0.0.0.0"]),
    ],
)
def test_bind_to_pod_listens_on_the_pods_address_and_its_container_port(
    argv: list[str], bound: list[str]
) -> None:
    assert bind_to_pod(argv, IP) == bound


def test_probe_port_resolves_named_and_numbered_ports() -> None:
    container = SERVER_POD["spec"]["containers"][0]
    assert probe_port({"port": "http"}, container) == 8080
    assert probe_port({"port": 9090}, container) == 9090
    with pytest.raises(PodSpecError, match="'metrics' is not declared"):
        probe_port({"port": "metrics"}, container)


def test_pod_endpoint_is_the_pods_address_and_container_port() -> None:
    pod = {**SERVER_POD, "metadata": {"name": "p"}, "status": {"podIP": "127.9.0.5"}}
    assert pod_endpoint(pod) == "http://127.9.0.5:8080"
    assert pod_endpoint(pod, 7000) == "http://127.9.0.5:7000"
    with pytest.raises(ValueError, match="no port 'metrics'"):
        pod_endpoint(pod, "metrics")
    with pytest.raises(ValueError, match="no address yet"):
        pod_endpoint({**pod, "status": {}})


def test_pod_addresses_are_distinct_and_stay_with_their_pod() -> None:
    pool = PodAddresses("127.9.0.0/16")
    first, second = pool.allocate("a"), pool.allocate("b")
    assert first == "127.9.0.1" and second == "127.9.0.2"
    assert pool.allocate("a") == first  # asked again: the same
    assert pool.held() == {"a": first, "b": second}


def test_a_released_address_comes_back_only_after_the_rest_of_the_network() -> None:
    pool = PodAddresses("127.9.0.0/29")  # .1 to .6 usable
    handed = [pool.allocate(f"p{i}") for i in range(3)]
    pool.release("p0")
    later = [pool.allocate(f"q{i}") for i in range(3)]
    assert later == ["127.9.0.4", "127.9.0.5", "127.9.0.6"]
    assert pool.allocate("r") == handed[0]  # the network went round: now it comes back
    with pytest.raises(PodSpecError, match="no free address left in the local pod network"):
        pool.allocate("s")


def test_pod_addresses_skip_refused_network_broadcast_and_dot_zero_or_255() -> None:
    pool = PodAddresses("127.9.0.0/23")
    assert pool.allocate("a", refused={"127.9.0.1", "127.9.0.2"}) == "127.9.0.3"
    # Fill the first /24 up to .254: the next is 127.9.1.1, never .255 or .0.
    addresses = {pool.allocate(f"p{i}") for i in range(251)}
    assert "127.9.0.255" not in addresses and pool.allocate("next") == "127.9.1.1"
    assert all(not a.endswith((".0", ".255")) for a in pool.held().values())


def test_a_pod_claims_its_address_again_after_a_restart_when_it_is_free() -> None:
    pool = PodAddresses("127.9.0.0/16")
    assert pool.claim("a", "127.9.3.4") == "127.9.3.4"
    assert pool.claim("b", "127.9.3.4") is None  # held by another pod
    assert pool.claim("c", "127.0.0.1") is None  # outside the network (an older agent)
    assert pool.claim("d", "not-an-address") is None and pool.claim("e", None) is None
    assert pool.allocate("a") == "127.9.3.4"


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ("10.0.0.0/16", "must lie inside 127.0.0.0/8"),
        ("127.0.0.0/16", "must not hold 127.0.0.1"),
        ("127.9.0.0/31", "too small"),
    ],
)
def test_a_pod_network_outside_loopback_or_holding_the_nodes_address_is_refused(
    network: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        PodAddresses(network)


def _status(state: dict[str, Any], ready: bool = False, last: bool = False) -> dict[str, Any]:
    return {
        "name": "c",
        "state": state,
        "ready": ready,
        "lastState": {"terminated": {"exitCode": 1}} if last else {},
    }


WAITING = {"waiting": {"reason": "ContainerCreating"}}
RUNNING = {"running": {"startedAt": "t"}}


def _done(code: int) -> dict[str, Any]:
    return {"terminated": {"exitCode": code}}


@pytest.mark.parametrize(
    ("policy", "inits", "mains", "phase"),
    [
        ("Never", [], [WAITING], "Pending"),
        ("Always", [RUNNING], [WAITING], "Pending"),
        ("Never", [_done(1)], [WAITING], "Failed"),
        ("OnFailure", [_done(1)], [WAITING], "Pending"),
        ("Never", [_done(0)], [RUNNING], "Running"),
        ("Never", [], [_done(0), _done(0)], "Succeeded"),
        ("Never", [], [_done(0), _done(2)], "Failed"),
        ("Never", [], [_done(0), RUNNING], "Running"),
        ("OnFailure", [], [_done(0)], "Succeeded"),
        ("OnFailure", [], [_done(3)], "Running"),
        ("Always", [], [_done(0)], "Running"),
    ],
)
def test_pod_phase_matches_the_kubelets(
    policy: str, inits: list[dict[str, Any]], mains: list[dict[str, Any]], phase: str
) -> None:
    assert pod_phase(policy, [_status(s) for s in inits], [_status(s) for s in mains]) == phase


def test_pod_phase_of_a_crash_looping_container_is_running() -> None:
    looping = _status({"waiting": {"reason": "CrashLoopBackOff"}}, last=True)
    assert pod_phase("Always", [], [looping]) == "Running"


def test_pod_conditions_keep_others_and_move_transition_time_only_on_flips() -> None:
    scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": "t0"}
    first = pod_conditions([scheduled], "Running", [], [_status(RUNNING)], "t1")
    by_type = {c["type"]: c for c in first}
    assert by_type["PodScheduled"] == scheduled
    assert by_type["Ready"]["status"] == "False"
    assert by_type["Ready"]["message"] == "containers with unready status: [c]"
    again = {c["type"]: c for c in pod_conditions(first, "Running", [], [_status(RUNNING)], "t2")}
    assert again["Ready"]["lastTransitionTime"] == "t1"
    ready = pod_conditions(first, "Running", [], [_status(RUNNING, ready=True)], "t3")
    assert {c["type"]: c["lastTransitionTime"] for c in ready}["Ready"] == "t3"
    assert {c["type"]: c["lastTransitionTime"] for c in ready}["Initialized"] == "t1"


def test_local_nodes_look_like_their_kwok_siblings_but_are_not_kwoks() -> None:
    gpu, edge = local_nodes("site-02", gpus=2)
    kwok_gpu = _first_kwok_node("gpu")
    kwok_edge = _first_kwok_node("edge")
    assert gpu["metadata"]["name"] == "local-gpu" and edge["metadata"]["name"] == "local-edge"
    for node, sibling in ((gpu, kwok_gpu), (edge, kwok_edge)):
        assert KWOK_NODE_ANNOTATION not in node["metadata"]["annotations"]
        assert node["spec"] == sibling["spec"]
        ignored = {
            "kubernetes.io/hostname",
            "type",
            "devcluster.fogline.io/local",
            SITE_LABEL,
            "topology.kubernetes.io/zone",
        }
        assert {k: v for k, v in node["metadata"]["labels"].items() if k not in ignored} == {
            k: v for k, v in sibling["metadata"]["labels"].items() if k not in ignored
        }
    assert gpu["spec"]["taints"] == [GPU_TAINT] and edge["spec"]["taints"] == [EDGE_TAINT]
    assert gpu["status"]["capacity"][GPU_RESOURCE] == "2"
    assert edge["metadata"]["labels"][SITE_LABEL] == "site-02"


def _first_kwok_node(kind: str) -> dict[str, Any]:
    nodes = build_nodes(Topology(gpu_nodes=1, edge_sites=1, nodes_per_site=1))
    return next(n for n in nodes if n["metadata"]["name"].startswith(kind))


def test_each_named_site_gets_a_local_edge_node_of_its_own() -> None:
    nodes = local_nodes("site-01", "site-02", "site-03")
    edges = [n for n in nodes if n["metadata"]["name"] != "local-gpu"]
    assert [n["metadata"]["name"] for n in edges] == ["local-edge", "local-edge-2", "local-edge-3"]
    assert [n["metadata"]["labels"][SITE_LABEL] for n in edges] == ["site-01", "site-02", "site-03"]
    hostnames = [n["metadata"]["labels"]["kubernetes.io/hostname"] for n in edges]
    assert hostnames == ["local-edge", "local-edge-2", "local-edge-3"]
    sites = Topology(edge_sites=1, local_edge_sites=3).local_site_names()
    assert sites == ["site-01", "site-02", "site-03"]


def test_a_drawn_pod_network_never_overlaps_kwoks_pods_or_the_nodes_address() -> None:
    from fogline.devcluster.cluster import KWOK_POD_CIDR
    from fogline.devcluster.nodeagent import random_pod_network

    kwok = ipaddress.IPv4Network(KWOK_POD_CIDR)
    for _ in range(300):
        network = ipaddress.IPv4Network(random_pod_network())
        assert not network.overlaps(kwok)
        PodAddresses(str(network))  # inside loopback, without 127.0.0.1
