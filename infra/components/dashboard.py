"""Dashboard: ships dashboards/clawbot.json as a ConfigMap that Grafana's sidecar picks up by its label."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

DASHBOARD_PATH = Path(__file__).resolve().parents[2] / "dashboards" / "clawbot.json"
# The kube-prometheus-stack / Grafana Helm chart sidecar loads every ConfigMap carrying this label.
SIDECAR_LABEL = ("grafana_dashboard", "1")
# ...and files it under the folder named by this annotation (sidecar.dashboards.folderAnnotation).
FOLDER_ANNOTATION = "grafana_folder"
CONFIGMAP_LIMIT_BYTES = 1_048_576


class DashboardError(ValueError):
    """The dashboard file is missing, not JSON, or too large for a ConfigMap; the message names the file."""


def load_dashboard(path: Path) -> str:
    """The dashboard JSON as text, checked to be a Grafana dashboard that fits in one ConfigMap."""
    try:
        text = path.read_text()
    except OSError as e:
        raise DashboardError(f"dashboard file {path} cannot be read: {e.strerror}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DashboardError(f"dashboard file {path} is not valid JSON: {e.msg} at line {e.lineno}") from None
    if not isinstance(doc, dict) or not doc.get("uid") or not isinstance(doc.get("panels"), list):
        raise DashboardError(f"dashboard file {path} must be a Grafana dashboard object with a uid and panels")
    if len(text.encode()) > CONFIGMAP_LIMIT_BYTES:
        raise DashboardError(
            f"dashboard file {path} is {len(text.encode())} bytes; a ConfigMap holds at most {CONFIGMAP_LIMIT_BYTES}"
        )
    return text


@dataclass
class DashboardArgs:
    namespace: pulumi.Input[str]
    """Where the ConfigMap goes: a namespace Grafana's sidecar watches (its own, or all with searchNamespace=ALL)."""
    folder: str | None = "ClawBot"
    """Grafana folder, via the sidecar's folder annotation; None leaves the dashboard in the default folder."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Extra labels for the ConfigMap (e.g. app.kubernetes.io/part-of); the sidecar label is always set."""
    dashboard_path: Path = DASHBOARD_PATH


class Dashboard(pulumi.ComponentResource):
    config_map_name: pulumi.Output[str]

    def __init__(self, name: str, args: DashboardArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("clawbot:infra:Dashboard", name, None, opts)
        # Read before creating anything so a broken file fails the preview with its name, not half a stack.
        dashboard = load_dashboard(args.dashboard_path)
        key, value = SIDECAR_LABEL
        annotations = {FOLDER_ANNOTATION: args.folder} if args.folder else {}

        self.config_map = k8s.core.v1.ConfigMap(
            f"{name}-dashboard",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=f"{name}-grafana-dashboard",
                namespace=args.namespace,
                labels={**args.labels, key: value},
                annotations=annotations,
            ),
            data={args.dashboard_path.name: dashboard},
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.config_map_name = self.config_map.metadata.apply(lambda m: m.name or "")
        self.register_outputs({"config_map_name": self.config_map_name})
