"""Data settings: the chat pods' data volume, and what must survive: the conversation database, volume snapshots,
database dumps, and the copies of both that leave the cluster (an S3 bucket the program does not own).

The database URL is a secret (it holds a password): `load_settings` reads it, `database_connection` checks its
shape without ever putting the URL in a message, and only whether one is configured (and its port, for the
NetworkPolicy) reaches StackSettings.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from infra.images import parse_image
from infra.settings.values import (
    DNS_SUBDOMAIN,
    ConfigError,
    Raw,
    choice,
    cidrs,
    config_key,
    image_reference,
    integer,
    memory_bytes,
    role_arn,
    text,
)

ACCESS_MODES = ("ReadWriteOnce", "ReadWriteMany")
DATABASE_URL_KEY = "conversationDatabaseUrl"
DATABASE_SCHEMES = ("postgresql", "postgres")
POSTGRES_PORT = 5432
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX = re.compile(r"^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*$")
_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d$")
# Minute hour day-of-month month day-of-week, numbers with * , - / only (no names): what CronJob accepts everywhere.
_CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")


@dataclass(frozen=True)
class DataVolumeSettings:
    size: str
    access_mode: str  # ReadWriteMany when replicas may land on several nodes
    storage_class: str


@dataclass(frozen=True)
class BucketSettings:
    """Where backups leave the cluster: an S3 bucket made outside the program, versioned, with lifecycle rules that
    expire the dumps and the replaced data files after `retention_days` (the `backups` stack output spells them)."""

    bucket: str
    prefix: str  # no leading or trailing '/'; '' for the bucket's root
    region: str
    retention_days: int
    role_arn: str  # IRSA: annotated on the backup jobs' ServiceAccount; '' for Pod Identity
    egress_cidrs: tuple[str, ...]  # where the upload jobs may reach 443 (S3, STS); empty: any address
    upload_image: str  # the aws CLI

    def _key(self, part: str) -> str:
        return f"{self.prefix}/{part}/" if self.prefix else f"{part}/"

    @property
    def database_prefix(self) -> str:
        return self._key("database")

    @property
    def data_prefix(self) -> str:
        return self._key("data")

    def url(self, key_prefix: str) -> str:
        return f"s3://{self.bucket}/{key_prefix}"

    def lifecycle(self) -> dict[str, Any]:
        """The lifecycle configuration the bucket must carry (`aws s3api put-bucket-lifecycle-configuration`).

        Dumps are dated objects: each expires `retention_days` after it was written. The data files are a mirror
        (`aws s3 sync --delete`): the current files never expire, a replaced or deleted one is kept as a noncurrent
        version for `retention_days`. Both clean up what expiring leaves behind.
        """
        days = self.retention_days
        return {
            "Rules": [
                {
                    "ID": "clawbot-database-dumps",
                    "Status": "Enabled",
                    "Filter": {"Prefix": self.database_prefix},
                    "Expiration": {"Days": days},
                    "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
                    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                },
                {
                    "ID": "clawbot-data-files",
                    "Status": "Enabled",
                    "Filter": {"Prefix": self.data_prefix},
                    "NoncurrentVersionExpiration": {"NoncurrentDays": days},
                    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                },
            ]
        }

    def policy(self) -> dict[str, Any]:
        """The IAM policy the backup role needs: write, read and list under the prefix, read the bucket's setup. No
        version is ever deleted for good (no s3:DeleteObjectVersion): the mirror's --delete only adds delete markers,
        and a dump is never deleted at all; the lifecycle rules alone expire them."""
        arn = f"arn:aws:s3:::{self.bucket}"
        write = ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"]
        return {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "MirrorDataFiles",
                    "Effect": "Allow",
                    "Action": [*write, "s3:DeleteObject"],
                    "Resource": [f"{arn}/{self.data_prefix}*"],
                },
                {
                    "Sid": "WriteDumps",
                    "Effect": "Allow",
                    "Action": write,
                    "Resource": [f"{arn}/{self.database_prefix}*"],
                },
                {
                    "Sid": "ListAndCheck",
                    "Effect": "Allow",
                    "Action": ["s3:ListBucket", "s3:GetBucketVersioning", "s3:GetLifecycleConfiguration"],
                    "Resource": [arn],
                },
            ],
        }


@dataclass(frozen=True)
class BackupSettings:
    schedule: str  # cron, in the controller's time zone (UTC on EKS)
    snapshot_class: str  # VolumeSnapshotClass of the data volume's CSI driver; '' takes no snapshots
    restore_snapshot: str  # a VolumeSnapshot the data volume is restored from; '' mounts the original claim
    retention: int  # snapshots and dumps kept
    image: str  # runs the snapshot job (Python, standard library only)
    database_image: str  # runs pg_dump
    database_volume_size: str  # the dumps' PVC, when there is no bucket
    kubernetes_api_cidrs: tuple[str, ...]  # where the snapshot job may reach the API server; empty: anywhere on 443
    snapshot_deadline_s: int  # a snapshot not ready to use after this fails the job, and is deleted by the next
    bucket: BucketSettings | None  # where dumps and the data volume's files are copied; None keeps them in the cluster

    @property
    def snapshots(self) -> bool:
        return bool(self.snapshot_class)


def restored_claim_name(snapshot: str) -> str:
    """The claim made from a VolumeSnapshot for a restore; the chat pods mount it instead of the original."""
    return f"{snapshot}-restored"


@dataclass(frozen=True)
class DatabaseSettings:
    configured: bool  # a conversationDatabaseUrl is set: PostgreSQL holds the conversations, not SQLite
    port: int
    egress_cidrs: tuple[str, ...]  # where the database listens: the chat and dump pods may reach it there


def parse_data_volume(raw: Raw) -> DataVolumeSettings:
    size = text(raw, "dataVolumeSize", required=True)
    if memory_bytes("dataVolumeSize", size) < 1024**3:
        raise ConfigError(
            f"{config_key('dataVolumeSize')} must be at least 1Gi (the model cache lives there), got {size!r}"
        )
    access_mode = choice(raw, "dataAccessMode", ACCESS_MODES)
    storage_class = text(raw, "storageClass")
    if not DNS_SUBDOMAIN.match(storage_class):
        raise ConfigError(
            f"{config_key('storageClass')} must name a StorageClass (EKS clusters created at 1.30+ have no default class, so "
            f"an unnamed claim stays Pending), got {storage_class!r}; e.g. gp3 (EBS CSI, ReadWriteOnce) or efs-sc (EFS CSI, "
            "ReadWriteMany)"
        )
    return DataVolumeSettings(size=size, access_mode=access_mode, storage_class=storage_class)


def parse_backups(raw: Raw) -> BackupSettings:
    schedule = text(raw, "backupSchedule", required=True).strip()
    fields = schedule.split()
    if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
        raise ConfigError(
            f"{config_key('backupSchedule')} must be a five-field cron schedule like '17 3 * * *' (daily at "
            f"03:17 UTC), got {schedule!r}"
        )
    snapshot_class = text(raw, "backupSnapshotClass").strip()
    if snapshot_class and not DNS_SUBDOMAIN.match(snapshot_class):
        raise ConfigError(
            f"{config_key('backupSnapshotClass')} must name a VolumeSnapshotClass, got {snapshot_class!r}"
        )
    restore = text(raw, "dataRestoreSnapshot").strip()
    if restore and not DNS_SUBDOMAIN.match(restored_claim_name(restore)):
        raise ConfigError(
            f"{config_key('dataRestoreSnapshot')} must name a VolumeSnapshot in the namespace (kubectl get "
            f"volumesnapshots), got {restore!r}"
        )
    size = text(raw, "databaseBackupVolumeSize", required=True)
    if memory_bytes("databaseBackupVolumeSize", size) < 1024**3:
        raise ConfigError(f"{config_key('databaseBackupVolumeSize')} must be at least 1Gi, got {size!r}")
    return BackupSettings(
        schedule=schedule,
        snapshot_class=snapshot_class,
        restore_snapshot=restore,
        retention=integer(raw, "backupRetention", 1, 90),
        image=digest_reference(raw, "backupImage"),
        database_image=digest_reference(raw, "databaseBackupImage"),
        database_volume_size=size,
        kubernetes_api_cidrs=cidrs(raw, "kubernetesApiCidrs"),
        snapshot_deadline_s=60 * integer(raw, "backupSnapshotDeadlineMinutes", 10, 1440),
        bucket=parse_bucket(raw),
    )


def digest_reference(raw: Raw, name: str) -> str:
    """A backup image, pinned by digest: the jobs run unattended every night, so a moved tag would run unreviewed."""
    value = image_reference(name, raw[name], production=True)
    if parse_image(value).digest is None:
        raise ConfigError(
            f"{config_key(name)} must be pinned by digest (IMAGE:TAG@sha256:<64 hex>; `docker buildx imagetools "
            f"inspect {value}` prints it), got {value!r}"
        )
    return value


def parse_bucket(raw: Raw) -> BucketSettings | None:
    url = text(raw, "backupBucket").strip()
    if not url:
        return None
    parts = urlsplit(url)
    bucket, prefix = parts.netloc, parts.path.strip("/")
    if parts.scheme != "s3" or parts.query or parts.fragment:
        raise ConfigError(
            f"{config_key('backupBucket')} must be an S3 URL like s3://acme-clawbot-backups/prod, got {url!r}"
        )
    if not _BUCKET.match(bucket) or ".." in bucket or _is_ip(bucket):
        raise ConfigError(
            f"{config_key('backupBucket')} names bucket {bucket!r}, which is not an S3 bucket name (3-63 "
            "lowercase letters, digits, '.' and '-')"
        )
    if prefix and not _PREFIX.match(prefix):
        raise ConfigError(
            f"{config_key('backupBucket')} has the key prefix {prefix!r}; use letters, digits and !_.*'()- "
            "between single '/'"
        )
    region = text(raw, "backupBucketRegion").strip()
    if not _REGION.match(region):
        raise ConfigError(
            f"{config_key('backupBucketRegion')} must be the bucket's region, like us-east-1, when "
            f"{config_key('backupBucket')} is set, got {region!r}"
        )
    role = role_arn(raw, "backupRoleArn", "clawbot-backups")
    return BucketSettings(
        bucket=bucket,
        prefix=prefix,
        region=region,
        retention_days=integer(raw, "backupBucketRetentionDays", 1, 3650),
        role_arn=role,
        egress_cidrs=cidrs(raw, "backupEgressCidrs"),
        upload_image=digest_reference(raw, "backupUploadImage"),
    )


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def parse_database(raw: Raw) -> DatabaseSettings:
    """What plain config says about the database; whether one is configured comes from the secret, later."""
    return DatabaseSettings(configured=False, port=POSTGRES_PORT, egress_cidrs=cidrs(raw, "databaseEgressCidrs"))


def database_connection(url: str | None, database: DatabaseSettings) -> DatabaseSettings:
    """`database` with the secret URL's presence and port; the URL's shape is checked, never echoed."""
    if not url:
        return database
    parts = urlsplit(url)
    if parts.scheme not in DATABASE_SCHEMES or not parts.hostname:
        got = f"scheme {parts.scheme!r}" if parts.scheme else "a value without a scheme"
        raise ConfigError(
            f"the secret {config_key(DATABASE_URL_KEY)} must be a postgresql://USER:PASSWORD@HOST:5432/DB "
            f"URL, got {got}{'' if parts.hostname else ' and no host'}"
        )
    try:
        port = parts.port or POSTGRES_PORT
    except ValueError:
        raise ConfigError(
            f"the secret {config_key(DATABASE_URL_KEY)} has a port that is not a number 1..65535"
        ) from None
    if not database.egress_cidrs:
        raise ConfigError(
            f"{config_key('databaseEgressCidrs')} must list the CIDRs the database listens on (e.g. the RDS subnets) when "
            f"{config_key(DATABASE_URL_KEY)} is set: the namespace's default-deny NetworkPolicy would drop every connection"
        )
    return DatabaseSettings(configured=True, port=port, egress_cidrs=database.egress_cidrs)
