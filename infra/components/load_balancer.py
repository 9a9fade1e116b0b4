"""How the chat Service meets the network: the AWS Load Balancer Controller's NLB, TLS, health checks, the endpoint URL.

Without `loadBalancerClass` and these annotations EKS would make a Classic LB that hides client addresses, so
the NetworkPolicy ipBlocks and the app's ALLOWED_CIDRS would see the load balancer instead of the clients.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.contract import PORT, READY_PATH
from infra.settings.stack import StackSettings

AWS_LB = "service.beta.kubernetes.io/aws-load-balancer-"
# TLS 1.3 and 1.2 only, forward-secret suites.
TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"
EXTERNAL_DNS_HOSTNAME = "external-dns.alpha.kubernetes.io/hostname"


def service_annotations(s: StackSettings) -> dict[str, str]:
    """Everything the AWS Load Balancer Controller reads from the Service; empty for a ClusterIP Service."""
    if not s.network.load_balanced:
        return {}
    lb = s.network.load_balancer
    target_group = [
        f"preserve_client_ip.enabled={'true' if lb.preserve_client_ip else 'false'}",
        # In-flight requests of a deregistered pod get as long as the pod itself has to finish them.
        f"deregistration_delay.timeout_seconds={s.pod.termination_grace_seconds}",
    ]
    out = {
        f"{AWS_LB}scheme": lb.scheme,
        f"{AWS_LB}nlb-target-type": lb.target_type,
        f"{AWS_LB}target-group-attributes": ",".join(target_group),
    }
    if lb.target_type == "ip":
        # Pods are the targets: check the model is loaded, not just that the port is open. With instance targets
        # (externalTrafficPolicy Local) the controller's default, kube-proxy's health-check node port, is right.
        out.update(
            {
                f"{AWS_LB}healthcheck-protocol": "https" if s.tls.in_pod else "http",
                f"{AWS_LB}healthcheck-port": "traffic-port",
                f"{AWS_LB}healthcheck-path": READY_PATH,
                f"{AWS_LB}healthcheck-success-codes": "200",
                f"{AWS_LB}healthcheck-interval": "10",
                f"{AWS_LB}healthcheck-healthy-threshold": "2",
                f"{AWS_LB}healthcheck-unhealthy-threshold": "2",
            }
        )
    if s.tls.at_load_balancer:
        out.update(
            {
                f"{AWS_LB}ssl-cert": s.tls.certificate_arn,
                f"{AWS_LB}ssl-ports": str(PORT),
                f"{AWS_LB}ssl-negotiation-policy": TLS_POLICY,
                # With TLS in the pod too the NLB re-encrypts to it; otherwise it forwards the decrypted stream.
                f"{AWS_LB}backend-protocol": "ssl" if s.tls.in_pod else "tcp",
            }
        )
    if s.tls.endpoint_hostname:
        out[EXTERNAL_DNS_HOSTNAME] = s.tls.endpoint_hostname  # used where external-dns runs; harmless elsewhere
    return out


def load_balancer_spec(s: StackSettings) -> dict[str, Any]:
    """The LoadBalancer-only fields of the Service spec."""
    if not s.network.load_balanced:
        return {}
    lb = s.network.load_balancer
    spec: dict[str, Any] = {
        "loadBalancerClass": lb.load_balancer_class,
        # The controller turns these into the NLB's security group; the NetworkPolicy is the second wall.
        "loadBalancerSourceRanges": list(s.network.allowed_cidrs),
        # Local keeps the client's source address through kube-proxy (instance targets) and never sends traffic
        # through a second node.
        "externalTrafficPolicy": "Local",
    }
    if lb.target_type == "ip":
        spec["allocateLoadBalancerNodePorts"] = False  # the NLB reaches pod IPs; no port opens on every node
    return spec


def _ingress(status: Any) -> dict[str, Any] | None:
    status = _plain(status) or {}
    ingress = (status.get("load_balancer") or status.get("loadBalancer") or {}).get("ingress") or []
    return ingress[0] if ingress else None


def _address(status: Any) -> str:
    ingress = _ingress(status) or {}
    return str(ingress.get("hostname") or ingress.get("ip") or "")


def load_balancer_hostname(service: k8s.core.v1.Service, s: StackSettings) -> pulumi.Output[str]:
    """The NLB's DNS name (point endpointHostname at it); empty for a ClusterIP Service."""
    if not s.network.load_balanced:
        return pulumi.Output.from_input("")
    hostname: pulumi.Output[str] = service.status.apply(_address)
    return hostname


def endpoint_url(service: k8s.core.v1.Service, s: StackSettings) -> pulumi.Output[str]:
    """https:// whenever TLS is on (at the NLB or in the pod); the configured hostname before any address."""
    scheme = "https" if s.tls.enabled else "http"
    if s.tls.endpoint_hostname:
        return pulumi.Output.from_input(f"{scheme}://{s.tls.endpoint_hostname}:{PORT}")
    if not s.network.load_balanced:
        return pulumi.Output.concat(
            f"{scheme}://", service.metadata["name"], f".{s.namespace}.svc.cluster.local:{PORT}"
        )

    def from_status(status: Any) -> str:
        address = _address(status)
        return f"{scheme}://{address}:{PORT}" if address else "pending: the load balancer has no address yet"

    url: pulumi.Output[str] = service.status.apply(from_status)
    return url


def _plain(value: Any) -> Any:
    """Service status arrives as typed output objects from the provider and as dicts from mocks."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return {
        k: _plain(getattr(value, k)) for k in dir(value) if not k.startswith("_") and not callable(getattr(value, k))
    }
