"""The firewall, proved over the synthesized NetworkPolicies with an evaluator of their semantics: TCP 18789 admits the
clients and the NLB's subnets and nothing else in the VPC, /metrics admits Prometheus' namespace, the chat pods reach
only DNS, Redis, the database and the services named for them, and only the model download Job reaches the hub."""

from __future__ import annotations

from typing import Any

import pytest

from infra.components.firewall import EgressTarget, ServiceFirewallArgs, chat_egress_rules
from infra.contract import CHAT_LABELS, MODEL_DOWNLOAD_LABELS
from infra.settings import ConfigError, parse_settings
from infra.tools.synth import Synthesis, read_stack_config, synthesize
from tests.infra.network_policy import Address, Cluster, Pod

NAMESPACE = "clawbot"
# Addresses of the prod stack's example VPC, 10.0.0.0/16: the NLB's subnets are 10.0.0.0/24..10.0.2.0/24, the
# database's 10.0.64.0/20; the pods (VPC CNI) live in the node subnets, elsewhere in the VPC.
NLB_HEALTH_CHECK = Address("10.0.1.17")
OFFICE_CLIENT = Address("192.168.1.20")
VPN_CLIENT = Address("10.8.3.4")
DATABASE = Address("10.0.64.15")
METADATA = Address("169.254.169.254")
HUB = Address("18.239.50.16")  # a public address, as the hub's CDN has
VPC_HOST = Address("10.0.100.7")
KMS_ENDPOINT = Address("10.0.96.20")  # an ENI of the kms VPC endpoint, in Pulumi.prod.yaml's kmsEgressCidrs
POD_IDENTITY_AGENT = Address("169.254.170.23")
KUBE_DNS = Pod("kube-system", {"k8s-app": "kube-dns"}, "10.0.130.2")
PROMETHEUS = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"}, "10.0.120.5")
OTHER_NAMESPACE_POD = Pod("default", {"app": "curl"}, "10.0.100.7")
IMPOSTOR = Pod("default", dict(CHAT_LABELS), "10.0.100.9")  # another namespace's pod wearing the chat labels
NEIGHBOUR = Pod(NAMESPACE, {"app": "debug"}, "10.0.101.8")  # an unlabelled pod in the app's own namespace


def policies(s: Synthesis) -> dict[str, dict]:
    return {o.name: o.manifest["spec"] for o in s.find("NetworkPolicy")}


def cluster(s: Synthesis) -> Cluster:
    return Cluster([o.manifest for o in s.find("NetworkPolicy")])


def _pod(template: dict[str, Any], namespace: str, ip: str) -> Pod:
    ports = {
        p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", []) if "name" in p
    }
    return Pod(namespace, template["metadata"]["labels"], ip, ports)


def chat_pod(s: Synthesis, name: str = "clawbot") -> Pod:
    deployment = s.one("Deployment", name)
    return _pod(deployment.manifest["spec"]["template"], deployment.namespace or "", "10.0.110.10")


def download_pod(s: Synthesis) -> Pod:
    job = s.one("Job")
    assert job.name.startswith("clawbot-model-")
    return _pod(job.manifest["spec"]["template"], job.namespace or "", "10.0.110.20")


def redis_pod(s: Synthesis) -> Pod:
    return _pod(s.one("Deployment", "clawbot-redis").manifest["spec"]["template"], NAMESPACE, "10.0.110.30")


