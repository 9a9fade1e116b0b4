"""What the Prometheus Operator makes of our custom resources, so the real Prometheus and Alertmanager can run them.

There is no cluster and no operator here; these functions do, for the fields our objects use, what
prometheus-operator does (read in its source, pkg/alertmanager/amcfg.go and pkg/prometheus/promcfg.go, v0.93):

- PrometheusRule -> rule file: the operator writes the object's `spec` (its `groups`) unchanged into a rule file.
- ServiceMonitor -> scrape job: `generateServiceMonitorConfig` gives each endpoint a job
  `serviceMonitor/<ns>/<name>/<i>` over Kubernetes endpoints discovery, keeps the Service's selected labels and
  the endpoint's port, and relabels `namespace`, `service`, `pod`, `container`, `job` and `endpoint` from the
  discovery labels. Discovery is emulated: one static target carries the `__meta_kubernetes_*` labels the
  endpoints role would report for the chat pod (its namespace, the synthesized Service's name and labels, the
  port name, the pod and container); the relabelling applied to it is the operator's. The sharding relabels
  (hashmod over __address__) are left out: one shard.
- AlertmanagerConfig -> alertmanager.yml: `AddAlertmanagerConfigs` converts the route (`convertRoute`: the
  receiver renamed `<ns>/<name>/<receiver>` by `makeNamespacedString`), appends the matcher
  `namespace="<ns>"` (`namespaceEnforcer`, the default OnNamespace strategy, matchers v2 for Alertmanager >=
  0.22), sets `continue: true` (`continueToNextRoute`) and puts the route first under the base config's root
  route; receivers get the same prefix (`convertReceiver`, `convertEmailConfig`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# kube-prometheus-stack's default `alertmanager.config` (its values.yaml), without inhibit rules and templates:
# everything not routed elsewhere goes to the "null" receiver.
BASE_ALERTMANAGER_CONFIG: dict[str, Any] = {
    "global": {"resolve_timeout": "5m"},
    "route": {
        "group_by": ["namespace"],
        "group_wait": "30s",
        "group_interval": "5m",
        "repeat_interval": "12h",
        "receiver": "null",
        "routes": [{"receiver": "null", "matchers": ['alertname="Watchdog"']}],
    },
    "receivers": [{"name": "null"}],
}
EMAIL_FIELDS = {  # AlertmanagerConfig emailConfigs field -> alertmanager.yml email_configs key
    "to": "to",
    "from": "from",
    "smarthost": "smarthost",
    "authUsername": "auth_username",
    "requireTLS": "require_tls",
    "sendResolved": "send_resolved",
}


def rule_file(prometheus_rule: Mapping[str, Any]) -> dict[str, Any]:
    return {"groups": copy.deepcopy(prometheus_rule["spec"]["groups"])}


@dataclass(frozen=True)
class Endpoint:
    """What endpoints discovery would report for one pod behind the Service."""

    address: str  # host:port Prometheus scrapes
    pod: str
    container: str


def _label_name(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def scrape_config(
    monitor: Mapping[str, Any], service: Mapping[str, Any], endpoint: Endpoint, interval: str | None = None
) -> dict[str, Any]:
    """The scrape job for the ServiceMonitor's first endpoint. `interval` shortens the scrape for a quick test."""
    meta, spec = monitor["metadata"], monitor["spec"]
    (ep,) = spec["endpoints"]
    port_name = ep["port"]
    svc_meta = service["metadata"]
    svc_port = next(p for p in service["spec"]["ports"] if p.get("name") == port_name)
    discovered = {
        "__meta_kubernetes_namespace": svc_meta["namespace"],
        "__meta_kubernetes_service_name": svc_meta["name"],
        "__meta_kubernetes_endpoint_port_name": svc_port["name"],
        "__meta_kubernetes_endpoint_address_target_kind": "Pod",
        "__meta_kubernetes_endpoint_address_target_name": endpoint.pod,
        "__meta_kubernetes_pod_name": endpoint.pod,
        "__meta_kubernetes_pod_container_name": endpoint.container,
        "__meta_kubernetes_pod_phase": "Running",
        **{f"__meta_kubernetes_service_label_{_label_name(k)}": v for k, v in svc_meta.get("labels", {}).items()},
    }
    # Older operators select the Service with these keep rules, newer ones with a discovery selector: same effect.
    selects = [
        {
            "action": "keep",
            "source_labels": [f"__meta_kubernetes_service_label_{_label_name(k)}"],
            "regex": f"(?:{re.escape(v)})",
        }
        for k, v in spec["selector"]["matchLabels"].items()
    ]
    interval = interval or ep["interval"]
    return {
        "job_name": f"serviceMonitor/{meta['namespace']}/{meta['name']}/0",
        "honor_labels": False,
        "scrape_interval": interval,
        "scrape_timeout": interval if interval != ep["interval"] else ep["scrapeTimeout"],
        "metrics_path": ep["path"],
        "static_configs": [{"targets": [endpoint.address], "labels": discovered}],
        "relabel_configs": [
            *selects,
            {"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"], "regex": port_name},
            {
                "source_labels": [
                    "__meta_kubernetes_endpoint_address_target_kind",
                    "__meta_kubernetes_endpoint_address_target_name",
                ],
                "separator": ";",
                "regex": "Node;(.*)",
                "replacement": "${1}",
                "target_label": "node",
            },
            {
                "source_labels": [
                    "__meta_kubernetes_endpoint_address_target_kind",
                    "__meta_kubernetes_endpoint_address_target_name",
                ],
                "separator": ";",
                "regex": "Pod;(.*)",
                "replacement": "${1}",
                "target_label": "pod",
            },
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job", "replacement": "${1}"},
            {"target_label": "endpoint", "replacement": port_name},
        ],
    }


