"""Daily backups, each from a CronJob: a VolumeSnapshot of the data volume, a pg_dump of the conversation database,
and, with a bucket (`backupBucket`), copies of the dumps and of the data volume's files in S3, off the cluster.

Least privilege: the snapshot job's ServiceAccount may create, list and delete VolumeSnapshots in the namespace and
get the data claim, nothing else; the dump and copy jobs mount no Kubernetes token at all, and reach S3 through an
IAM role of their own (IRSA or Pod Identity on the `<prefix>-backups` ServiceAccount) allowed the bucket's prefix
only. pg_dump reads the password from a libpq password file, never its argv. Every job runs under restricted Pod
Security (non-root, no privilege escalation, every capability dropped, RuntimeDefault seccomp, read-only root), with
a NetworkPolicy that lets it reach DNS and the API server (snapshots), the database (dumps) or 443 (copies), nothing
more. Every image is pinned by digest. The scripts they run are infra/jobs/, shipped in a ConfigMap; the tests run
the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pulumi
import pulumi_kubernetes as k8s

from infra.components.chat_pod import CONTAINER_SECURITY
from infra.components.firewall import DNS_EGRESS
from infra.contract import (
    API_SERVER_PORTS,
    APP_NAME,
    APP_UID,
    CHAT_LABELS,
    COMMON_LABELS,
    IRSA_ROLE_ANNOTATION,
    STABLE,
    TRACK_LABEL,
)
from infra.settings.data import POSTGRES_PORT, BackupSettings, BucketSettings, DatabaseSettings

JOBS_DIR = Path(__file__).resolve().parents[1] / "jobs"
SNAPSHOT_SCRIPT = "volume_snapshot.py"
DUMP_SCRIPT = "database_dump.sh"
COPY_SCRIPT = "bucket_copy.sh"
SCRIPTS_DIR = "/opt/clawbot"
BACKUPS_DIR = "/backups"
TMP_DIR = "/tmp"
DATA_MOUNT = "/data"
# The dump job reads the connection from files (a URL without the password, and a libpq password file): unlike env
# vars or argv, they are in no process listing.
DATABASE_DIR = "/var/run/clawbot/database"
DSN_KEY, PASSFILE_KEY = "dsn", "pgpass"
SNAPSHOT_LABELS = {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/component": "backup"}
DUMP_LABELS = {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/component": "database-backup"}
DATA_COPY_LABELS = {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/component": "data-backup"}
DUMP_DEADLINE_S = 3 * 3600
DATA_COPY_DEADLINE_S = 6 * 3600  # a first copy of a 100 GiB model cache
DEADLINE_MARGIN_S = 600
HTTPS_PORT = 443
SNAPSHOT_RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}}
DUMP_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
COPY_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}


@dataclass
class BackupsArgs:
    namespace: pulumi.Input[str]
    backups: BackupSettings
    database: DatabaseSettings
    data_claim_name: str
    data_access_mode: str  # ReadWriteOnce: the data copy must run on the node the chat pods mount the volume on
    storage_class: str
    production: bool
    database_url: pulumi.Output[str] | None = None  # the secret URL, when a conversation database is configured
    name_prefix: str = "clawbot"


def passfile_line(url: str) -> str:
    """The libpq password file line for a postgresql:// URL (fields escaped as libpq reads them)."""
    parts = urlsplit(url)

    def escape(v: str) -> str:
        return v.replace("\\", "\\\\").replace(":", "\\:")

    fields = [
        parts.hostname or "",
        str(parts.port or POSTGRES_PORT),
        "*",
        unquote(parts.username or ""),
        unquote(parts.password or ""),
    ]
    return ":".join(escape(f) if f != "*" else f for f in fields) + "\n"


