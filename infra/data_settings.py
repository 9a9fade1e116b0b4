"""Stack settings for the data that must survive: the conversation database, data-volume snapshots, database dumps.

The database URL is a secret (it holds a password): `load_settings` reads it, `database_connection` checks its
shape without ever putting the URL in a message, and only whether one is configured (and its port, for the
NetworkPolicy) reaches StackSettings.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

from infra.release_settings import image_setting
from infra.settings import _DNS_SUBDOMAIN, ConfigError, _cidrs, _int, _key, _str, memory_bytes

DATABASE_URL_KEY = "conversationDatabaseUrl"
DATABASE_SCHEMES = ("postgresql", "postgres")
POSTGRES_PORT = 5432
# Minute hour day-of-month month day-of-week, numbers with * , - / only (no names): what CronJob accepts everywhere.
_CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")


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

    def data_claim(self, original: str) -> str:
        """The claim the chat pods mount: the original, or the one restored from `restore_snapshot`."""
        return f"{self.restore_snapshot}-restored" if self.restore_snapshot else original


@dataclass(frozen=True)
class DatabaseSettings:
    configured: bool  # a conversationDatabaseUrl is set: PostgreSQL holds the conversations, not SQLite
    port: int
    egress_cidrs: tuple[str, ...]  # where the database listens: the chat and dump pods may reach it there


def parse_backups(raw: Mapping[str, Any], production: bool) -> BackupSettings:
    schedule = _str(raw, "backupSchedule", required=True).strip()
    fields = schedule.split()
    if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
        raise ConfigError(f"{_key('backupSchedule')} must be a five-field cron schedule like '17 3 * * *' (daily at 03:17 "
                          f"UTC), got {schedule!r}")
    snapshot_class = _str(raw, "backupSnapshotClass").strip()
    if snapshot_class and not _DNS_SUBDOMAIN.match(snapshot_class):
        raise ConfigError(f"{_key('backupSnapshotClass')} must name a VolumeSnapshotClass, got {snapshot_class!r}")
    restore = _str(raw, "dataRestoreSnapshot").strip()
    if restore and not _DNS_SUBDOMAIN.match(f"{restore}-restored"):
        raise ConfigError(f"{_key('dataRestoreSnapshot')} must name a VolumeSnapshot in the namespace (kubectl get "
                          f"volumesnapshots), got {restore!r}")
    size = _str(raw, "databaseBackupVolumeSize", required=True)
    if memory_bytes("databaseBackupVolumeSize", size) < 1024**3:
        raise ConfigError(f"{_key('databaseBackupVolumeSize')} must be at least 1Gi, got {size!r}")
    return BackupSettings(
        schedule=schedule,
        snapshot_class=snapshot_class,
        restore_snapshot=restore,
        retention=_int(raw, "backupRetention", 1, 90),
        image=image_setting("backupImage", raw["backupImage"], production),
        database_image=image_setting("databaseBackupImage", raw["databaseBackupImage"], production),
        database_volume_size=size,
        kubernetes_api_cidrs=_cidrs(raw, "kubernetesApiCidrs"),
    )


def parse_database(raw: Mapping[str, Any]) -> DatabaseSettings:
    """What plain config says about the database; whether one is configured comes from the secret, later."""
    return DatabaseSettings(configured=False, port=POSTGRES_PORT, egress_cidrs=_cidrs(raw, "databaseEgressCidrs"))


def database_connection(url: str | None, database: DatabaseSettings) -> DatabaseSettings:
    """`database` with the secret URL's presence and port; the URL's shape is checked, never echoed."""
    if not url:
        return database
    parts = urlsplit(url)
    if parts.scheme not in DATABASE_SCHEMES or not parts.hostname:
        got = f"scheme {parts.scheme!r}" if parts.scheme else "a value without a scheme"
        raise ConfigError(f"the secret {_key(DATABASE_URL_KEY)} must be a postgresql://USER:PASSWORD@HOST:5432/DB URL, "
                          f"got {got}{'' if parts.hostname else ' and no host'}")
    try:
        port = parts.port or POSTGRES_PORT
    except ValueError:
        raise ConfigError(f"the secret {_key(DATABASE_URL_KEY)} has a port that is not a number 1..65535") from None
    if not database.egress_cidrs:
        raise ConfigError(
            f"{_key('databaseEgressCidrs')} must list the CIDRs the database listens on (e.g. the RDS subnets) when "
            f"{_key(DATABASE_URL_KEY)} is set: the namespace's default-deny NetworkPolicy would drop every connection"
        )
    return DatabaseSettings(configured=True, port=port, egress_cidrs=database.egress_cidrs)


def require_database(*, production: bool, max_replicas: int, database: DatabaseSettings) -> None:
    """Several production replicas share the conversations: SQLite on a shared volume serialises them, so refuse."""
    if production and max_replicas > 1 and not database.configured:
        raise ConfigError(
            f"a production stack with {_key('maxReplicas')} {max_replicas} needs a conversation database: set the secret "
            f"{_key(DATABASE_URL_KEY)} (`pulumi config set --secret {DATABASE_URL_KEY} postgresql://USER:PASSWORD@HOST:5432/DB`) "
            f"and {_key('databaseEgressCidrs')}, or set {_key('maxReplicas')} to 1 to keep SQLite"
        )