def _matcher(m: Mapping[str, Any]) -> str:
    return f'{m["name"]}{m.get("matchType", "=")}"{m["value"]}"'


def _route(route: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {"receiver": prefix + route["receiver"]}
    for source, target in (
        ("groupBy", "group_by"),
        ("groupWait", "group_wait"),
        ("groupInterval", "group_interval"),
        ("repeatInterval", "repeat_interval"),
    ):
        if source in route:
            out[target] = route[source]
    out["matchers"] = [_matcher(m) for m in route.get("matchers", [])]
    if route.get("continue"):
        out["continue"] = True
    if route.get("routes"):
        out["routes"] = [_route(r, prefix) for r in route["routes"]]
    return out


def _email(config: Mapping[str, Any], namespace: str, secrets: Mapping[tuple[str, str, str], str]) -> dict[str, Any]:
    out = {target: config[source] for source, target in EMAIL_FIELDS.items() if source in config}
    if "authPassword" in config:  # the operator reads the referenced Secret key in the AlertmanagerConfig's namespace
        ref = config["authPassword"]
        out["auth_password"] = secrets[(namespace, ref["name"], ref["key"])]
    return out


def alertmanager_config(
    amc: Mapping[str, Any],
    secrets: Mapping[tuple[str, str, str], str] | None = None,
    base: Mapping[str, Any] = BASE_ALERTMANAGER_CONFIG,
) -> dict[str, Any]:
    """alertmanager.yml as the operator generates it from `base` plus one AlertmanagerConfig object."""
    namespace, name = amc["metadata"]["namespace"], amc["metadata"]["name"]
    prefix = f"{namespace}/{name}/"
    route = _route(amc["spec"]["route"], prefix)
    route["matchers"].append(f'namespace="{namespace}"')
    route["continue"] = True
    config = copy.deepcopy(dict(base))
    config["route"]["routes"] = [route, *config["route"].get("routes", [])]
    for receiver in amc["spec"]["receivers"]:
        converted: dict[str, Any] = {"name": prefix + receiver["name"]}
        if receiver.get("emailConfigs"):
            converted["email_configs"] = [_email(e, namespace, secrets or {}) for e in receiver["emailConfigs"]]
        config["receivers"].append(converted)
    return config


def stack_secrets(objects: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str], str]:
    """(namespace, name, key) -> value of every Secret manifest, as the operator would read them from the cluster."""
    found: dict[tuple[str, str, str], str] = {}
    for manifest in objects:
        meta = manifest["metadata"]
        for key, value in (manifest.get("stringData") or {}).items():
            found[(meta["namespace"], meta["name"], key)] = value
    return found
