"""What a first `pulumi up` on a real EKS cluster needs, one behaviour per test (issue 12, items 1-8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infra.components.chat_pod import CHECKSUM_ANNOTATION
from infra.components.load_balancer import AWS_LB
from infra.components.rollout import POD_TURNOVER_S, PROVISIONING_BUDGET_S
from infra.components.secret_store import DAY_S, next_schedule, rotation_schedule
from infra.contract import TLS_CERT_PATH, TLS_DIR, TLS_KEY_PATH
from infra.settings import ConfigError, parse_settings
from infra.settings.pod import TERMINATION_MARGIN_S
from infra.tools.synth import SynthError, Synthesis, read_stack_config, synthesize
from tests.infra.conftest import chat_container, pod_spec

PROD = read_stack_config("prod")


def prod_with(**changes: object) -> dict[str, object]:
    return {**PROD, **changes}


def refused(message: str, **changes: object) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(prod_with(**changes), stack="prod")
    assert message in str(err.value), str(err.value)


def annotations(s: Synthesis) -> dict[str, str]:
    return s.one("Service", "clawbot").manifest["metadata"].get("annotations") or {}


def template_checksum(s: Synthesis) -> str:
    return s.one("Deployment", "clawbot").manifest["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]


# -- 1. the load balancer and client addresses ------------------------------------------------------------------


def test_the_load_balancer_is_an_internal_nlb_that_keeps_client_addresses(prod: Synthesis) -> None:
    spec = prod.one("Service", "clawbot").manifest["spec"]
    assert spec["loadBalancerClass"] == "service.k8s.aws/nlb"  # not the in-tree Classic LB
    a = annotations(prod)
    assert a[f"{AWS_LB}scheme"] == "internal"
    assert a[f"{AWS_LB}nlb-target-type"] == "ip"
    assert "preserve_client_ip.enabled=true" in a[f"{AWS_LB}target-group-attributes"].split(",")
    assert spec["loadBalancerSourceRanges"] == ["192.168.1.0/24", "10.8.0.0/16"]
    assert spec["allocateLoadBalancerNodePorts"] is False  # ip targets: no NodePort opens on every node
    # Health checks ask whether the model is loaded, and the NetworkPolicy admits the NLB's subnets for them.
    assert a[f"{AWS_LB}healthcheck-path"] == "/readyz" and a[f"{AWS_LB}healthcheck-port"] == "traffic-port"
    # Pods count as Ready only once the target group says so: rollouts never outrun the NLB.
    assert (
        prod.one("Namespace", "clawbot").manifest["metadata"]["labels"]["elbv2.k8s.aws/pod-readiness-gate-inject"]
        == "enabled"
    )


def test_internet_facing_and_instance_targets_are_choices_made_on_purpose() -> None:
    s = synthesize(
        "prod",
        overrides={
            "loadBalancerScheme": "internet-facing",
            "loadBalancerTargetType": "instance",
            "loadBalancerSubnetCidrs": [],
        },
    )
    a = annotations(s)
    assert a[f"{AWS_LB}scheme"] == "internet-facing" and a[f"{AWS_LB}nlb-target-type"] == "instance"
    # Instance targets go through kube-proxy with externalTrafficPolicy Local: client address kept, and the
    # controller's default health check (kube-proxy's node port) is the right one.
    assert s.one("Service", "clawbot").manifest["spec"]["externalTrafficPolicy"] == "Local"
    assert f"{AWS_LB}healthcheck-path" not in a
    assert "elbv2.k8s.aws/pod-readiness-gate-inject" not in s.one("Namespace", "clawbot").manifest["metadata"]["labels"]


def test_combinations_that_cannot_work_are_refused() -> None:
    refused("clawbot:preserveClientIp false cannot work with clawbot:allowedCidrs", preserveClientIp=False)
    refused("clawbot:preserveClientIp false cannot work", preserveClientIp=False, loadBalancerTargetType="instance")
    refused(
        "clawbot:loadBalancerSubnetCidrs must list the CIDRs of the subnets the NLB sits in", loadBalancerSubnetCidrs=[]
    )
    refused("clawbot:loadBalancerClass must be one of service.k8s.aws/nlb", loadBalancerClass="")
    refused("clawbot:loadBalancerScheme must be one of internal, internet-facing", loadBalancerScheme="public")
    # A load balancer open to everyone on purpose has no addresses to keep.
    s = parse_settings(
        prod_with(allowedCidrs=["0.0.0.0/0"], allowPublicIngress=True, preserveClientIp=False), stack="prod"
    )
    assert not s.network.load_balancer.preserve_client_ip


# -- 2. TLS ---------------------------------------------------------------------------------------------------------


def test_prod_terminates_tls_at_the_nlb_on_18789_and_says_https(prod: Synthesis) -> None:
    a = annotations(prod)
    assert a[f"{AWS_LB}ssl-cert"].startswith("arn:aws:acm:")
    assert a[f"{AWS_LB}ssl-ports"] == "18789"
    assert a[f"{AWS_LB}ssl-negotiation-policy"].startswith("ELBSecurityPolicy-TLS13")
    assert a[f"{AWS_LB}backend-protocol"] == "tcp"
    assert prod.outputs["endpointUrl"] == "https://chat.example.com:18789"


def test_a_production_stack_without_tls_is_refused_unless_plaintext_is_allowed_on_purpose() -> None:
    with pytest.raises(SynthError, match="a production stack must serve TLS"):
        synthesize("prod", overrides={"tlsCertificateArn": "", "endpointHostname": ""})
    s = synthesize("prod", overrides={"tlsCertificateArn": "", "endpointHostname": "", "allowPlaintext": True})
    assert s.outputs["endpointUrl"].startswith("http://") and f"{AWS_LB}ssl-cert" not in annotations(s)


def test_tls_settings_are_checked() -> None:
    refused("clawbot:tlsCertificateArn must be an ACM certificate ARN", tlsCertificateArn="my-cert")
    refused("clawbot:endpointHostname must name the DNS name on the certificate", endpointHostname="")
    refused("clawbot:podTlsIssuer must be ClusterIssuer/NAME or Issuer/NAME", podTlsIssuer="letsencrypt")
    refused("two sources of the pod certificate", podTlsIssuer="ClusterIssuer/ca", podTlsSecret="clawbot-tls")
    with pytest.raises(ConfigError, match="needs clawbot:serviceType LoadBalancer"):
        parse_settings(
            {
                "storageClass": "gp3",
                "tlsCertificateArn": PROD["tlsCertificateArn"],
                "endpointHostname": "x.example.com",
            },
            stack="dev",
        )


def test_tls_in_the_pod_mounts_a_cert_manager_certificate_and_serves_https_end_to_end() -> None:
    s = synthesize("prod", overrides={"podTlsIssuer": "ClusterIssuer/clawbot-ca", "podTlsIssuerPrivate": True})
    cert = s.one("Certificate", "clawbot-tls").manifest["spec"]
    assert cert["issuerRef"] == {"group": "cert-manager.io", "kind": "ClusterIssuer", "name": "clawbot-ca"}
    assert cert["dnsNames"] == ["chat.example.com", "clawbot.clawbot.svc", "clawbot.clawbot.svc.cluster.local"]
    env = s.one("ConfigMap", "clawbot-config").manifest["data"]
    assert (env["TLS_CERT_FILE"], env["TLS_KEY_FILE"]) == (TLS_CERT_PATH, TLS_KEY_PATH)
    c = chat_container(s)
    assert {"name": "tls", "mountPath": TLS_DIR, "readOnly": True} in c["volumeMounts"]
    (tls,) = [v for v in pod_spec(s)["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["secretName"] == cert["secretName"]
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    a = annotations(s)  # the NLB re-encrypts to the pod and health-checks over HTTPS
    assert a[f"{AWS_LB}backend-protocol"] == "ssl" and a[f"{AWS_LB}healthcheck-protocol"] == "https"
    assert "chat-certificate" in s.one("Deployment", "clawbot").depends_on


def test_tls_in_the_pod_alone_makes_a_cluster_internal_endpoint_https() -> None:
    s = synthesize("dev", overrides={"podTlsSecret": "clawbot-dev-tls"})
    assert s.outputs["endpointUrl"] == "https://clawbot.clawbot-dev.svc.cluster.local:18789"
    assert s.find("Certificate") == []
    assert any(v.get("secret", {}).get("secretName") == "clawbot-dev-tls" for v in pod_spec(s)["volumes"])


# -- 3. waiting long enough --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stack", ["prod", "dev"])
def test_pulumi_waits_for_the_model_to_load_plus_node_and_image_time(
    stack: str, request: pytest.FixtureRequest
) -> None:
    s: Synthesis = request.getfixturevalue(stack)
    startup = chat_container(s)["startupProbe"]
    probe_budget = startup["periodSeconds"] * startup["failureThreshold"]
    first_pod = probe_budget + PROVISIONING_BUDGET_S
    # The Service's await needs one ready endpoint: the first pod. The Deployment's update walks every replica.
    assert s.one("Service", "clawbot").options.custom_timeouts == {"create": f"{first_pod}s", "update": f"{first_pod}s"}
    deployment = s.one("Deployment", "clawbot").options.custom_timeouts
    assert deployment is not None and deployment["create"] == f"{first_pod}s"
    replicas = int(s.config.get("maxReplicas", 1))
    grace = pod_spec(s)["terminationGracePeriodSeconds"]
    assert deployment["update"] == f"{first_pod + (replicas - 1) * (grace + POD_TURNOVER_S + probe_budget)}s"
    assert first_pod > 600  # Pulumi's default await


# -- 4. config and secret changes reach running pods -----------------------------------------------------------------


def test_a_config_change_rolls_the_pods(prod: Synthesis) -> None:
    again = synthesize("prod")
    assert template_checksum(again) == template_checksum(prod)  # nothing changed, nothing rolls
    wider = synthesize("prod", overrides={"allowedCidrs": ["192.168.1.0/24", "10.8.0.0/16", "172.20.0.0/16"]})
    assert template_checksum(wider) != template_checksum(prod)
    assert wider.one("ConfigMap", "clawbot-config").manifest["data"]["ALLOWED_CIDRS"].endswith("172.20.0.0/16")


def test_a_key_rotation_rolls_the_pods(prod: Synthesis) -> None:
    same_period = synthesize("prod", stack_outputs={"keyRotation": prod.outputs["keyRotation"]})
    assert same_period.outputs["apiKeyIds"] == prod.outputs["apiKeyIds"]
    assert template_checksum(same_period) == template_checksum(prod)
    # The last up ran in an earlier period: it left other keys live, so this up rotates one and rolls the pods.
    earlier = rotation_schedule(prod_epoch_start(prod) - 2 * 90 * DAY_S, 90).as_output()
    rotated = synthesize("prod", stack_outputs={"keyRotation": earlier})
    assert rotated.one("Secret", "clawbot-keys").manifest != same_period.one("Secret", "clawbot-keys").manifest
    assert template_checksum(rotated) != template_checksum(same_period)


def prod_epoch_start(s: Synthesis) -> int:
    return int(s.outputs["keyRotation"]["epoch"]) * 90 * DAY_S


# -- 5. no rollout deadlock on GPUs ------------------------------------------------------------------------------------


def test_a_rollout_at_max_replicas_always_has_a_gpu_for_the_surge_pod(prod: Synthesis) -> None:
    rolling = prod.one("Deployment", "clawbot").manifest["spec"]["strategy"]["rollingUpdate"]
    limit = int(prod.one("NodePool").manifest["spec"]["limits"]["nvidia.com/gpu"])
    hpa = prod.one("HorizontalPodAutoscaler").manifest["spec"]
    gpus = int(chat_container(prod)["resources"]["limits"]["nvidia.com/gpu"])
    assert limit >= gpus * (hpa["maxReplicas"] + rolling["maxSurge"])
    refused(
        "clawbot:gpuLimit (10) is below clawbot:gpusPerPod x (clawbot:maxReplicas + 1 rollout surge pod) = 11",
        gpuLimit=10,
    )
    refused("= 22", gpuLimit=21, gpusPerPod=2)


# -- 6. an HPA that can scale down -------------------------------------------------------------------------------------


def test_the_pods_metric_needs_an_adapter_the_stack_says_exists(prod: Synthesis) -> None:
    refused("clawbot:hpaInflightPerPod 24 needs a custom-metrics adapter", customMetricsAdapter=False)
    metrics = [m["type"] for m in prod.one("HorizontalPodAutoscaler").manifest["spec"]["metrics"]]
    assert metrics == ["Resource", "Pods"] and PROD["customMetricsAdapter"] is True
    s = synthesize("prod", overrides={"customMetricsAdapter": False, "hpaInflightPerPod": 0})
    assert [m["type"] for m in s.one("HorizontalPodAutoscaler").manifest["spec"]["metrics"]] == ["Resource"]


# -- 7. storage classes and data that outlives the stack -----------------------------------------------------------------


def test_both_stacks_name_their_storage_class(prod: Synthesis, dev: Synthesis) -> None:
    assert dev.one("PersistentVolumeClaim", "clawbot-data").manifest["spec"]["storageClassName"] == "gp3"
    assert prod.one("PersistentVolumeClaim", "clawbot-data").manifest["spec"]["storageClassName"] == "efs-sc"
    with pytest.raises(ConfigError, match="clawbot:storageClass must name a StorageClass"):
        parse_settings({}, stack="dev")
    refused("clawbot:storageClass must name a StorageClass", storageClass="EFS SC")


def test_data_volumes_survive_destroy_and_prod_refuses_to_delete_them(prod: Synthesis, dev: Synthesis) -> None:
    assert (
        prod.one("PersistentVolumeClaim", "clawbot-data").options.protect
        and prod.one("PersistentVolumeClaim", "clawbot-data").options.retain_on_delete
    )
    assert (
        dev.one("PersistentVolumeClaim", "clawbot-data").options.retain_on_delete
        and not dev.one("PersistentVolumeClaim", "clawbot-data").options.protect
    )
    # Deleting the namespace would delete the claim in it, so the namespace is retained too.
    assert (
        prod.one("Namespace").options.retain_on_delete and dev.one("Namespace", "clawbot-dev").options.retain_on_delete
    )


# -- 8. the smaller ones ---------------------------------------------------------------------------------------------------


def test_kubernetes_older_than_1_30_is_refused_because_of_the_pre_stop_sleep(prod: Synthesis) -> None:
    refused("clawbot:kubernetesVersion 1.29 is older than the oldest supported, 1.30", kubernetesVersion="1.29")
    assert parse_settings(prod_with(kubernetesVersion="1.31+"), stack="prod").kubernetes_version == (1, 31)
    assert chat_container(prod)["lifecycle"]["preStop"] == {"sleep": {"seconds": 30}}
    s = synthesize("dev", overrides={"preStopSleepSeconds": 0})
    assert "lifecycle" not in chat_container(s)


def test_drain_timing_fits_inside_the_termination_grace_period(prod: Synthesis, dev: Synthesis) -> None:
    for s in (prod, dev):
        env = s.one("ConfigMap", "clawbot-config").manifest["data"]
        sleep = chat_container(s).get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        grace = pod_spec(s)["terminationGracePeriodSeconds"]
        assert grace == sleep + int(env["SHUTDOWN_GRACE_SECONDS"]) + TERMINATION_MARGIN_S
    assert (
        f"deregistration_delay.timeout_seconds={pod_spec(prod)['terminationGracePeriodSeconds']}"
        in annotations(prod)[f"{AWS_LB}target-group-attributes"]
    )


def test_an_smtp_user_without_its_password_is_refused_before_anything_is_created() -> None:
    with pytest.raises(
        SynthError,
        match="clawbot:alertSmtpUsername is 'clawbot-alerts' but the secret clawbot:alertSmtpPassword is empty",
    ):
        synthesize("prod", overrides={"alertSmtpPassword": ""})
    with pytest.raises(SynthError, match="clawbot:alertSmtpPassword is set but clawbot:alertSmtpUsername is empty"):
        synthesize("prod", overrides={"alertSmtpUsername": "", "alertSmtpPassword": "pw"})


def test_declared_secrets_must_be_encrypted_in_the_stack_file(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.leaky.yaml").write_text("config:\n  clawbot:hubToken: hf_plaintext\n")
    with pytest.raises(SynthError, match="configuration key 'hubToken' must be encrypted as it's secret"):
        synthesize("leaky", project_dir=tmp_path)


def test_the_deployment_waits_for_the_key_secrets_it_mounts(prod: Synthesis) -> None:
    deployment = prod.one("Deployment", "clawbot")
    mounted = {v["secret"]["secretName"] for v in pod_spec(prod)["volumes"] if "secret" in v}
    for name in mounted:
        assert prod.one("Secret", name).resource_name in deployment.depends_on, name


def schedule_ids(sc: Any) -> tuple[str, str]:
    return sc.primary.key_id, sc.secondary.key_id


@pytest.mark.parametrize("idle_periods", [1, 2, 3, 7])
def test_one_key_slot_at_most_changes_per_up_however_long_the_stack_sat_idle(idle_periods: int) -> None:
    days = 90
    last = rotation_schedule(10 * days * DAY_S + 5, days)
    now = (10 + idle_periods) * days * DAY_S + 5
    assert set(schedule_ids(rotation_schedule(now, days))).isdisjoint(schedule_ids(last)) or idle_periods == 1
    step = next_schedule(last.as_output(), now, days)
    assert step.secondary == last.primary  # the key clients hold now stays valid through this period
    assert step.primary.key_id not in schedule_ids(last)
    assert step.period_end > now


def test_an_up_within_the_period_changes_no_key_and_the_first_up_starts_from_the_clock() -> None:
    days = 30
    last = rotation_schedule(1_000 * DAY_S, days)
    assert next_schedule(last.as_output(), 1_000 * DAY_S + 3600, days) == last
    assert next_schedule(None, 1_000 * DAY_S, days) == last
    assert next_schedule({"garbage": 1}, 1_000 * DAY_S, days) == last


def test_the_stack_reads_its_last_rotation_back_and_keeps_the_live_primary(prod: Synthesis) -> None:
    start = prod_epoch_start(prod)
    before = rotation_schedule(start - 3 * 90 * DAY_S, 90)  # three periods ago
    s = synthesize("prod", stack_outputs={"keyRotation": before.as_output()})
    new_primary, new_secondary = s.outputs["apiKeyIds"]
    assert new_secondary == before.primary.key_id
    assert new_primary not in (before.primary.key_id, before.secondary.key_id)
    assert s.outputs["keyRotation"]["primary"] == before.secondary.name
