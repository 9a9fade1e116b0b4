"""TLS in the chat pods from cert-manager: a Certificate written to a kubernetes.io/tls Secret the pods mount whole;
cert-manager renews it and the app reloads it.

The issuer is checked, never just named: either the program creates a private CA in the namespace (a self-signed
root and a CA Issuer), or it reads the named issuer at preview, so a missing one fails there with its kind and name,
and one that is not Ready or is a public ACME issuer asked for `.svc` names fails with what to do. The Service's
`.svc` names go on the certificate only from a private CA; a public CA gets `endpointHostname` alone. Every
Certificate and Issuer carries `pulumi.com/waitFor`, so `pulumi up` waits for it to be Ready, and the Deployment,
which depends on the pod Certificate, never starts pods that wait on a missing Secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.components.aliases import formerly_under
from infra.contract import CHAT_LABELS, COMMON_LABELS

CERT_MANAGER_API = "cert-manager.io/v1"
# pulumi-kubernetes' await annotation: the create or update finishes once the object's Ready condition is True.
WAIT_FOR_READY = {"pulumi.com/waitFor": "condition=Ready"}
# An ACME order (DNS or HTTP challenge) can take minutes; a CA issues at once.
ISSUE_TIMEOUT = pulumi.CustomTimeouts(create="15m", update="15m")


class IssuerNotUsable(pulumi.RunError):
    """The named issuer exists but cannot issue this certificate; the message says why and what to set."""


@dataclass
class PodCertificateArgs:
    namespace: pulumi.Input[str]
    namespace_name: str  # the plain name, for the Service's DNS names
    service_name: str
    issuer_kind: str = ""  # an existing issuer: ClusterIssuer or Issuer ...
    issuer_name: str = ""  # ... and its name
    create_private_ca: bool = False  # instead, the program's own CA in the namespace
    private_ca: bool = False  # the issuer is a private CA: the .svc names go on the certificate
    endpoint_hostname: str = ""  # the name clients use from outside, first on the certificate when set
    name_prefix: str = "clawbot"


def dns_names(args: PodCertificateArgs) -> list[str]:
    """endpointHostname first; the Service's in-cluster names only from a private CA (a public one refuses them)."""
    names = [args.endpoint_hostname] if args.endpoint_hostname else []
    if args.private_ca or args.create_private_ca:
        names += [
            f"{args.service_name}.{args.namespace_name}.svc",
            f"{args.service_name}.{args.namespace_name}.svc.cluster.local",
        ]
    return names


def issuer_problem(kind: str, name: str, private_ca: bool, obj: Any) -> str | None:
    """Why the issuer as read from the cluster cannot issue the pod certificate, or None when it can."""
    obj = obj or {}
    conditions = (obj.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") != "True":
        why = f": {ready.get('reason')}: {ready.get('message')}" if ready else " (it has no Ready condition yet)"
        return (
            f"cert-manager {kind}/{name}, named by clawbot:podTlsIssuer, is not Ready{why}. Fix the issuer "
            f"(kubectl describe {kind.lower()} {name}), or set clawbot:podTlsIssuer to private-ca"
        )
    if private_ca and "acme" in (obj.get("spec") or {}):
        return (
            f"cert-manager {kind}/{name} is an ACME issuer, a public CA, but clawbot:podTlsIssuerPrivate is true: it "
            "would refuse the Service's .svc names. Set clawbot:podTlsIssuerPrivate to false (the certificate then "
            "names clawbot:endpointHostname alone), or name a private CA"
        )
    return None


class ExistingIssuer(pulumi.CustomResource):
    """A cert-manager issuer read from the cluster (never created or changed), with its spec and status."""

    spec: pulumi.Output[Any]
    status: pulumi.Output[Any]

    def __init__(self, name: str, kind: str, object_id: str, opts: pulumi.ResourceOptions | None = None) -> None:
        props = {"apiVersion": None, "kind": None, "metadata": None, "spec": None, "status": None}
        super().__init__(
            f"kubernetes:{CERT_MANAGER_API}:{kind}",
            name,
            props,
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(id=object_id)),
        )


