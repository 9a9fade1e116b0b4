"""The stack's namespace: restricted Pod Security, the load balancer controller's readiness gates, kept on destroy."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.contract import COMMON_LABELS

# The AWS Load Balancer Controller adds a readiness gate to pods in a namespace with this label: a new pod counts
# as Ready only once the NLB target group reports it healthy, so a rollout never outruns the load balancer.
READINESS_GATE_LABEL = "elbv2.k8s.aws/pod-readiness-gate-inject"


@dataclass
class AppNamespaceArgs:
    name: str
    load_balancer_readiness_gates: bool = False


class AppNamespace(pulumi.ComponentResource):
    name: pulumi.Output[str]

    def __init__(self, name: str, args: AppNamespaceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("clawbot:infra:AppNamespace", name, None, opts)
        labels = {
            **COMMON_LABELS,
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        }
        if args.load_balancer_readiness_gates:
            labels[READINESS_GATE_LABEL] = "enabled"
        self.namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata={"name": args.name, "labels": labels},
            # Deleting a namespace deletes the data volume claim in it, whatever the claim's own options say;
            # `pulumi destroy` leaves both (docs/deploying/eks.md, "Deploy").
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True),
        )
        self.name = self.namespace.metadata["name"]
        self.register_outputs({"name": self.name})
