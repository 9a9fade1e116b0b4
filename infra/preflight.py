"""What `pulumi preview` checks before the program declares anything: that the cluster is the stack's, and that the
update replaces none of the objects that hold the service's state or serve it, unless the stack allows it.

Both compare against what the stack recorded at its last update, read back through the same reference to the stack
itself that the key rotation and the image history use:

- the cluster: the UID of its kube-system namespace, read through the stack's own provider (its kubernetes:context),
  against `clusterId` (stack config), or else against the `clusterId` output the last update recorded;
- the objects: the fields whose change makes the provider delete and re-create an object (a Deployment's selector,
  a claim's class and access modes, a Service's load balancer class, the namespace itself), against the
  `immutableFields` output. A stack deployed before that output existed is compared with what the program gave it
  then, from the outputs it did record.

Every component waits for `Preflight.gate`: when a check fails, preview and up stop before any object is declared.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.components.chat_pod import stable_release
from infra.contract import CHAT_LABELS, TRACK_LABEL
from infra.settings.stack import StackSettings
from infra.settings.target import CLUSTER_ID_COMMAND
from infra.settings.values import ConfigError, config_key

CLUSTER_ID_OUTPUT = "clusterId"
IMMUTABLE_FIELDS_OUTPUT = "immutableFields"
UPGRADES_DOC_PAGE = "docs/deploying/eks-first-week.md"
# The objects guarded, by role, and how to move each without the replacement (the docs page has the steps).
MIGRATIONS = {
    "namespace": (
        "every object of the stack would be deleted and created again in the new namespace, the data claim "
        "as a new empty volume (the old namespace and claim are retained, not moved)",
        "a-new-namespace",
    ),
    "stableDeployment": (
        "a Deployment's selector cannot change, so the provider deletes Deployment {name} and creates it "
        "again: every stable chat pod stops before the new ones have loaded the model",
        "a-new-deployment-selector",
    ),
    "dataClaim": (
        "a claim's class and access modes cannot change, so the provider would replace claim {name}: the "
        "chat pods would mount a new, empty volume",
        "a-new-data-claim",
    ),
    "chatService": (
        "the provider replaces Service {name}: a new load balancer with a new DNS name, and no endpoint "
        "while it is made",
        "a-new-load-balancer",
    ),
}


def immutable_fields(s: StackSettings, prefix: str) -> dict[str, dict[str, Any]]:
    """Per guarded object, the fields whose change replaces it; recorded as the `immutableFields` output."""
    volume = s.data_volume
    service: dict[str, Any] = {"namespace": s.namespace, "name": prefix, "type": s.network.service_type}
    if s.network.load_balanced:
        service["loadBalancerClass"] = s.network.load_balancer.load_balancer_class
    return {
        "namespace": {"name": s.namespace},
        "stableDeployment": {"namespace": s.namespace, "name": prefix, "selector": stable_release(s).selector},
        "dataClaim": {
            "namespace": s.namespace,
            "name": f"{prefix}-data",
            "storageClassName": volume.storage_class,
            "accessModes": [volume.access_mode],
        },
        "chatService": service,
    }


def recorded_fields(previous: Mapping[str, Any], prefix: str) -> dict[str, dict[str, Any]]:
    """What the last update recorded; for a stack deployed before `immutableFields` existed, what the program gave
    it then: every version exported `endpointUrl` and `namespace`, and the stable Deployment's selector gained
    `track: stable` in the same release that first exported `imageHistory`."""
    recorded = previous.get(IMMUTABLE_FIELDS_OUTPUT)
    if isinstance(recorded, Mapping):
        return {role: dict(fields) for role, fields in recorded.items() if isinstance(fields, Mapping)}
    namespace = previous.get("namespace")
    if "endpointUrl" not in previous or not isinstance(namespace, str):
        return {}  # a new stack: nothing to replace
    selector = dict(CHAT_LABELS)
    if "imageHistory" in previous:
        selector[TRACK_LABEL] = "stable"
    return {
        "namespace": {"name": namespace},
        "stableDeployment": {"namespace": namespace, "name": prefix, "selector": selector},
    }


def replacements(before: Mapping[str, Mapping[str, Any]], after: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per guarded object the update would replace: which fields change, from what to what."""
    old_namespace = before.get("namespace", {}).get("name")
    namespace_moves = old_namespace is not None and old_namespace != after.get("namespace", {}).get("name")
    out: list[str] = []
    for role, old in before.items():
        new = after.get(role)
        if new is None or role not in MIGRATIONS or (namespace_moves and role != "namespace"):
            continue  # a move of the namespace replaces every object in it: one line says so
        changed = {f: (old[f], new[f]) for f in old if f in new and old[f] != new[f]}
        if not changed:
            continue
        what, anchor = MIGRATIONS[role]
        name = f"{new['namespace']}/{new['name']}" if "namespace" in new else new.get("name")
        fields = "; ".join(f"{f} {a!r} -> {b!r}" for f, (a, b) in changed.items())
        out.append(f"{role} {name} ({fields}): {what.format(name=name)}. Migration: {UPGRADES_DOC_PAGE}#{anchor}")
    return out


