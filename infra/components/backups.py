"""Daily backups: a VolumeSnapshot of the data volume and a pg_dump of the conversation database, each from a CronJob.

Least privilege: the snapshot job's ServiceAccount may create, list and delete VolumeSnapshots in the namespace and
get the data claim, nothing else; the dump job gets no Kubernetes credentials at all. Both run under restricted Pod
Security (non-root, no privilege escalation, every capability dropped, RuntimeDefault seccomp, read-only root), and
their NetworkPolicy lets them reach DNS and the API server (snapshots) or the database (dumps), nothing more.
The scripts they run are infra/jobs/, shipped in a ConfigMap; the tests run the same files.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.components.chat_pod import CONTAINER_SECURITY
from infra.components.firewall import DNS_EGRESS
from infra.contract import APP_NAME, APP_UID, COMMON_LABELS, DATABASE_SECRET_KEY
from infra.settings.data import BackupSettings, DatabaseSettings

JOBS_DIR = Path(__file__).resolve().parents[1] / "jobs"
SNAPSHOT_SCRIPT = "volume_snapshot.py"
DUMP_SCRIPT = "database_dump.sh"
SCRIPTS_DIR = "/opt/clawbot"
BACKUPS_DIR = "/backups"
# The dump job reads the database URL from a file: unlike an env var, it is not in the process environment.
DATABASE_URL_DIR = "/var/run/clawbot/database"
SNAPSHOT_LABELS = {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/component": "backup"}
DUMP_LABELS = {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/component": "database-backup"}
# A first EBS snapshot of a large volume takes a while to complete; the job waits this long for readyToUse.
SNAPSHOT_WAIT_S = 3600
DUMP_DEADLINE_S = 3 * 3600
DEADLINE_MARGIN_S = 600
API_SERVER_PORTS = (443, 6443)  # the `kubernetes` Service's port, and the endpoints' port on most clusters
SNAPSHOT_RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}}
DUMP_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}


@dataclass
class BackupsArgs:
    namespace: pulumi.Input[str]
    backups: BackupSettings
    database: DatabaseSettings
    data_claim_name: str
    storage_class: str
    production: bool
    database_secret_name: str | None = None  # set when a conversation database is configured
    name_prefix: str = "clawbot"


def snapshot_role_rules(claim_name: str) -> list[dict[str, Any]]:
    """All the snapshot job may do: make, find and prune VolumeSnapshots here, and check its one claim exists."""
    return [
        {"apiGroups": ["snapshot.storage.k8s.io"], "resources": ["volumesnapshots"], "verbs": ["create", "list", "delete"]},
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "resourceNames": [claim_name], "verbs": ["get"]},
    ]


def _pod(container: dict[str, Any], volumes: list[dict[str, Any]], service_account: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # Only the snapshot job talks to the API server; the dump job carries no token at all.
        "automountServiceAccountToken": service_account is not None,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": APP_UID, "runAsGroup": APP_UID, "fsGroup": APP_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [{**container, "securityContext": {**CONTAINER_SECURITY, "runAsUser": APP_UID, "runAsGroup": APP_UID}}],
        "volumes": volumes,
    }
    if service_account:
        spec["serviceAccountName"] = service_account
    return spec


def cron_job_spec(schedule: str, deadline_s: int, labels: dict[str, str], pod: dict[str, Any]) -> dict[str, Any]:
    return {
        "schedule": schedule,
        "timeZone": "Etc/UTC",
        # One run at a time; a run missed by more than an hour (controller down) is skipped, not stacked up.
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": 3600,
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
        "jobTemplate": {
            "metadata": {"labels": labels},
            "spec": {
                "backoffLimit": 1,
                "activeDeadlineSeconds": deadline_s,
                "template": {"metadata": {"labels": labels}, "spec": pod},
            },
        },
    }


def _scripts_volume(config_map: str, script: str) -> dict[str, Any]:
    return {"name": "scripts",
            "configMap": {"name": config_map, "defaultMode": 0o444, "items": [{"key": script, "path": script}]}}


class Backups(pulumi.ComponentResource):
    def __init__(self, name: str, args: BackupsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("clawbot:infra:Backups", name, None, opts)
        self.child = pulumi.ResourceOptions(parent=self)
        self.name, self.args = name, args
        prefix = args.name_prefix
        scripts: dict[str, str] = {}
        if args.backups.snapshots:
            scripts[SNAPSHOT_SCRIPT] = (JOBS_DIR / SNAPSHOT_SCRIPT).read_text()
        if args.database_secret_name:
            scripts[DUMP_SCRIPT] = (JOBS_DIR / DUMP_SCRIPT).read_text()
        self.cron_jobs: list[k8s.batch.v1.CronJob] = []
        if scripts:
            self.scripts = k8s.core.v1.ConfigMap(f"{name}-scripts", metadata=self._meta(self.scripts_name, SNAPSHOT_LABELS),
                                                 data=scripts, opts=self.child)
        if args.backups.snapshots:
            self._snapshots(f"{prefix}-snapshots")
        if args.database_secret_name:
            self._dumps(f"{prefix}-database-backups", args.database_secret_name)
        self.register_outputs({"cronJobs": [c.metadata["name"] for c in self.cron_jobs]})

    def _meta(self, object_name: str, labels: dict[str, str]) -> dict[str, Any]:
        return {"name": object_name, "namespace": self.args.namespace, "labels": {**labels, **COMMON_LABELS}}

    def _egress(self, suffix: str, object_name: str, labels: dict[str, str], rule: dict[str, Any]) -> None:
        k8s.networking.v1.NetworkPolicy(
            f"{self.name}-{suffix}-egress",
            metadata=self._meta(f"{object_name}-egress", labels),
            spec={"podSelector": {"matchLabels": dict(labels)}, "policyTypes": ["Egress"], "egress": [DNS_EGRESS, rule]},
            opts=self.child,
        )

    def _snapshots(self, object_name: str) -> None:
        a, b = self.args, self.args.backups
        account = k8s.core.v1.ServiceAccount(f"{self.name}-snapshot-account", metadata=self._meta(object_name, SNAPSHOT_LABELS),
                                             automount_service_account_token=False, opts=self.child)
        role = k8s.rbac.v1.Role(f"{self.name}-snapshot-role", metadata=self._meta(object_name, SNAPSHOT_LABELS),
                                rules=snapshot_role_rules(a.data_claim_name), opts=self.child)
        binding = k8s.rbac.v1.RoleBinding(
            f"{self.name}-snapshot-binding",
            metadata=self._meta(object_name, SNAPSHOT_LABELS),
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": object_name},
            subjects=[{"kind": "ServiceAccount", "name": object_name, "namespace": a.namespace}],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[account, role]),
        )
        container = {
            "name": "snapshot",
            "image": b.image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["python", f"{SCRIPTS_DIR}/{SNAPSHOT_SCRIPT}"],
            "env": [
                {"name": "PVC_NAME", "value": a.data_claim_name},
                {"name": "SNAPSHOT_CLASS", "value": b.snapshot_class},
                {"name": "RETENTION", "value": str(b.retention)},
                {"name": "WAIT_SECONDS", "value": str(SNAPSHOT_WAIT_S)},
                {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
            ],
            "resources": SNAPSHOT_RESOURCES,
            "volumeMounts": [{"name": "scripts", "mountPath": SCRIPTS_DIR, "readOnly": True}],
        }
        pod = _pod(container, [_scripts_volume(self.scripts_name, SNAPSHOT_SCRIPT)], service_account=object_name)
        self.cron_jobs.append(k8s.batch.v1.CronJob(
            f"{self.name}-snapshots",
            metadata=self._meta(object_name, SNAPSHOT_LABELS),
            spec=cron_job_spec(b.schedule, SNAPSHOT_WAIT_S + DEADLINE_MARGIN_S, SNAPSHOT_LABELS, pod),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[binding, self.scripts]),
        ))
        api_ports = [{"protocol": "TCP", "port": p} for p in API_SERVER_PORTS]
        # Without kubernetesApiCidrs the API server may be anywhere (EKS: ENIs in the VPC, or a public endpoint);
        # the token it carries can only touch snapshots.
        to = [{"ipBlock": {"cidr": c}} for c in b.kubernetes_api_cidrs]
        self._egress("snapshots", object_name, SNAPSHOT_LABELS, {**({"to": to} if to else {}), "ports": api_ports})

    def _dumps(self, object_name: str, database_secret: str) -> None:
        a, b = self.args, self.args.backups
        claim = k8s.core.v1.PersistentVolumeClaim(
            f"{self.name}-database-backups",
            metadata=self._meta(object_name, DUMP_LABELS),
            spec={"accessModes": ["ReadWriteOnce"], "storageClassName": a.storage_class,
                  "resources": {"requests": {"storage": b.database_volume_size}}},
            # The dumps outlive `pulumi destroy`, like the data volume; production refuses to delete them at all.
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True, protect=a.production),
        )
        container = {
            "name": "pg-dump",
            "image": b.database_image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["sh", f"{SCRIPTS_DIR}/{DUMP_SCRIPT}"],
            "env": [
                {"name": "DATABASE_URL_FILE", "value": f"{DATABASE_URL_DIR}/{DATABASE_SECRET_KEY}"},
                {"name": "BACKUP_DIR", "value": BACKUPS_DIR},
                {"name": "RETENTION", "value": str(b.retention)},
                {"name": "PGCONNECT_TIMEOUT", "value": "30"},
            ],
            "resources": DUMP_RESOURCES,
            "volumeMounts": [
                {"name": "scripts", "mountPath": SCRIPTS_DIR, "readOnly": True},
                {"name": "backups", "mountPath": BACKUPS_DIR},
                {"name": "database", "mountPath": DATABASE_URL_DIR, "readOnly": True},
            ],
        }
        volumes = [_scripts_volume(self.scripts_name, DUMP_SCRIPT),
                   {"name": "backups", "persistentVolumeClaim": {"claimName": object_name}},
                   {"name": "database", "secret": {"secretName": database_secret, "defaultMode": 0o440,
                                                   "items": [{"key": DATABASE_SECRET_KEY, "path": DATABASE_SECRET_KEY}]}}]
        self.cron_jobs.append(k8s.batch.v1.CronJob(
            f"{self.name}-database-dumps",
            metadata=self._meta(object_name, DUMP_LABELS),
            spec=cron_job_spec(b.schedule, DUMP_DEADLINE_S, DUMP_LABELS, _pod(container, volumes, service_account=None)),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[claim, self.scripts]),
        ))
        to = [{"ipBlock": {"cidr": c}} for c in a.database.egress_cidrs]
        self._egress("database-backups", object_name, DUMP_LABELS,
                     {"to": to, "ports": [{"protocol": "TCP", "port": a.database.port}]})

    @property
    def scripts_name(self) -> str:
        return f"{self.args.name_prefix}-backup-scripts"
