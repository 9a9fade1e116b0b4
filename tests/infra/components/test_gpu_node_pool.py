"""GPU capacity: the node taint, the chat pods' toleration and GPU limit come from one place and agree."""
from __future__ import annotations

from dataclasses import replace

from infra.components.gpu_node_pool import GPU_RESOURCE, placement_for
from infra.settings import parse_settings
from infra.settings.gpu import Taint
from infra.tools.synth import Synthesis, read_stack_config, synthesize
from tests.infra.conftest import chat_container, pod_spec


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
    terms = pod_spec(prod)["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
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
    s = synthesize("prod", overrides={"gpuMode": "existing", "gpuTaintValue": "present",
                                      "gpuNodeLabels": ["nvidia.com/gpu.present=true"], "gpuOperator": True})
    assert s.find("NodePool") == [] and s.find("EC2NodeClass") == [] and s.find("DaemonSet") == []
    assert {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"} in pod_spec(s)["tolerations"]
    assert chat_container(s)["resources"]["limits"][GPU_RESOURCE] == "1"


def test_cpu_stack_has_no_gpu_anything(dev: Synthesis) -> None:
    assert dev.find("NodePool") == [] and dev.find("DaemonSet") == []
    assert "tolerations" not in pod_spec(dev) and "affinity" not in pod_spec(dev)
    assert GPU_RESOURCE not in chat_container(dev)["resources"]["limits"]


def test_toleration_follows_a_changed_taint_value() -> None:
    gpu = parse_settings(read_stack_config("prod"), stack="prod").gpu
    changed = replace(gpu, taint=Taint("nvidia.com/gpu", "present", "NoExecute"))
    (tol,) = placement_for(changed).tolerations
    assert (tol["key"], tol["value"], tol["effect"], tol["operator"]) == ("nvidia.com/gpu", "present", "NoExecute", "Equal")
    assert not tolerates([dict(t) for t in placement_for(gpu).tolerations], {"key": "nvidia.com/gpu", "value": "present", "effect": "NoExecute"})
