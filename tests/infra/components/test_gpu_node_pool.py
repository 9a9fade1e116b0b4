"""GPU capacity: the node taint, the chat pods' toleration and GPU limit come from one place and agree."""

from __future__ import annotations

from dataclasses import replace

from infra.components.gpu_node_pool import GPU_RESOURCE, placement_for
from infra.settings import parse_settings
from infra.settings.gpu import Taint
from infra.settings.values import duration_seconds
from infra.tools.synth import Synthesis, read_stack_config, synthesize
from tests.infra.conftest import chat_container, pod_spec
from tests.infra.crd_validation import load_crds


def tolerates(tolerations: list[dict[str, str]], taint: dict[str, str]) -> bool:
    for t in tolerations:
        if t.get("key") != taint["key"] or t.get("effect", taint["effect"]) != taint["effect"]:
            continue
        if t.get("operator") == "Exists" or t.get("value") == taint["value"]:
            return True
    return False


def test_prod_pool_taint_matches_chat_and_device_plugin_tolerations(prod: Synthesis) -> None:
    pool = prod.one("NodePool").manifest
    (taint,) = pool["spec"]["template"]["spec"]["taints"]
    assert taint == {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}
    assert tolerates(pod_spec(prod)["tolerations"], taint)
    plugin = prod.one("DaemonSet", "nvidia-device-plugin").manifest["spec"]["template"]["spec"]
    assert tolerates(plugin["tolerations"], taint)