class PodCertificate(pulumi.ComponentResource):
    secret_name: str  # the kubernetes.io/tls Secret cert-manager writes
    issuer_checked: pulumi.Output[str]  # the issuer's kind/name once it is known to be usable

    def __init__(self, name: str, args: PodCertificateArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("clawbot:infra:PodCertificate", name, None, opts)
        prefix = args.name_prefix
        self.secret_name = f"{prefix}-tls"
        labels = {**CHAT_LABELS, **COMMON_LABELS}
        child = pulumi.ResourceOptions(parent=self)
        waits_for: list[pulumi.Resource] = []
        self.existing_issuer: ExistingIssuer | None = None
        if args.create_private_ca:
            issuer_ref = {"group": "cert-manager.io", "kind": "Issuer", "name": f"{prefix}-ca"}
            waits_for.append(self._private_ca(name, args, labels))
            self.issuer_checked = pulumi.Output.from_input(f"Issuer/{prefix}-ca")
        else:
            issuer_ref = {"group": "cert-manager.io", "kind": args.issuer_kind, "name": args.issuer_name}
            object_id = (
                args.issuer_name if args.issuer_kind == "ClusterIssuer" else f"{args.namespace_name}/{args.issuer_name}"
            )
            self.existing_issuer = ExistingIssuer(f"{name}-issuer", args.issuer_kind, object_id, opts=child)
            self.issuer_checked = pulumi.Output.all(self.existing_issuer.spec, self.existing_issuer.status).apply(
                lambda read: self._check(args, {"spec": read[0], "status": read[1]})
            )
        self.certificate = k8s.apiextensions.CustomResource(
            name,
            api_version=CERT_MANAGER_API,
            kind="Certificate",
            metadata={
                "name": self.secret_name,
                "namespace": args.namespace,
                "labels": labels,
                "annotations": dict(WAIT_FOR_READY),
            },
            spec={
                "secretName": self.secret_name,
                # Read from the issuer's check: an unusable issuer stops the update here, before anything is created.
                "issuerRef": self.issuer_checked.apply(lambda _: issuer_ref),
                "dnsNames": dns_names(args),
                "duration": "2160h",
                "renewBefore": "720h",
                "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                "usages": ["server auth", "digital signature"],
            },
            # ChatService held the Certificate before this component existed.
            opts=pulumi.ResourceOptions(
                parent=self, aliases=formerly_under(opts), depends_on=waits_for, custom_timeouts=ISSUE_TIMEOUT
            ),
        )
        self.register_outputs({"secretName": self.secret_name, "issuer": self.issuer_checked})

    @staticmethod
    def _check(args: PodCertificateArgs, read: dict[str, Any]) -> str:
        problem = issuer_problem(args.issuer_kind, args.issuer_name, args.private_ca, read)
        if problem:
            raise IssuerNotUsable(problem)
        return f"{args.issuer_kind}/{args.issuer_name}"

    def _private_ca(self, name: str, args: PodCertificateArgs, labels: dict[str, str]) -> pulumi.Resource:
        """A self-signed root, kept in `<prefix>-ca` (clients trust its ca.crt), and the Issuer that signs from it."""
        prefix = args.name_prefix

        def issuer(
            suffix: str, object_name: str, spec: dict[str, Any], depends_on: list[pulumi.Resource]
        ) -> pulumi.Resource:
            resource: pulumi.Resource = k8s.apiextensions.CustomResource(
                f"{name}-{suffix}",
                api_version=CERT_MANAGER_API,
                kind="Issuer",
                metadata={
                    "name": object_name,
                    "namespace": args.namespace,
                    "labels": labels,
                    "annotations": dict(WAIT_FOR_READY),
                },
                spec=spec,
                opts=pulumi.ResourceOptions(parent=self, depends_on=depends_on, custom_timeouts=ISSUE_TIMEOUT),
            )
            return resource

        root_issuer = issuer("selfsigned", f"{prefix}-selfsigned", {"selfSigned": {}}, [])
        root = k8s.apiextensions.CustomResource(
            f"{name}-ca",
            api_version=CERT_MANAGER_API,
            kind="Certificate",
            metadata={
                "name": f"{prefix}-ca",
                "namespace": args.namespace,
                "labels": labels,
                "annotations": dict(WAIT_FOR_READY),
            },
            spec={
                "isCA": True,
                "commonName": f"{prefix} private CA ({args.namespace_name})",
                "secretName": f"{prefix}-ca",
                "duration": "87600h",
                "renewBefore": "8760h",
                "privateKey": {"algorithm": "ECDSA", "size": 256},
                "usages": ["cert sign", "crl sign", "digital signature"],
                "issuerRef": {"group": "cert-manager.io", "kind": "Issuer", "name": f"{prefix}-selfsigned"},
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[root_issuer], custom_timeouts=ISSUE_TIMEOUT),
        )
        return issuer("ca-issuer", f"{prefix}-ca", {"ca": {"secretName": f"{prefix}-ca"}}, [root])
