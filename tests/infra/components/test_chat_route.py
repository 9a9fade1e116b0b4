"""The canary's share is the share served (issue 21 item 1): behind the stack's Gateway an HTTPRoute splits requests by
weight at every replica count; behind the chat Service, whose share is a count of ready pods, preview refuses a weight
that count cannot give within 2 points and names what it can give. Shares are read off the synthesized objects."""

from __future__ import annotations

import re
import textwrap
from typing import Any

import kubernetes_validate
import pytest
import yaml

from infra.contract import CHAT_LABELS
from infra.settings import ConfigError, parse_settings
from infra.settings.checks import CANARY_SHARE_TOLERANCE
from infra.tools.synth import SynthError, Synthesis, read_stack_config, synthesize
from tests.docs.pages import page
from tests.infra.conftest import BEHIND_GATEWAY, NEXT_IMAGE
from tests.infra.crd_validation import validate
from tests.infra.test_stacks import NEWEST, OLDEST

PROD = read_stack_config("prod")


def served_shares(s: Synthesis) -> dict[int, float]:
    """The canary's share of requests at each stable count the HPA may hold, as the synthesized objects give it:
    the HTTPRoute's weights when one routes to the tracks, else the canary's pods over all ready chat pods."""
    hpa = s.one("HorizontalPodAutoscaler").manifest["spec"] if s.find("HorizontalPodAutoscaler") else None
    stable = s.one("Deployment", "clawbot").manifest["spec"]
    low, high = (hpa["minReplicas"], hpa["maxReplicas"]) if hpa else (stable["replicas"], stable["replicas"])
    canary_pods = s.one("Deployment", "clawbot-canary").manifest["spec"]["replicas"]
    routes = s.find("HTTPRoute")
    if routes:
        (rule,) = routes[0].manifest["spec"]["rules"]
        weights = {ref["name"]: ref["weight"] for ref in rule["backendRefs"]}
        share = 100 * weights["clawbot-canary"] / sum(weights.values())
        return {n: share for n in range(low, high + 1)}
    return {n: 100 * canary_pods / (canary_pods + n) for n in range(low, high + 1)}


def canary(stack: str = "prod", weight: int = 10, **overrides: Any) -> Synthesis:
    return synthesize(stack, overrides={**overrides, "canary": {"image": NEXT_IMAGE, "weight": weight}})


@pytest.mark.parametrize("weight", [1, 10, 25, 50])
def test_behind_the_gateway_the_share_served_is_the_weight_at_every_replica_count(weight: int) -> None:
    s = canary(weight=weight, **BEHIND_GATEWAY, gpuLimit=40)
    shares = served_shares(s)
    assert set(shares) == set(range(PROD["minReplicas"], PROD["maxReplicas"] + 1))
    assert all(abs(share - weight) <= CANARY_SHARE_TOLERANCE for share in shares.values()), shares
    assert s.outputs["canary"]["shareOfRequestsPercent"] == {"atMinReplicas": weight, "atMaxReplicas": weight}


def test_the_route_sends_each_track_to_its_own_pods_through_the_gateway(prod_gateway: Synthesis) -> None:
    route = prod_gateway.one("HTTPRoute").manifest
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1" and route["metadata"]["namespace"] == "clawbot"
    assert route["spec"]["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "namespace": "gateway-system",
            "name": "clawbot",
            "sectionName": "https",
        }
    ]
    assert route["spec"]["hostnames"] == ["chat.example.com"]
    (rule,) = route["spec"]["rules"]
    assert [(r["name"], r["port"], r["weight"]) for r in rule["backendRefs"]] == [
        ("clawbot-stable", 18789, 90),
        ("clawbot-canary", 18789, 10),
    ]
    for track in ("stable", "canary"):
        service = prod_gateway.one("Service", f"clawbot-{track}").manifest["spec"]
        assert service["type"] == "ClusterIP" and service["selector"] == {**CHAT_LABELS, "track": track}
        pods = prod_gateway.one("Deployment", "clawbot" if track == "stable" else "clawbot-canary").manifest
        assert service["selector"].items() <= pods["spec"]["template"]["metadata"]["labels"].items()
    # The chat Service is ClusterIP: the Gateway's own load balancer is the one way in.
    assert prod_gateway.one("Service", "clawbot").manifest["spec"]["type"] == "ClusterIP"
    assert prod_gateway.outputs["endpointUrl"] == "https://chat.example.com"
    for obj in prod_gateway.objects:
        if obj.kind in ("Service", "NetworkPolicy"):
            for version in (OLDEST, NEWEST):
                kubernetes_validate.validate(obj.manifest, version, strict=True)


def test_the_route_gives_the_canary_a_share_only_once_its_pods_are_ready(prod_gateway: Synthesis) -> None:
    """Pulumi updates the route after the canary Deployment's rollout: no request meets a canary with no endpoint.
    Stopping the canary updates the route first; deletions come last in an update."""
    route = prod_gateway.one("HTTPRoute")
    assert {"chat-canary-deployment", "route-canary", "route-stable"} <= route.depends_on
    without = synthesize("prod", overrides=BEHIND_GATEWAY)
    (rule,) = without.one("HTTPRoute").manifest["spec"]["rules"]
    assert rule["backendRefs"] == [
        {"group": "", "kind": "Service", "name": "clawbot-stable", "port": 18789, "weight": 100}
    ]
    assert without.find("Service", "clawbot-canary") == [] and without.outputs["canary"] is None