def url_without_password(url: str) -> str:
    """The same connection with the password left out (libpq then takes it from the password file)."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname or ""
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return parts._replace(netloc=f"{user}{host}{port}").geturl()


def snapshot_role_rules(claim_name: str) -> list[dict[str, Any]]:
    """All the snapshot job may do: make, find and prune VolumeSnapshots here, and check its one claim exists."""
    return [
        {
            "apiGroups": ["snapshot.storage.k8s.io"],
            "resources": ["volumesnapshots"],
            "verbs": ["create", "list", "delete"],
        },
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "resourceNames": [claim_name], "verbs": ["get"]},
    ]


def _secured(container: dict[str, Any]) -> dict[str, Any]:
    return {**container, "securityContext": {**CONTAINER_SECURITY, "runAsUser": APP_UID, "runAsGroup": APP_UID}}


def _pod(
    container: dict[str, Any],
    volumes: list[dict[str, Any]],
    service_account: str | None,
    *,
    api_token: bool = False,
    init: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # Only the snapshot job talks to the API server; the others carry no Kubernetes token at all (their account
        # is there for the IAM role the IRSA or Pod Identity webhook hands them).
        "automountServiceAccountToken": api_token,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": APP_UID,
            "runAsGroup": APP_UID,
            "fsGroup": APP_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        **({"initContainers": [_secured(c) for c in init]} if init else {}),
        "containers": [_secured(container)],
        "volumes": volumes,
    }
    if service_account:
        spec["serviceAccountName"] = service_account
    return spec


def _bucket_env(bucket: BucketSettings) -> list[dict[str, str]]:
    return [
        {"name": "BUCKET", "value": bucket.bucket},
        {"name": "AWS_REGION", "value": bucket.region},
        {"name": "RETENTION_DAYS", "value": str(bucket.retention_days)},
        # The aws CLI keeps its caches under HOME: a memory volume, as the root filesystem is read-only.
        {"name": "HOME", "value": TMP_DIR},
    ]


def backups_output(backups: BackupSettings, namespace: str, prefix: str) -> dict[str, Any] | None:
    """The `backups` stack output: where the copies go, and what the bucket and the role the program does not own
    must carry (docs/operations/backups.md applies them)."""
    bucket = backups.bucket
    if bucket is None:
        return None
    return {
        "bucket": bucket.url(f"{bucket.prefix}/" if bucket.prefix else ""),
        "region": bucket.region,
        "databaseDumps": bucket.url(bucket.database_prefix),
        "dataFiles": bucket.url(bucket.data_prefix),
        "retentionDays": bucket.retention_days,
        "serviceAccount": f"system:serviceaccount:{namespace}:{prefix}-backups",
        "lifecycle": bucket.lifecycle(),
        "policy": bucket.policy(),
    }


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
    return {
        "name": "scripts",
        "configMap": {"name": config_map, "defaultMode": 0o444, "items": [{"key": script, "path": script}]},
    }


class Backups(pulumi.ComponentResource):
    def __init__(self, name: str, args: BackupsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("clawbot:infra:Backups", name, None, opts)
        self.child = pulumi.ResourceOptions(parent=self)
        self.name, self.args = name, args
        prefix, bucket = args.name_prefix, args.backups.bucket
        scripts: dict[str, str] = {}
        if args.backups.snapshots:
            scripts[SNAPSHOT_SCRIPT] = (JOBS_DIR / SNAPSHOT_SCRIPT).read_text()
        if args.database_url is not None:
            scripts[DUMP_SCRIPT] = (JOBS_DIR / DUMP_SCRIPT).read_text()
        if bucket is not None:
            scripts[COPY_SCRIPT] = (JOBS_DIR / COPY_SCRIPT).read_text()
        self.cron_jobs: list[k8s.batch.v1.CronJob] = []
        if scripts:
            self.scripts = k8s.core.v1.ConfigMap(
                f"{name}-scripts",
                metadata=self._meta(self.scripts_name, SNAPSHOT_LABELS),
                data=scripts,
                opts=self.child,
            )
        self.account: k8s.core.v1.ServiceAccount | None = None
        if bucket is not None:
            # The copies' IAM identity: IRSA (the role annotated here) or a Pod Identity association for this name.
            self.account = k8s.core.v1.ServiceAccount(
                f"{name}-bucket-account",
                metadata={
                    **self._meta(f"{prefix}-backups", DATA_COPY_LABELS),
                    **({"annotations": {IRSA_ROLE_ANNOTATION: bucket.role_arn}} if bucket.role_arn else {}),
                },
                automount_service_account_token=False,
                opts=self.child,
            )
            self._data_copies(f"{prefix}-data-backups", bucket)
        if args.backups.snapshots:
            self._snapshots(f"{prefix}-snapshots")
        if args.database_url is not None:
            self._dumps(f"{prefix}-database-backups", args.database_url)
        self.register_outputs({"cronJobs": [c.metadata["name"] for c in self.cron_jobs]})

    def _meta(self, object_name: str, labels: dict[str, str]) -> dict[str, Any]:
        return {"name": object_name, "namespace": self.args.namespace, "labels": {**labels, **COMMON_LABELS}}

    def _egress(self, suffix: str, object_name: str, labels: dict[str, str], *rules: dict[str, Any]) -> None:
        k8s.networking.v1.NetworkPolicy(
            f"{self.name}-{suffix}-egress",
            metadata=self._meta(f"{object_name}-egress", labels),
            spec={
                "podSelector": {"matchLabels": dict(labels)},
                "policyTypes": ["Egress"],
                "egress": [DNS_EGRESS, *rules],
            },
            opts=self.child,
        )

    @staticmethod
    def _bucket_egress(bucket: BucketSettings) -> dict[str, Any]:
        """443 to S3 and STS: the configured ranges (the S3 gateway endpoint, the STS endpoint), else any address."""
        to = [{"ipBlock": {"cidr": c}} for c in bucket.egress_cidrs]
        return {**({"to": to} if to else {}), "ports": [{"protocol": "TCP", "port": HTTPS_PORT}]}

    def _copy_container(
        self, bucket: BucketSettings, mode: str, env: list[dict[str, str]], mounts: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "name": "copy-to-bucket",
            "image": bucket.upload_image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["sh", f"{SCRIPTS_DIR}/{COPY_SCRIPT}", mode],
            "env": [*_bucket_env(bucket), *env],
            "resources": COPY_RESOURCES,
            "volumeMounts": [
                {"name": "scripts", "mountPath": SCRIPTS_DIR, "readOnly": True},
                {"name": "tmp", "mountPath": TMP_DIR},
                *mounts,
            ],
        }

    def _data_copies(self, object_name: str, bucket: BucketSettings) -> None:
        """The data volume's files (the model cache) to the bucket daily: EFS has no CSI snapshots."""
        a = self.args
        container = self._copy_container(
            bucket,
            "data",
            [{"name": "DATA_DIR", "value": DATA_MOUNT}, {"name": "DATA_PREFIX", "value": bucket.data_prefix}],
            [{"name": "data", "mountPath": DATA_MOUNT, "readOnly": True}],
        )
        volumes = [
            _scripts_volume(self.scripts_name, COPY_SCRIPT),
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
            {"name": "data", "persistentVolumeClaim": {"claimName": a.data_claim_name, "readOnly": True}},
        ]
        pod = _pod(container, volumes, f"{a.name_prefix}-backups")
        if a.data_access_mode == "ReadWriteOnce":
            # A ReadWriteOnce volume attaches to one node: the copy runs where the chat pods mount it.
            pod["affinity"] = {
                "podAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "labelSelector": {"matchLabels": {**CHAT_LABELS, TRACK_LABEL: STABLE}},
                            "topologyKey": "kubernetes.io/hostname",
                        }
                    ]
                }
            }
        self.cron_jobs.append(
            k8s.batch.v1.CronJob(
                f"{self.name}-data-copies",
                metadata=self._meta(object_name, DATA_COPY_LABELS),
                spec=cron_job_spec(a.backups.schedule, DATA_COPY_DEADLINE_S, DATA_COPY_LABELS, pod),
                opts=pulumi.ResourceOptions(
                    parent=self, depends_on=[self.scripts, *([self.account] if self.account else [])]
                ),
            )
        )
        self._egress("data-backups", object_name, DATA_COPY_LABELS, self._bucket_egress(bucket))

    def _snapshots(self, object_name: str) -> None:
        a, b = self.args, self.args.backups
        account = k8s.core.v1.ServiceAccount(
            f"{self.name}-snapshot-account",
            metadata=self._meta(object_name, SNAPSHOT_LABELS),
            automount_service_account_token=False,
            opts=self.child,
        )
        role = k8s.rbac.v1.Role(
            f"{self.name}-snapshot-role",
            metadata=self._meta(object_name, SNAPSHOT_LABELS),
            rules=snapshot_role_rules(a.data_claim_name),
            opts=self.child,
        )
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
                {"name": "WAIT_SECONDS", "value": str(b.snapshot_deadline_s)},
                {"name": "STUCK_AFTER_SECONDS", "value": str(b.snapshot_deadline_s)},
                {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
            ],
            "resources": SNAPSHOT_RESOURCES,
            "volumeMounts": [{"name": "scripts", "mountPath": SCRIPTS_DIR, "readOnly": True}],
        }
        pod = _pod(
            container,
            [_scripts_volume(self.scripts_name, SNAPSHOT_SCRIPT)],
            service_account=object_name,
            api_token=True,
        )
        self.cron_jobs.append(
            k8s.batch.v1.CronJob(
                f"{self.name}-snapshots",
                metadata=self._meta(object_name, SNAPSHOT_LABELS),
                spec=cron_job_spec(b.schedule, b.snapshot_deadline_s + DEADLINE_MARGIN_S, SNAPSHOT_LABELS, pod),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[binding, self.scripts]),
            )
        )
        api_ports = [{"protocol": "TCP", "port": p} for p in API_SERVER_PORTS]
        # Without kubernetesApiCidrs the API server may be anywhere (EKS: ENIs in the VPC, or a public endpoint);
        # the token it carries can only touch snapshots.
        to = [{"ipBlock": {"cidr": c}} for c in b.kubernetes_api_cidrs]
        self._egress("snapshots", object_name, SNAPSHOT_LABELS, {**({"to": to} if to else {}), "ports": api_ports})

    def _dumps(self, object_name: str, database_url: pulumi.Output[str]) -> None:
        """pg_dump daily; with a bucket, into a scratch volume and then to S3, else onto a claim of its own."""
        a, b = self.args, self.args.backups
        dsn: pulumi.Output[str] = pulumi.Output.secret(database_url.apply(url_without_password))
        passfile: pulumi.Output[str] = pulumi.Output.secret(database_url.apply(passfile_line))
        credentials = k8s.core.v1.Secret(
            f"{self.name}-database-credentials",
            metadata=self._meta(f"{object_name}-credentials", DUMP_LABELS),
            type="Opaque",
            string_data={DSN_KEY: dsn, PASSFILE_KEY: passfile},
            opts=self.child,
        )
        waits: list[pulumi.Resource] = [credentials, self.scripts]
        if b.bucket is None:
            backups_volume: dict[str, Any] = {"persistentVolumeClaim": {"claimName": object_name}}
            waits.append(
                k8s.core.v1.PersistentVolumeClaim(
                    f"{self.name}-database-backups",
                    metadata=self._meta(object_name, DUMP_LABELS),
                    spec={
                        "accessModes": ["ReadWriteOnce"],
                        "storageClassName": a.storage_class,
                        "resources": {"requests": {"storage": b.database_volume_size}},
                    },
                    # The dumps outlive `pulumi destroy`, like the data volume; production refuses to delete them at all.
                    opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True, protect=a.production),
                )
            )
        else:
            # Scratch space for tonight's dump only: the copy that counts is the one in the bucket.
            backups_volume = {"emptyDir": {"sizeLimit": b.database_volume_size}}
        dump = {
            "name": "pg-dump",
            "image": b.database_image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["sh", f"{SCRIPTS_DIR}/{DUMP_SCRIPT}"],
            "env": [
                {"name": "DATABASE_DSN_FILE", "value": f"{DATABASE_DIR}/{DSN_KEY}"},
                {"name": "DATABASE_PASSFILE", "value": f"{DATABASE_DIR}/{PASSFILE_KEY}"},
                {"name": "BACKUP_DIR", "value": BACKUPS_DIR},
                {"name": "RETENTION", "value": str(b.retention)},
                {"name": "PGCONNECT_TIMEOUT", "value": "30"},
                {"name": "TMPDIR", "value": TMP_DIR},
            ],
            "resources": DUMP_RESOURCES,
            "volumeMounts": [
                {"name": "scripts", "mountPath": SCRIPTS_DIR, "readOnly": True},
                {"name": "backups", "mountPath": BACKUPS_DIR},
                {"name": "database", "mountPath": DATABASE_DIR, "readOnly": True},
                {"name": "tmp", "mountPath": TMP_DIR},
            ],
        }
        scripts = [DUMP_SCRIPT] if b.bucket is None else [DUMP_SCRIPT, COPY_SCRIPT]
        volumes = [
            {
                "name": "scripts",
                "configMap": {
                    "name": self.scripts_name,
                    "defaultMode": 0o444,
                    "items": [{"key": k, "path": k} for k in scripts],
                },
            },
            {"name": "backups", **backups_volume},
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
            {
                "name": "database",
                "secret": {
                    "secretName": f"{object_name}-credentials",
                    "defaultMode": 0o440,
                    "items": [{"key": k, "path": k} for k in (DSN_KEY, PASSFILE_KEY)],
                },
            },
        ]
        database_rule = {
            "to": [{"ipBlock": {"cidr": c}} for c in a.database.egress_cidrs],
            "ports": [{"protocol": "TCP", "port": a.database.port}],
        }
        if b.bucket is None:
            pod = _pod(dump, volumes, service_account=None)
            self._egress("database-backups", object_name, DUMP_LABELS, database_rule)
        else:
            # The dump first (an init container), then the copy to the bucket, in the same pod and scratch volume.
            copy = self._copy_container(
                b.bucket,
                "dumps",
                [
                    {"name": "BACKUP_DIR", "value": BACKUPS_DIR},
                    {"name": "DUMPS_PREFIX", "value": b.bucket.database_prefix},
                ],
                [{"name": "backups", "mountPath": BACKUPS_DIR, "readOnly": True}],
            )
            pod = _pod(copy, volumes, f"{a.name_prefix}-backups", init=[dump])
            waits += [self.account] if self.account else []
            self._egress("database-backups", object_name, DUMP_LABELS, database_rule, self._bucket_egress(b.bucket))
        self.cron_jobs.append(
            k8s.batch.v1.CronJob(
                f"{self.name}-database-dumps",
                metadata=self._meta(object_name, DUMP_LABELS),
                spec=cron_job_spec(b.schedule, DUMP_DEADLINE_S, DUMP_LABELS, pod),
                opts=pulumi.ResourceOptions(parent=self, depends_on=waits),
            )
        )

    @property
    def scripts_name(self) -> str:
        return f"{self.args.name_prefix}-backup-scripts"
