"""The HPA: bounds and targets from config, in-flight requests named as the app exports them."""

from __future__ import annotations

from app.observability.metrics import METRIC_NAMES
from infra.tools.synth import Synthesis, synthesize


def test_prod_hpa_scales_the_chat_deployment_between_2_and_10(prod: Synthesis) -> None:
    spec = prod.one("HorizontalPodAutoscaler").manifest["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "clawbot"}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 10)
    cpu = next(m for m in spec["metrics"] if m["type"] == "Resource")
    assert cpu["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}
    pods = next(m for m in spec["metrics"] if m["type"] == "Pods")["pods"]
    assert pods["metric"]["name"] in METRIC_NAMES and pods["target"]["averageValue"] == "24"
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 600
    # The HPA owns the replica count; a fixed one in the Deployment would fight it.
    assert "replicas" not in prod.one("Deployment", "clawbot").manifest["spec"]


def test_config_changes_the_bounds_and_can_drop_the_pods_metric() -> None:
    s = synthesize("prod", overrides={"minReplicas": 3, "maxReplicas": 4, "hpaCpuPercent": 55, "hpaInflightPerPod": 0})
    spec = s.one("HorizontalPodAutoscaler").manifest["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (3, 4)
    assert [m["type"] for m in spec["metrics"]] == ["Resource"]
    assert spec["metrics"][0]["resource"]["target"]["averageUtilization"] == 55


def test_dev_runs_one_fixed_replica(dev: Synthesis) -> None:
    assert dev.find("HorizontalPodAutoscaler") == []
    assert dev.one("Deployment", "clawbot").manifest["spec"]["replicas"] == 1