def test_the_gateway_data_plane_is_admitted_to_the_api_port(prod_gateway: Synthesis) -> None:
    policy = prod_gateway.one("NetworkPolicy", "clawbot-gateway-ingress").manifest["spec"]
    assert policy["podSelector"] == {"matchLabels": dict(CHAT_LABELS)} and policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 18789}]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "envoy-gateway-system"}}}
    ]
    alb = synthesize(
        "prod", overrides={**BEHIND_GATEWAY, "gatewayProxyNamespace": "", "gatewaySourceCidrs": ["10.0.0.0/24"]}
    )
    (rule,) = alb.one("NetworkPolicy", "clawbot-gateway-ingress").manifest["spec"]["ingress"]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway-system"}}},
        {"ipBlock": {"cidr": "10.0.0.0/24"}},
    ]


def test_behind_the_service_preview_refuses_a_weight_it_cannot_serve_and_names_what_it_can() -> None:
    # prod's HPA moves the stable set between 2 and 10 pods: one canary pod is 33% at the floor, 9% at the top.
    with pytest.raises(SynthError) as err:
        canary()
    message = str(err.value)
    assert "clawbot:canary.weight 10% is not a share the chat Service can serve" in message
    assert "1 canary pod serves 33.3% beside 2 stable pods and 9.1% beside 10" in message
    assert "clawbot:gateway" in message
    # A fixed stable count: the shares it can give, nearest the weight asked for.
    with pytest.raises(SynthError, match=r"beside 4 stable pods it can give 20% or 33.3%"):
        canary(weight=25, minReplicas=4, maxReplicas=4)
    with pytest.raises(SynthError, match=r"beside 1 stable pod it can give 50% \(set clawbot:canary.weight to that\)"):
        canary("dev", weight=10)


@pytest.mark.parametrize(
    "stack, weight, overrides",
    [
        ("prod", 10, {"minReplicas": 9}),  # 1 of 10 pods, 1 of 11: 10% and 9.1%
        ("prod", 20, {"minReplicas": 4, "maxReplicas": 4}),  # 1 of 5
        ("dev", 50, {}),  # 1 of 2
    ],
)
def test_behind_the_service_a_weight_it_can_serve_is_served_at_every_replica_count(
    stack: str, weight: int, overrides: dict[str, Any]
) -> None:
    s = canary(stack, weight, **overrides)
    assert s.find("HTTPRoute") == [] and s.outputs["canary"]["splitBy"] == "ready pods"
    shares = served_shares(s)
    assert all(abs(share - weight) <= CANARY_SHARE_TOLERANCE for share in shares.values()), shares


def test_no_accepted_weight_is_ever_served_more_than_two_points_off() -> None:
    """Every weight and stable range the settings accept is served within the tolerance; the rest are refused."""
    accepted = 0
    for low, high in ((1, 1), (2, 2), (2, 10), (4, 4), (9, 10), (9, 12), (19, 20)):
        for weight in range(1, 51):
            values = {
                **PROD,
                "minReplicas": low,
                "maxReplicas": high,
                "gpuLimit": 100,
                "canary": {"image": NEXT_IMAGE, "weight": weight},
            }
            try:
                c = parse_settings(values, stack="prod").release.canary
            except ConfigError as exc:
                assert "is not a share the chat Service can serve" in str(exc)
                continue
            accepted += 1
            assert c is not None
            assert all(
                abs(100 * c.replicas / (c.replicas + n) - weight) <= CANARY_SHARE_TOLERANCE
                for n in range(low, high + 1)
            ), (low, high, weight)
    assert accepted > 10


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"gateway": "clawbot"}, "clawbot:gateway must be NAMESPACE/NAME of a Gateway"),
        ({"gateway": "gw/Public"}, "clawbot:gateway must be NAMESPACE/NAME of a Gateway"),
        ({"gatewayListener": "HTTPS"}, "clawbot:gatewayListener must be a listener name"),
        ({"gateway": "", "gatewayListener": "https"}, "only apply with clawbot:gateway"),
    ],
)
def test_gateway_settings_are_checked(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings({**PROD, **BEHIND_GATEWAY, **changes}, stack="prod")


def test_the_walks_gateway_validates_and_the_route_attaches_to_its_https_listener(prod_gateway: Synthesis) -> None:
    """docs/deploying/eks-first-week.md step 2: the GatewayClass, LoadBalancerConfiguration and Gateway it applies, held
    to the upstream CRDs (Gateway API v1.4.1, AWS Load Balancer Controller v3.5.0), and the route the program makes
    for that Gateway finds the listener it names."""
    heredoc = re.search(
        r"kubectl apply -f - <<YAML\n(.*?kind: Gateway\n.*?)\n\s*YAML\n", page("deploying/eks-first-week.md"), re.S
    )
    assert heredoc, "the walk applies no Gateway"
    text = (
        textwrap.dedent(heredoc.group(1))
        .replace("$ARN", PROD["tlsCertificateArn"])
        .replace("$HOST", PROD["endpointHostname"])
    )
    objects = [o for o in yaml.safe_load_all(text) if o]
    assert {o["kind"] for o in objects} == {"GatewayClass", "LoadBalancerConfiguration", "Gateway"}
    for obj in objects:
        report = validate(obj)
        assert report.errors == [], report.errors
    gateway = next(o for o in objects if o["kind"] == "Gateway")
    (parent,) = prod_gateway.one("HTTPRoute").manifest["spec"]["parentRefs"]
    assert (parent["namespace"], parent["name"]) == (gateway["metadata"]["namespace"], gateway["metadata"]["name"])
    listener = next(li for li in gateway["spec"]["listeners"] if li["name"] == parent["sectionName"])
    assert listener["protocol"] == "HTTPS" and listener["allowedRoutes"]["namespaces"]["from"] == "All"
    assert prod_gateway.one("HTTPRoute").manifest["spec"]["hostnames"] == [listener["hostname"]]