def test_prod_chat_pod_asks_for_one_gpu_on_nodes_with_the_pool_labels(prod: Synthesis) -> None:
    resources = chat_container(prod)["resources"]
    assert resources["limits"][GPU_RESOURCE] == "1"
    assert resources["limits"]["cpu"] == "4" and resources["limits"]["memory"] == "8Gi"
    assert resources["requests"]["cpu"] == "2" and resources["requests"]["memory"] == "4Gi"
    pool_labels = prod.one("NodePool").manifest["spec"]["template"]["metadata"]["labels"]
    terms = pod_spec(prod)["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    required = {e["key"]: e["values"] for e in terms[0]["matchExpressions"]}
    assert required and all(pool_labels.get(k) in v for k, v in required.items())


def test_prod_node_pool_has_gpu_families_limit_and_disruption_settings(prod: Synthesis) -> None:
    spec = prod.one("NodePool").manifest["spec"]
    reqs = {r["key"]: r["values"] for r in spec["template"]["spec"]["requirements"]}
    assert reqs["karpenter.k8s.aws/instance-family"] == ["g5", "g6"]
    assert reqs["karpenter.sh/capacity-type"] == ["on-demand"]
    assert spec["limits"] == {GPU_RESOURCE: "12"}  # maxReplicas 10 + the rollout surge pod + a canary pod
    assert spec["disruption"]["consolidationPolicy"] == "WhenEmpty" and spec["disruption"]["consolidateAfter"] == "10m"
    ref = spec["template"]["spec"]["nodeClassRef"]
    node_class = prod.one("EC2NodeClass").manifest
    assert ref == {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": node_class["metadata"]["name"]}
    assert node_class["spec"]["role"] == "KarpenterNodeRole-clawbot-prod"
    assert node_class["spec"]["subnetSelectorTerms"] == [{"tags": {"karpenter.sh/discovery": "clawbot-prod"}}]
    assert node_class["spec"]["metadataOptions"]["httpTokens"] == "required"


def test_existing_node_class_is_referenced_not_created() -> None:
    s = synthesize("prod", overrides={"nodeClassName": "shared-gpu"})
    assert s.find("EC2NodeClass") == []
    assert s.one("NodePool").manifest["spec"]["template"]["spec"]["nodeClassRef"]["name"] == "shared-gpu"


def test_existing_gpu_nodes_mode_creates_no_pool_but_keeps_placement() -> None:
    s = synthesize(
        "prod",
        overrides={
            "gpuMode": "existing",
            "gpuTaintValue": "present",
            "gpuNodeLabels": ["nvidia.com/gpu.present=true"],
            "gpuOperator": True,
        },
    )
    assert s.find("NodePool") == [] and s.find("EC2NodeClass") == [] and s.find("DaemonSet") == []
    assert {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"} in pod_spec(s)[
        "tolerations"
    ]
    assert chat_container(s)["resources"]["limits"][GPU_RESOURCE] == "1"


def test_cpu_stack_has_no_gpu_anything(dev: Synthesis) -> None:
    assert dev.find("NodePool") == [] and dev.find("DaemonSet") == []
    assert "tolerations" not in pod_spec(dev) and "affinity" not in pod_spec(dev)
    assert GPU_RESOURCE not in chat_container(dev)["resources"]["limits"]


def test_toleration_follows_a_changed_taint_value() -> None:
    gpu = parse_settings(read_stack_config("prod"), stack="prod").gpu
    changed = replace(gpu, taint=Taint("nvidia.com/gpu", "present", "NoExecute"))
    (tol,) = placement_for(changed).tolerations
    assert (tol["key"], tol["value"], tol["effect"], tol["operator"]) == (
        "nvidia.com/gpu",
        "present",
        "NoExecute",
        "Equal",
    )
    assert not tolerates(
        [dict(t) for t in placement_for(gpu).tolerations],
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoExecute"},
    )


def test_the_ami_is_a_pinned_release_so_nodes_roll_only_when_the_stack_bumps_it(prod: Synthesis) -> None:
    (term,) = prod.one("EC2NodeClass").manifest["spec"]["amiSelectorTerms"]
    assert term == {"alias": "al2023@v20260724"}
    bumped = synthesize("prod", overrides={"nodeClassAmiAlias": "al2023@v20260801"})
    assert bumped.one("EC2NodeClass").manifest["spec"]["amiSelectorTerms"] == [{"alias": "al2023@v20260801"}]


def test_drift_and_expiry_can_replace_nodes_without_cutting_a_stream_or_a_model_load(prod: Synthesis) -> None:
    """The pool bounds every drain; the chat pods block disruption only while they load the model, then drain
    gracefully (preStop, SHUTDOWN_GRACE_SECONDS) within that bound, one at a time by the PDB."""
    node_spec = prod.one("NodePool").manifest["spec"]["template"]["spec"]
    grace = duration_seconds(node_spec["terminationGracePeriod"])
    assert node_spec["terminationGracePeriod"] == "1h" and node_spec["expireAfter"] == "720h"
    pod = prod.one("Deployment", "clawbot").manifest["spec"]["template"]
    protected = duration_seconds(pod["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"])
    assert (
        protected == prod.config["startupTimeoutSeconds"] == 720
    )  # the start-up budget: "true" would block drift for good
    # The node waits out a loading pod's protection and then its whole termination grace before anything is forced.
    assert grace is not None and protected is not None
    assert grace >= protected + pod["spec"]["terminationGracePeriodSeconds"]
    assert prod.one("PodDisruptionBudget").manifest["spec"]["maxUnavailable"] == 1


def test_disruption_budgets_replace_one_busy_gpu_node_at_a_time_and_let_empty_ones_go(prod: Synthesis) -> None:
    budgets = prod.one("NodePool").manifest["spec"]["disruption"]["budgets"]
    assert budgets == [{"nodes": "1", "reasons": ["Drifted", "Underutilized"]}, {"nodes": "100%", "reasons": ["Empty"]}]
    # Every reason a budget can name (the vendored CRD's enum) is covered, so Karpenter's 10%-of-the-pool default
    # never applies.
    schema = load_crds()[("karpenter.sh/v1", "NodePool")].schema
    budget = schema["properties"]["spec"]["properties"]["disruption"]["properties"]["budgets"]["items"]
    crd_reasons = set(budget["properties"]["reasons"]["items"]["enum"])
    assert {r for b in budgets for r in b["reasons"]} == crd_reasons
    two = synthesize("prod", overrides={"disruptionBudget": "2", "nodeTerminationGracePeriod": "2h"})
    assert two.one("NodePool").manifest["spec"]["disruption"]["budgets"][0]["nodes"] == "2"