def test_default_deny_covers_every_pod_in_both_directions(prod: Synthesis) -> None:
    deny = policies(prod)["clawbot-default-deny"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    assert not cluster(prod).connects(OTHER_NAMESPACE_POD, NEIGHBOUR, 8080)


def test_18789_admits_the_clients_and_the_nlb_subnets_and_no_other_address_of_the_vpc(prod: Synthesis) -> None:
    c, chat = cluster(prod), chat_pod(prod)
    assert c.connects(OFFICE_CLIENT, chat, 18789) and c.connects(VPN_CLIENT, chat, 18789)
    assert c.connects(NLB_HEALTH_CHECK, chat, 18789)  # its health checks to /readyz
    # A pod of another namespace at an address inside the VPC, with or without the chat labels: not admitted.
    for intruder in (OTHER_NAMESPACE_POD, IMPOSTOR, VPC_HOST, NEIGHBOUR, KUBE_DNS):
        assert not c.connects(intruder, chat, 18789), intruder
    # The canary pods are the same service behind the same policy (9..10 stable pods: one canary pod serves ~10%).
    canary = synthesize(
        "prod", overrides={"minReplicas": 9, "canary": {"image": "ghcr.io/clawbot/clawbot:0.2.0", "weight": 10}}
    )
    assert not cluster(canary).connects(OTHER_NAMESPACE_POD, chat_pod(canary, "clawbot-canary"), 18789)
    assert cluster(canary).connects(NLB_HEALTH_CHECK, chat_pod(canary, "clawbot-canary"), 18789)


def test_metrics_admit_prometheus_namespace_alone_which_the_program_writes(prod: Synthesis) -> None:
    c, chat = cluster(prod), chat_pod(prod)
    assert c.connects(PROMETHEUS, chat, 9464)
    for other in (OFFICE_CLIENT, NLB_HEALTH_CHECK, OTHER_NAMESPACE_POD, NEIGHBOUR):
        assert not c.connects(other, chat, 9464), other
    assert not c.connects(PROMETHEUS, chat, 18789)
    metrics_rules = [r for r in policies(prod)["clawbot-chat-ingress"]["ingress"] if r["ports"][0]["port"] == 9464]
    assert metrics_rules == [
        {
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "ports": [{"protocol": "TCP", "port": 9464}],
        }
    ]


def test_load_balancer_source_ranges_are_the_same_cidrs(prod: Synthesis) -> None:
    svc = prod.one("Service", "clawbot").manifest["spec"]
    assert svc["type"] == "LoadBalancer"
    assert svc["loadBalancerSourceRanges"] == ["192.168.1.0/24", "10.8.0.0/16"]
    assert svc["ports"] == [{"name": "http", "port": 18789, "targetPort": "http", "protocol": "TCP"}]
    assert svc["externalTrafficPolicy"] == "Local"
    config = prod.one("ConfigMap", "clawbot-config").manifest["data"]
    assert config["ALLOWED_CIDRS"] == "192.168.1.0/24,10.8.0.0/16"


def test_chat_pods_reach_dns_redis_and_the_database_and_nothing_outside_the_cluster(prod: Synthesis) -> None:
    c, chat = cluster(prod), chat_pod(prod)
    assert c.connects(chat, KUBE_DNS, 53, "UDP") and c.connects(chat, KUBE_DNS, 53, "TCP")
    assert c.connects(chat, redis_pod(prod), 6379)
    assert c.connects(chat, DATABASE, 5432)
    for destination, port in (
        (HUB, 443),
        (HUB, 80),
        (METADATA, 80),
        (VPC_HOST, 443),
        (DATABASE, 443),
        (OFFICE_CLIENT, 443),
    ):
        assert not c.connects(chat, destination, port), (destination, port)
    assert not c.connects(chat, download_pod(prod), 443)


def test_in_kms_mode_chat_pods_reach_the_kms_endpoint_on_443_and_nothing_else_there(prod: Synthesis) -> None:
    """Pulumi.prod.yaml's kmsEgressCidrs (the KMS and STS VPC endpoints): the key file's data key is unwrapped there."""
    c, chat = cluster(prod), chat_pod(prod)
    assert c.connects(chat, KMS_ENDPOINT, 443)
    assert not c.connects(chat, KMS_ENDPOINT, 80) and not c.connects(chat, Address("10.0.97.5"), 443)
    assert not c.connects(chat, POD_IDENTITY_AGENT, 80)  # IRSA (kmsRoleArn): no node agent to ask
    assert not c.connects(download_pod(prod), KMS_ENDPOINT, 443)  # the chat pods' rule, not the download Job's
    # With EKS Pod Identity (no kmsRoleArn) the credentials come from the node's agent: that, on its port, too.
    s = synthesize("prod", overrides={"kmsRoleArn": ""})
    assert cluster(s).connects(chat_pod(s), POD_IDENTITY_AGENT, 80)
    assert not cluster(s).connects(chat_pod(s), METADATA, 80) and not cluster(s).connects(
        chat_pod(s), POD_IDENTITY_AGENT, 443
    )


def test_the_only_way_to_the_hub_is_the_download_job_and_it_reaches_nothing_else(prod: Synthesis) -> None:
    c, job = cluster(prod), download_pod(prod)
    assert c.connects(job, HUB, 443) and c.connects(job, KUBE_DNS, 53, "UDP")
    for destination, port in ((HUB, 80), (METADATA, 80), (VPC_HOST, 443), (DATABASE, 5432), (redis_pod(prod), 6379)):
        assert not c.connects(job, destination, port), (destination, port)
    for source in (OFFICE_CLIENT, NLB_HEALTH_CHECK, OTHER_NAMESPACE_POD, chat_pod(prod)):
        assert not c.connects(source, job, 443)  # nothing may connect to it
    hub = policies(prod)["clawbot-model-download-egress"]["egress"][1]["to"][0]["ipBlock"]
    assert hub["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(hub["except"])


def test_a_proxy_is_the_download_jobs_only_way_out_on_the_proxys_port() -> None:
    s = synthesize(
        "prod", overrides={"modelHubProxy": "http://10.0.50.10:3128", "modelHubEgressCidrs": ["10.0.50.10/32"]}
    )
    c, job = cluster(s), download_pod(s)
    assert c.connects(job, Address("10.0.50.10"), 3128)
    assert not c.connects(job, HUB, 443) and not c.connects(job, Address("10.0.50.10"), 443)
    env = {e["name"]: e.get("value") for e in s.one("Job").manifest["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HTTPS_PROXY"] == env["HTTP_PROXY"] == "http://10.0.50.10:3128"


def test_with_cilium_the_download_job_reaches_the_hub_by_name_only() -> None:
    s = synthesize("prod", overrides={"ciliumPolicies": True, "modelHubEgressCidrs": []})
    c, job = cluster(s), download_pod(s)
    assert c.connects(job, KUBE_DNS, 53, "UDP") and not c.connects(job, HUB, 443)  # no address rule at all
    cnp = s.one("CiliumNetworkPolicy", "clawbot-model-download").manifest
    assert cnp["metadata"]["namespace"] == NAMESPACE
    assert cnp["spec"]["endpointSelector"] == {"matchLabels": MODEL_DOWNLOAD_LABELS}
    dns, fqdns = cnp["spec"]["egress"]
    assert dns["toPorts"][0]["rules"] == {"dns": [{"matchPattern": "*"}]}  # the DNS proxy learns the names' addresses
    assert fqdns["toFQDNs"] == [
        {"matchName": "huggingface.co"},
        {"matchPattern": "*.huggingface.co"},
        {"matchPattern": "*.hf.co"},
    ]
    assert fqdns["toPorts"] == [{"ports": [{"port": "443", "protocol": "TCP"}]}]
    assert set(cnp) == {"apiVersion", "kind", "metadata", "spec"}  # no ingress section: the chat policies stand


def test_the_egress_list_other_settings_extend_reaches_chat_pods_policy_and_nothing_wider() -> None:
    """The hook the KMS endpoint uses: each EgressTarget opens its CIDRs on its port, no more."""
    kms = EgressTarget("kms", ("10.0.200.0/24",), 443)
    rules = chat_egress_rules(ServiceFirewallArgs(namespace=NAMESPACE, allowed_cidrs=(), service_egress=(kms,)))
    c = Cluster(
        [
            {
                "kind": "NetworkPolicy",
                "metadata": {"namespace": NAMESPACE},
                "spec": {"podSelector": {"matchLabels": CHAT_LABELS}, "policyTypes": ["Egress"], "egress": rules},
            }
        ]
    )
    chat = Pod(NAMESPACE, dict(CHAT_LABELS), "10.0.110.10")
    assert c.connects(chat, Address("10.0.200.9"), 443)
    assert not c.connects(chat, Address("10.0.200.9"), 80) and not c.connects(chat, HUB, 443)


def test_dev_has_no_internet_egress_no_download_job_and_no_load_balancer(dev: Synthesis) -> None:
    egress = policies(dev)["clawbot-chat-egress"]["egress"]
    # DNS, and the API server for the key store's init step (keyEncryption namespace), at private addresses only.
    assert [p["port"] for rule in egress for p in rule["ports"]] == [53, 53, 443, 6443]
    c, chat = cluster(dev), chat_pod(dev)
    assert c.connects(chat, Address("10.100.0.1"), 443) and c.connects(chat, Address("172.18.0.2"), 6443)
    for destination, port in ((HUB, 443), (HUB, 6443), (METADATA, 80), (METADATA, 443), (VPC_HOST, 80)):
        assert not c.connects(chat, destination, port), (destination, port)
    assert dev.find("Job") == [] and "clawbot-model-download-egress" not in policies(dev)  # the embedded model
    svc = dev.one("Service", "clawbot").manifest["spec"]
    assert svc["type"] == "ClusterIP" and "loadBalancerSourceRanges" not in svc


PROD = read_stack_config("prod")


@pytest.mark.parametrize("wide", ["10.0.0.0/16", "10.0.0.0/8", "2600:1f18:abcd:ff00::/56"])
def test_a_vpc_wide_health_check_range_is_refused_unless_asked_for_on_purpose(wide: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({**PROD, "loadBalancerSubnetCidrs": ["10.0.0.0/24", wide]}, stack="prod")
    assert "clawbot:loadBalancerSubnetCidrs" in str(err.value) and wide in str(err.value)
    assert "clawbot:allowVpcWideHealthChecks" in str(err.value)
    s = parse_settings({**PROD, "loadBalancerSubnetCidrs": [wide], "allowVpcWideHealthChecks": True}, stack="prod")
    assert s.network.health_check_cidrs == (wide,)


def test_subnet_sized_ranges_pass_and_instance_targets_need_none() -> None:
    s = parse_settings({**PROD, "loadBalancerSubnetCidrs": ["10.0.0.0/19", "10.0.32.0/20"]}, stack="prod")
    assert s.network.health_check_cidrs == ("10.0.0.0/19", "10.0.32.0/20")
    # Instance targets: health checks go to kube-proxy's node port, not 18789, so the VPC range is never admitted.
    s = parse_settings(
        {**PROD, "loadBalancerTargetType": "instance", "loadBalancerSubnetCidrs": ["10.0.0.0/16"]}, stack="prod"
    )
    assert s.network.health_check_cidrs == ()