def check_cluster(live_uid: str, configured: str, recorded: Any, context: str) -> None:
    expected, source = (configured, config_key("clusterId")) if configured else (recorded, "the last update")
    if not isinstance(expected, str) or not expected or live_uid == expected:
        return
    raise ConfigError(
        f"this stack's cluster is {expected} (kube-system namespace UID, from {source}), but "
        f"{'kubernetes:context ' + repr(context) if context else 'the kubeconfig'} points at {live_uid}: nothing was "
        f"changed. Point kubernetes:context at the stack's cluster, or, when the cluster was rebuilt on purpose, set "
        f"{config_key('clusterId')} to the new one (`{CLUSTER_ID_COMMAND}`)"
    )


def check_replacements(s: StackSettings, previous: Mapping[str, Any], prefix: str) -> None:
    if s.target.allow_replace:
        return
    found = replacements(recorded_fields(previous, prefix), immutable_fields(s, prefix))
    if found:
        raise ConfigError(
            "this update would replace what holds the service's state or serves it:\n  - "
            + "\n  - ".join(found)
            + f"\nNothing was changed. Follow the migration, or set {config_key('allowReplace')}: true for this one "
            f"update on purpose (`pulumi config set {config_key('allowReplace')} true`, then `pulumi config rm "
            f"{config_key('allowReplace')}`)"
        )


@dataclass
class Preflight:
    """The checks, resolved into one `gate` to depend on, and the outputs the next update compares against."""

    gate: pulumi.Output[pulumi.Resource]
    cluster_id: pulumi.Output[str]
    immutable_fields: dict[str, dict[str, Any]]


def preflight(s: StackSettings, previous: pulumi.StackReference, prefix: str) -> Preflight:
    # Read, not managed: the provider reads the namespace at preview too, through the stack's kubernetes:context.
    kube_system = k8s.core.v1.Namespace.get("cluster-identity", "kube-system")
    identity: pulumi.Resource = kube_system
    live_uid = kube_system.metadata.apply(lambda m: str(_get(m, "uid") or ""))
    fields = immutable_fields(s, prefix)

    def check(values: list[Any]) -> pulumi.Resource:
        uid, outputs = values
        outputs = dict(outputs or {})
        check_cluster(uid, s.target.cluster_id, outputs.get(CLUSTER_ID_OUTPUT), s.target.context)
        check_replacements(s, outputs, prefix)
        return identity

    gate = pulumi.Output.all(live_uid, previous.outputs).apply(check)
    return Preflight(gate=pulumi.Output.unsecret(gate), cluster_id=live_uid, immutable_fields=fields)


def _get(value: Any, name: str) -> Any:
    """A field of the namespace's metadata: a typed output object from the provider, a dict from mocks."""
    return value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)
