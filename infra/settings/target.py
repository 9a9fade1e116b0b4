"""Target settings: which cluster the stack deploys to, and whether an update may replace what holds its state.

The cluster is named twice: by the stack's `kubernetes:context` (or `kubernetes:kubeconfig`), which the provider
uses, and by `clusterId`, the UID of that cluster's kube-system namespace, which preview reads back and compares
(infra/preflight.py). Without `clusterId` the first update records the cluster it ran against.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from infra.settings.values import ConfigError, Raw, boolean, config_key, text

_UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
CLUSTER_ID_COMMAND = "kubectl get namespace kube-system -o jsonpath='{.metadata.uid}'"


@dataclass(frozen=True)
class TargetSettings:
    cluster_id: str  # '' until the stack names one: the first update's cluster is then recorded and held
    allow_replace: bool  # an update may replace the namespace, the stable Deployment or a data claim
    # The provider's own config (kubernetes:*), which load_settings adds: the context the stack deploys through.
    context: str = ""
    kubeconfig: bool = False  # kubernetes:kubeconfig is set

    @property
    def cluster_named(self) -> bool:
        return bool(self.context or self.kubeconfig)


def parse_target(raw: Raw) -> TargetSettings:
    cluster_id = text(raw, "clusterId").strip().lower()
    if cluster_id and not _UID.match(cluster_id):
        raise ConfigError(
            f"{config_key('clusterId')} must be the UID of the cluster's kube-system namespace "
            f"(`{CLUSTER_ID_COMMAND}`), got {cluster_id!r}"
        )
    return TargetSettings(cluster_id=cluster_id, allow_replace=boolean(raw, "allowReplace"))
