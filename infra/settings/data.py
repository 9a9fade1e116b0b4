"""Data settings: the chat pods' data volume, and what must survive: the conversation database, volume snapshots,
database dumps.

The database URL is a secret (it holds a password): `load_settings` reads it, `database_connection` checks its
shape without ever putting the URL in a message, and only whether one is configured (and its port, for the
NetworkPolicy) reaches StackSettings.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

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
    text,
)

ACCESS_MODES = ("ReadWriteOnce", "ReadWriteMany")
DATABASE_URL_KEY = "conversationDatabaseUrl"
DATABASE_SCHEMES = ("postgresql", "postgres")
POSTGRES_PORT = 5432
# Minute hour day-of-month month day-of-week, numbers with * , - / only (no names): what CronJob accepts everywhere.
_CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")


@dataclass(frozen=True)
class DataVolumeSettings:
    size: str
    access_mode: str  # ReadWriteMany when replicas may land on several nodes
    storage_class: str


@dataclass(frozen=True)
class BackupSettings:
    schedule: str  # cron, in the controller's time zone (UTC on EKS)
    snapshot_class: str  # VolumeSnapshotClass of the data volume's CSI driver; '' takes no snapshots
    restore_snapshot: str  # a VolumeSnapshot the data volume is restored from; '' mounts the original claim
    retention: int  # snapshots and dumps kept
    image: str  # runs the snapshot job (Python, standard library only)
    database_image: str  # runs pg_dump
    database_volume_size: str
    kubernetes_api_cidrs: tuple[str, ...]  # where the snapshot job may reach the API server; empty: anywhere on 443

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
        raise ConfigError(f"{config_key('dataVolumeSize')} must be at least 1Gi (the model cache lives there), got {size!r}")
    access_mode = choice(raw, "dataAccessMode", ACCESS_MODES)
    storage_class = text(raw, "storageClass")
    if not DNS_SUBDOMAIN.match(storage_class):
        raise ConfigError(
            f"{config_key('storageClass')} must name a StorageClass (EKS clusters created at 1.30+ have no default class, so "
            f"an unnamed claim stays Pending), got {storage_class!r}; e.g. gp3 (EBS CSI, ReadWriteOnce) or efs-sc (EFS CSI, "
            "ReadWriteMany)"
        )
    return DataVolumeSettings(size=size, access_mode=access_mode, storage_class=storage_class)


def parse_backups(raw: Raw, production: bool) -> BackupSettings:
    schedule = text(raw, "backupSchedule", required=True).strip()
    fields = schedule.split()
    if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
        raise ConfigError(f"{config_key('backupSchedule')} must be a five-field cron schedule like '17 3 * * *' (daily at "
                          f"03:17 UTC), got {schedule!r}")
    snapshot_class = text(raw, "backupSnapshotClass").strip()
    if snapshot_class and not DNS_SUBDOMAIN.match(snapshot_class):
        raise ConfigError(f"{config_key('backupSnapshotClass')} must name a VolumeSnapshotClass, got {snapshot_class!r}")
    restore = text(raw, "dataRestoreSnapshot").strip()
    if restore and not DNS_SUBDOMAIN.match(restored_claim_name(restore)):
        raise ConfigError(f"{config_key('dataRestoreSnapshot')} must name a VolumeSnapshot in the namespace (kubectl get "
                          f"volumesnapshots), got {restore!r}")
    size = text(raw, "databaseBackupVolumeSize", required=True)
    if memory_bytes("databaseBackupVolumeSize", size) < 1024**3:
        raise ConfigError(f"{config_key('databaseBackupVolumeSize')} must be at least 1Gi, got {size!r}")
    return BackupSettings(
        schedule=schedule,
        snapshot_class=snapshot_class,
        restore_snapshot=restore,
        retention=integer(raw, "backupRetention", 1, 90),
        image=image_reference("backupImage", raw["backupImage"], production),
        database_image=image_reference("databaseBackupImage", raw["databaseBackupImage"], production),
        database_volume_size=size,
        kubernetes_api_cidrs=cidrs(raw, "kubernetesApiCidrs"),
    )


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
        raise ConfigError(f"the secret {config_key(DATABASE_URL_KEY)} must be a postgresql://USER:PASSWORD@HOST:5432/DB "
                          f"URL, got {got}{'' if parts.hostname else ' and no host'}")
    try:
        port = parts.port or POSTGRES_PORT
    except ValueError:
        raise ConfigError(f"the secret {config_key(DATABASE_URL_KEY)} has a port that is not a number 1..65535") from None
    if not database.egress_cidrs:
        raise ConfigError(
            f"{config_key('databaseEgressCidrs')} must list the CIDRs the database listens on (e.g. the RDS subnets) when "
            f"{config_key(DATABASE_URL_KEY)} is set: the namespace's default-deny NetworkPolicy would drop every connection"
        )
    return DatabaseSettings(configured=True, port=port, egress_cidrs=database.egress_cidrs)
