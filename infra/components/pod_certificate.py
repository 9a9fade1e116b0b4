"""TLS in the chat pods from cert-manager: a Certificate for the Service's names (and endpointHostname), written to
a kubernetes.io/tls Secret the pods mount whole; cert-manager renews it and the app reloads it."""
from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.components.aliases import formerly_under
from infra.contract import CHAT_LABELS, COMMON_LABELS

CERT_MANAGER_API = "cert-manager.io/v1"


@dataclass
class PodCertificateArgs:
    namespace: pulumi.Input[str]
    namespace_name: str  # the plain name, for the Service's DNS names
    service_name: str
    issuer_kind: str  # ClusterIssuer or Issuer
    issuer_name: str
    endpoint_hostname: str = ""  # the name clients use from outside, first on the certificate when set
    name_prefix: str = "clawbot"


class PodCertificate(pulumi.ComponentResource):
    secret_name: str  # the kubernetes.io/tls Secret cert-manager writes

    def __init__(self, name: str, args: PodCertificateArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("clawbot:infra:PodCertificate", name, None, opts)
        self.secret_name = f"{args.name_prefix}-tls"
        dns_names = [f"{args.service_name}.{args.namespace_name}.svc", f"{args.service_name}.{args.namespace_name}.svc.cluster.local"]
        if args.endpoint_hostname:
            dns_names.insert(0, args.endpoint_hostname)
        self.certificate = k8s.apiextensions.CustomResource(
            name,
            api_version=CERT_MANAGER_API,
            kind="Certificate",
            metadata={"name": self.secret_name, "namespace": args.namespace, "labels": {**CHAT_LABELS, **COMMON_LABELS}},
            spec={
                "secretName": self.secret_name,
                "issuerRef": {"group": "cert-manager.io", "kind": args.issuer_kind, "name": args.issuer_name},
                "dnsNames": dns_names,
                "duration": "2160h",
                "renewBefore": "720h",
                "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                "usages": ["server auth", "digital signature"],
            },
            # ChatService held the Certificate before this component existed.
            opts=pulumi.ResourceOptions(parent=self, aliases=formerly_under(opts)),
        )
        self.register_outputs({"secretName": self.secret_name})
