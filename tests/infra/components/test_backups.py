"""Backups: the CronJobs and what they may do, the snapshot script against an API server, the dump and copy jobs
against a real PostgreSQL (tests/postgres_server.py) and a real local S3 (moto's server, tests/aws_server.py), and
restoring the data volume from a snapshot and the database from the bucket (the runbook in docs/operations/backups.md,
run as written).

No Kubernetes API server runs here, so the snapshot script talks HTTPS to a stand-in that keeps VolumeSnapshots in
memory, plays the snapshot controller, and records every request; each request is then checked against the Role
the program grants, and every object the script creates against the upstream VolumeSnapshot CRD. The dump and copy
jobs run here as the synthesized CronJob says (tests/infra/pod_runner.py): its commands, env, scripts and Secrets.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest

from bench.waiting import wait_until
from infra.components.backups import DATA_COPY_LABELS, DUMP_LABELS, JOBS_DIR, SNAPSHOT_LABELS
from infra.images import parse_image
from infra.settings import ConfigError, parse_settings
from infra.tools.synth import Synthesis, read_stack_config, synthesize
from tests.aws_server import aws_env, aws_server  # noqa: F401  (fixtures)
from tests.infra.api_server import allowed, stand_in_api_server
from tests.infra.conftest import pod_spec
from tests.infra.crd_validation import validate
from tests.infra.pod_runner import cron_job_pod, run_pod
from tests.infra.test_releases import Stack, runbook
from tests.postgres_server import PostgresServer

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "sa-token-for-the-snapshot-job"
NAMESPACE = "clawbot-dev"
SNAPSHOTS = f"/apis/snapshot.storage.k8s.io/v1/namespaces/{NAMESPACE}/volumesnapshots"
BUCKET = "clawbot-backups-test"
BUCKET_CONFIG = {"backupBucket": f"s3://{BUCKET}/prod", "backupBucketRegion": "us-east-1"}
AWS_BIN = str(Path(sys.executable).parent)  # the aws CLI (requirements-dev.txt), as the upload image runs it


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


# -- what the program declares -------------------------------------------------------------------------------------


def test_a_daily_snapshot_job_runs_restricted_with_a_role_that_allows_only_snapshots(dev: Synthesis) -> None:
    cron = dev.one("CronJob", "clawbot-snapshots").manifest["spec"]
    assert (cron["schedule"], cron["timeZone"], cron["concurrencyPolicy"]) == ("17 3 * * *", "Etc/UTC", "Forbid")
    assert cron["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 3600 + 600  # the deadline, and a margin to prune
    pod = cron_job_pod(dev, "clawbot-snapshots")
    (c,) = pod["containers"]
    assert pod["serviceAccountName"] == "clawbot-snapshots" and pod["automountServiceAccountToken"] is True
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"
    }
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False and "limits" in c["resources"]
    assert c["image"].startswith("python:3.13-alpine@sha256:") and c["command"] == [
        "python",
        "/opt/clawbot/volume_snapshot.py",
    ]
    assert env_of(c) == {
        "PVC_NAME": "clawbot-data",
        "SNAPSHOT_CLASS": "csi-aws-vsc",
        "RETENTION": "7",
        "WAIT_SECONDS": "3600",
        "STUCK_AFTER_SECONDS": "3600",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    # The script the pod runs is the file the tests below run.
    shipped = dev.one("ConfigMap", "clawbot-backup-scripts").manifest["data"]["volume_snapshot.py"]
    assert shipped == (JOBS_DIR / "volume_snapshot.py").read_text()
    role = dev.one("Role", "clawbot-snapshots").manifest
    assert role["rules"] == [
        {
            "apiGroups": ["snapshot.storage.k8s.io"],
            "resources": ["volumesnapshots"],
            "verbs": ["create", "list", "delete"],
        },
        {
            "apiGroups": [""],
            "resources": ["persistentvolumeclaims"],
            "resourceNames": ["clawbot-data"],
            "verbs": ["get"],
        },
    ]
    binding = dev.one("RoleBinding", "clawbot-snapshots").manifest
    assert binding["roleRef"]["name"] == "clawbot-snapshots"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "clawbot-snapshots", "namespace": NAMESPACE}]
    egress = dev.one("NetworkPolicy", "clawbot-snapshots-egress").manifest["spec"]
    assert egress["podSelector"]["matchLabels"] == SNAPSHOT_LABELS
    assert [sorted(p["port"] for p in rule["ports"]) for rule in egress["egress"]] == [[53, 53], [443, 6443]]


def test_the_deadline_for_a_snapshot_is_a_setting() -> None:
    s = synthesize("dev", overrides={"backupSnapshotDeadlineMinutes": 180})
    cron = s.one("CronJob", "clawbot-snapshots").manifest["spec"]
    c = env_of(cron["jobTemplate"]["spec"]["template"]["spec"]["containers"][0])
    assert (c["WAIT_SECONDS"], c["STUCK_AFTER_SECONDS"]) == ("10800", "10800")
    assert cron["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 10800 + 600


def test_every_backup_image_is_pinned_by_digest(prod: Synthesis, dev: Synthesis) -> None:
    images = {
        c["image"] for s in (prod, dev) for cron in s.find("CronJob") for c in containers(cron_job_pod(s, cron.name))
    }
    assert len(images) == 3 and all(parse_image(i).digest for i in images), images  # python, postgres, aws-cli


def test_the_nightly_dump_reads_a_password_file_and_goes_to_the_bucket(prod: Synthesis) -> None:
    pod = cron_job_pod(prod, "clawbot-database-backups")
    (dump,), (copy,) = pod["initContainers"], pod["containers"]
    assert dump["image"].startswith("postgres:17-alpine@sha256:") and dump["command"] == [
        "sh",
        "/opt/clawbot/database_dump.sh",
    ]
    env = env_of(dump)
    assert (env["DATABASE_DSN_FILE"], env["DATABASE_PASSFILE"]) == (
        "/var/run/clawbot/database/dsn",
        "/var/run/clawbot/database/pgpass",
    )
    credentials = prod.one("Secret", "clawbot-database-backups-credentials").manifest["stringData"]
    url = prod.one("Secret", "clawbot-database").manifest["stringData"]["url"]
    password = urlsplit(url).password
    assert password and password not in credentials["dsn"] and credentials["pgpass"].endswith(f":clawbot:{password}\n")
    assert password not in json.dumps(pod)
    # Then the copy, with the IAM role of the backups' own account and no Kubernetes token.
    assert copy["image"].startswith("amazon/aws-cli:") and copy["command"] == [
        "sh",
        "/opt/clawbot/bucket_copy.sh",
        "dumps",
    ]
    assert env_of(copy) | {"HOME": "-"} == {
        "BUCKET": "acme-clawbot-backups",
        "AWS_REGION": "us-east-1",
        "RETENTION_DAYS": "30",
        "HOME": "-",
        "BACKUP_DIR": "/backups",
        "DUMPS_PREFIX": "prod/database/",
    }
    assert pod["serviceAccountName"] == "clawbot-backups" and pod["automountServiceAccountToken"] is False
    account = prod.one("ServiceAccount", "clawbot-backups").manifest
    assert account["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/clawbot-prod-backups"
    }
    # Tonight's dump waits in scratch space only: the dumps no longer sit on the data's file system.
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["backups"] and prod.find("PersistentVolumeClaim", "clawbot-database-backups") == []
    for c in (dump, copy):
        assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["runAsNonRoot"]
    egress = prod.one("NetworkPolicy", "clawbot-database-backups-egress").manifest["spec"]
    assert egress["podSelector"]["matchLabels"] == DUMP_LABELS
    assert egress["egress"][1:] == [
        {"to": [{"ipBlock": {"cidr": "10.0.64.0/20"}}], "ports": [{"protocol": "TCP", "port": 5432}]},
        {"ports": [{"protocol": "TCP", "port": 443}]},
    ]
    assert prod.find("CronJob", "clawbot-snapshots") == []  # EFS has no CSI snapshots (Pulumi.prod.yaml says why)


def test_the_data_volumes_files_are_copied_daily_from_a_read_only_mount(prod: Synthesis) -> None:
    pod = cron_job_pod(prod, "clawbot-data-backups")
    (copy,) = pod["containers"]
    assert copy["command"] == ["sh", "/opt/clawbot/bucket_copy.sh", "data"]
    assert (env_of(copy)["DATA_DIR"], env_of(copy)["DATA_PREFIX"]) == ("/data", "prod/data/")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "clawbot-data", "readOnly": True}
    assert {m["name"]: m.get("readOnly") for m in copy["volumeMounts"]}["data"] is True
    assert "affinity" not in pod  # EFS: any node
    egress = prod.one("NetworkPolicy", "clawbot-data-backups-egress").manifest["spec"]
    assert egress["podSelector"]["matchLabels"] == DATA_COPY_LABELS and egress["egress"][1] == {
        "ports": [{"protocol": "TCP", "port": 443}]
    }
    # On a ReadWriteOnce volume the copy runs on the chat pods' node; egress to the configured ranges only.
    s = synthesize("dev", overrides={**BUCKET_CONFIG, "backupEgressCidrs": ["52.216.0.0/15"]})
    affinity = cron_job_pod(s, "clawbot-data-backups")["affinity"]["podAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert affinity[0]["topologyKey"] == "kubernetes.io/hostname"
    assert s.one("NetworkPolicy", "clawbot-data-backups-egress").manifest["spec"]["egress"][1] == {
        "to": [{"ipBlock": {"cidr": "52.216.0.0/15"}}],
        "ports": [{"protocol": "TCP", "port": 443}],
    }


def test_the_backups_output_spells_what_the_bucket_and_its_role_must_carry(prod: Synthesis) -> None:
    out = prod.outputs["backups"]
    assert (out["databaseDumps"], out["dataFiles"]) == (
        "s3://acme-clawbot-backups/prod/database/",
        "s3://acme-clawbot-backups/prod/data/",
    )
    dumps, data = out["lifecycle"]["Rules"]
    assert dumps["Filter"] == {"Prefix": "prod/database/"} and dumps["Expiration"] == {"Days": 30}
    assert data["Filter"] == {"Prefix": "prod/data/"} and "Expiration" not in data  # the mirror's current files stay
    assert data["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    actions = {a for st in out["policy"]["Statement"] for a in st["Action"]}
    assert "s3:DeleteObjectVersion" not in actions and "s3:PutLifecycleConfiguration" not in actions
    assert out["serviceAccount"] == "system:serviceaccount:clawbot:clawbot-backups"


def test_without_a_bucket_dumps_stay_on_a_claim_of_their_own() -> None:
    s = synthesize(
        "dev",
        overrides={
            "conversationDatabaseUrl": "postgresql://u:pw@10.1.2.3:5432/db",
            "databaseEgressCidrs": ["10.1.2.0/24"],
        },
    )
    pod = cron_job_pod(s, "clawbot-database-backups")
    assert [c["name"] for c in containers(pod)] == ["pg-dump"] and "serviceAccountName" not in pod
    assert {v["name"]: v for v in pod["volumes"]}["backups"]["persistentVolumeClaim"][
        "claimName"
    ] == "clawbot-database-backups"
    assert s.find("CronJob", "clawbot-data-backups") == [] and s.outputs["backups"] is None


def test_without_a_snapshot_class_or_a_database_there_is_nothing_to_back_up() -> None:
    s = synthesize("dev", overrides={"backupSnapshotClass": ""})
    assert (
        s.find("CronJob") == []
        and s.find("Role", "clawbot-snapshots") == []
        and s.find("ConfigMap", "clawbot-backup-scripts") == []
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"backupSchedule": "daily"}, "clawbot:backupSchedule must be a five-field cron schedule"),
        ({"backupSchedule": "0 3 * * MON"}, "clawbot:backupSchedule must be a five-field cron schedule"),
        ({"backupSnapshotClass": "Snap Class"}, "clawbot:backupSnapshotClass must name a VolumeSnapshotClass"),
        ({"backupRetention": 0}, "clawbot:backupRetention must be between 1 and 90, got 0"),
        ({"backupImage": "python:latest"}, "clawbot:backupImage must pin a tag or digest in production"),
        ({"backupImage": "python:3.13-alpine"}, "clawbot:backupImage must be pinned by digest"),
        ({"backupUploadImage": "amazon/aws-cli:2.37.5"}, "clawbot:backupUploadImage must be pinned by digest"),
        ({"databaseBackupVolumeSize": "512Mi"}, "clawbot:databaseBackupVolumeSize must be at least 1Gi"),
        ({"dataRestoreSnapshot": "Bad_Name"}, "clawbot:dataRestoreSnapshot must name a VolumeSnapshot"),
        ({"backupBucket": "https://s3.amazonaws.com/b"}, "clawbot:backupBucket must be an S3 URL like s3://"),
        ({"backupBucket": "s3://Bad_Bucket/x"}, "names bucket 'Bad_Bucket', which is not an S3 bucket name"),
        ({"backupBucket": "s3://ok-bucket/a//b"}, "has the key prefix 'a//b'"),
        ({"backupBucketRegion": ""}, "clawbot:backupBucketRegion must be the bucket's region"),
        ({"backupRoleArn": "backups"}, "clawbot:backupRoleArn must be an IAM role ARN"),
        ({"backupBucketRetentionDays": 0}, "clawbot:backupBucketRetentionDays must be between 1 and 3650"),
        ({"backupSnapshotDeadlineMinutes": 5}, "clawbot:backupSnapshotDeadlineMinutes must be between 10 and 1440"),
    ],
)
def test_bad_backup_settings_are_refused_naming_the_key(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({**read_stack_config("prod"), **changes}, stack="prod")
    assert message in str(err.value)


# -- the snapshot script, against a stand-in API server ------------------------------------------------------------


def ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class FakeApi:
    """VolumeSnapshots in memory; the snapshot controller marks a new one ready (or failed) on its second poll."""

    outcome: str = "ready"  # or "error", or "stuck" (never ready, no error either)
    pvc_exists: bool = True
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, str, str | None]] = field(default_factory=list)  # verb, group, resource, name
    created: list[dict[str, Any]] = field(default_factory=list)
    polls: dict[str, int] = field(default_factory=dict)
    age: int = 48 * 3600  # seeded snapshots are made one after another, the first this long ago

    def seed(
        self, name: str, *, ready: bool = True, error: bool = False, labelled: bool = True, age_s: int | None = None
    ) -> None:
        self.age -= 60
        labels = {**SNAPSHOT_LABELS, "clawbot.dev/snapshot-of": "clawbot-data"} if labelled else {"made-by": "hand"}
        status = {"error": {"message": "driver failed"}} if error else {"readyToUse": ready}
        self.snapshots[name] = {
            "metadata": {"name": name, "labels": labels, "creationTimestamp": ago(age_s or self.age)},
            "status": status,
        }

    def handle(self, method: str, url: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if parts.path == f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims/clawbot-data":
            self.requests.append(("get", "", "persistentvolumeclaims", "clawbot-data"))
            return (200, {"kind": "PersistentVolumeClaim"}) if self.pvc_exists else (404, {"reason": "NotFound"})
        if parts.path == SNAPSHOTS and method == "POST":
            assert body is not None
            self.requests.append(("create", "snapshot.storage.k8s.io", "volumesnapshots", None))
            self.created.append(body)
            self.snapshots[body["metadata"]["name"]] = {
                **body,
                "metadata": {**body["metadata"], "creationTimestamp": ago(0)},
            }
            return 201, body
        if parts.path == SNAPSHOTS and method == "GET":
            self.requests.append(("list", "snapshot.storage.k8s.io", "volumesnapshots", None))
            items = list(self.snapshots.values())
            if "fieldSelector" in query:
                name = query["fieldSelector"].removeprefix("metadata.name=")
                items = [s for s in items if s["metadata"]["name"] == name]
                self.polls[name] = self.polls.get(name, 0) + 1
                if items and self.polls[name] >= 2 and self.outcome != "stuck":  # the controller got to it
                    items[0]["status"] = (
                        {"readyToUse": True, "restoreSize": "10Gi"}
                        if self.outcome == "ready"
                        else {"readyToUse": False, "error": {"message": "the EBS snapshot failed"}}
                    )
            if "labelSelector" in query:
                wanted = dict(pair.split("=", 1) for pair in query["labelSelector"].split(","))
                items = [s for s in items if wanted.items() <= s["metadata"]["labels"].items()]
            return 200, {"kind": "VolumeSnapshotList", "items": items}
        if parts.path.startswith(SNAPSHOTS + "/") and method == "DELETE":
            name = parts.path.rsplit("/", 1)[1]
            self.requests.append(("delete", "snapshot.storage.k8s.io", "volumesnapshots", name))
            return (200, self.snapshots.pop(name)) if name in self.snapshots else (404, {})
        return 404, {"reason": f"no route {method} {parts.path}"}


@pytest.fixture()
def api_server(tmp_path: Path) -> Iterator[tuple[FakeApi, dict[str, str]]]:
    api = FakeApi()
    with stand_in_api_server(api.handle, tmp_path, token=TOKEN, namespace=NAMESPACE) as server_env:
        yield (
            api,
            {
                **server_env,
                "PVC_NAME": "clawbot-data",
                "SNAPSHOT_CLASS": "csi-aws-vsc",
                "RETENTION": "3",
                "WAIT_SECONDS": "60",
                "STUCK_AFTER_SECONDS": "3600",
                "POLL_SECONDS": "0.01",
            },
        )


def run_snapshot_job(env: dict[str, str]) -> tuple[int, list[dict[str, Any]]]:
    done = subprocess.run(
        [sys.executable, str(JOBS_DIR / "volume_snapshot.py")],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_the_job_snapshots_the_claim_waits_for_it_and_keeps_the_newest(
    api_server: tuple[FakeApi, dict[str, str]], dev: Synthesis
) -> None:
    api, env = api_server
    api.seed("clawbot-data-failed", ready=False, error=True)
    for i in range(4):
        api.seed(f"clawbot-data-old-{i}")
    api.seed("by-hand", labelled=False)
    code, events = run_snapshot_job(env)
    assert code == 0, events
    (created,) = api.created
    new = created["metadata"]["name"]
    assert re.fullmatch(r"clawbot-data-\d{8}-\d{6}", new)
    assert [e["event"] for e in events] == [
        "snapshot-created",
        "stuck-snapshots-pruned",
        "snapshot-ready",
        "snapshots-pruned",
    ]
    # Three kept (the new one and the two newest old ones); the two oldest go, and so does the failed one, never ready
    # in a deadline long past; a snapshot someone made by hand (without the job's labels) is never touched.
    assert sorted(api.snapshots) == sorted([new, "clawbot-data-old-2", "clawbot-data-old-3", "by-hand"])
    # What the API server would accept: the object against the upstream CRD, every request against the Role.
    report = validate({**created, "metadata": {**created["metadata"], "namespace": NAMESPACE}})
    assert report.errors == [] and created["spec"] == {
        "volumeSnapshotClassName": "csi-aws-vsc",
        "source": {"persistentVolumeClaimName": "clawbot-data"},
    }
    role = dev.one("Role", "clawbot-snapshots").manifest
    assert all(allowed(role, *r) for r in api.requests), [r for r in api.requests if not allowed(role, *r)]


def test_a_failed_snapshot_fails_the_job_and_prunes_no_ready_one(api_server: tuple[FakeApi, dict[str, str]]) -> None:
    api, env = api_server
    api.outcome = "error"
    for i in range(5):
        api.seed(f"clawbot-data-old-{i}")
    code, events = run_snapshot_job(env)
    assert code == 1 and "the EBS snapshot failed" in events[-1]["error"]
    # The failed one is young: kept for a look until the deadline; every ready one stays.
    assert len(api.snapshots) == 6 and not any(r[0] == "delete" for r in api.requests)


def test_snapshots_stuck_past_the_deadline_are_pruned_even_by_a_failed_run(
    api_server: tuple[FakeApi, dict[str, str]],
) -> None:
    api, env = api_server
    api.outcome = "stuck"
    api.seed("clawbot-data-ready")
    api.seed("clawbot-data-stuck-long", ready=False, age_s=2 * 3600)  # never ready, no error: the driver lost it
    api.seed("clawbot-data-stuck-recent", ready=False, age_s=600)  # within the deadline: may still complete
    code, events = run_snapshot_job({**env, "WAIT_SECONDS": "0.2"})
    assert code == 1 and "was not ready to use after" in events[-1]["error"]
    assert ("delete", "snapshot.storage.k8s.io", "volumesnapshots", "clawbot-data-stuck-long") in api.requests
    assert "clawbot-data-stuck-long" not in api.snapshots
    assert {"clawbot-data-ready", "clawbot-data-stuck-recent", api.created[0]["metadata"]["name"]} <= set(api.snapshots)


def test_a_missing_claim_or_a_wrong_token_fails_before_anything_is_made(
    api_server: tuple[FakeApi, dict[str, str]],
) -> None:
    api, env = api_server
    api.pvc_exists = False
    code, events = run_snapshot_job(env)
    assert code == 1 and "persistentvolumeclaims/clawbot-data answered 404" in events[-1]["error"] and api.created == []
    api.pvc_exists = True
    (Path(env["SERVICE_ACCOUNT_DIR"]) / "token").write_text("stolen")
    code, events = run_snapshot_job(env)
    assert code == 1 and "answered 401" in events[-1]["error"] and api.created == []


# -- the dump and copy jobs, against a real PostgreSQL and a real local S3 ---------------------------------------


def psql(bin_dir: Path, target: str, sql: str) -> str:
    return subprocess.run(
        [bin_dir / "psql", target, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout


def seed_conversations(bin_dir: Path, url: str, rows: int = 50) -> None:
    psql(
        bin_dir,
        url,
        "CREATE TABLE conversations (id serial PRIMARY KEY, body text); "
        f"INSERT INTO conversations (body) SELECT 'turn ' || g FROM generate_series(1, {rows}) g",
    )


def make_bucket(s: Synthesis) -> Any:
    """The bucket as the docs say to make it: versioned, with the lifecycle the `backups` output spells."""
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration=s.outputs["backups"]["lifecycle"])
    return s3


def pg_dump_recording_its_argv(bin_dir: Path, shim_dir: Path) -> Path:
    """A pg_dump on PATH that records the argv and environment it is given, then runs the real one."""
    shim_dir.mkdir()
    record = shim_dir / "pg_dump.seen"
    shim = shim_dir / "pg_dump"
    shim.write_text(f'#!/bin/sh\n{{ printf "%s\\n" "$@"; env; }} >> "{record}"\nexec "{bin_dir / "pg_dump"}" "$@"\n')
    shim.chmod(0o755)
    return record


def wait_for_the_next_second() -> None:
    start = datetime.now(UTC).replace(microsecond=0)
    wait_until("the next second", lambda: datetime.now(UTC).replace(microsecond=0) != start, 5, poll_s=0.02)


def prod_with_database(url: str, **more: Any) -> Synthesis:
    return synthesize(
        "prod",
        overrides={**BUCKET_CONFIG, "conversationDatabaseUrl": url, "databaseEgressCidrs": ["127.0.0.0/8"], **more},
    )


def test_the_nightly_job_dumps_with_a_password_file_and_the_copy_lands_in_the_bucket(
    postgres_server: PostgresServer, postgres_url: str, aws_env: dict[str, str], tmp_path: Path
) -> None:
    bin_dir = postgres_server.bin_dir
    seed_conversations(bin_dir, postgres_url)
    s = prod_with_database(postgres_url)
    s3 = make_bucket(s)
    seen = pg_dump_recording_its_argv(bin_dir, tmp_path / "shim")
    run = run_pod(
        s,
        cron_job_pod(s, "clawbot-database-backups"),
        tmp_path / "pod",
        env={**aws_env, "PATH": f"{tmp_path / 'shim'}:{bin_dir}:{AWS_BIN}:{os.environ['PATH']}"},
    )
    assert run.ok, run.output()
    # The password was in neither pg_dump's argv nor its environment (scram-sha-256 auth: it came from the file).
    assert postgres_server.password not in seen.read_text() and "PGPASSFILE=" in seen.read_text()
    (obj,) = s3.list_objects_v2(Bucket=BUCKET, Prefix="prod/database/")["Contents"]
    assert re.fullmatch(r"prod/database/clawbot-\d{8}T\d{6}Z\.dump", obj["Key"])
    # What is in the bucket restores, every row.
    dump = tmp_path / "from-bucket.dump"
    s3.download_file(BUCKET, obj["Key"], str(dump))
    restored_db = postgres_server.create_database()
    try:
        restored = postgres_server.url(restored_db)
        subprocess.run(
            [
                bin_dir / "pg_restore",
                "--no-owner",
                "--no-acl",
                "--exit-on-error",
                "--single-transaction",
                f"--dbname={restored}",
                dump,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        assert psql(bin_dir, restored, "SELECT count(*) FROM conversations").strip() == "50"
    finally:
        postgres_server.drop_database(restored_db)


def test_a_bucket_without_its_retention_gets_nothing_and_the_job_says_what_is_missing(
    postgres_server: PostgresServer, postgres_url: str, aws_env: dict[str, str], tmp_path: Path
) -> None:
    bin_dir = postgres_server.bin_dir
    s = prod_with_database(postgres_url)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    path = f"{bin_dir}:{AWS_BIN}:{os.environ['PATH']}"
    run = run_pod(s, cron_job_pod(s, "clawbot-database-backups"), tmp_path / "a", env={**aws_env, "PATH": path})
    assert not run.ok and "must have versioning Enabled" in run.output()
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    rules = s.outputs["backups"]["lifecycle"]["Rules"]
    shorter = [{**rules[0], "Expiration": {"Days": 3}}, rules[1]]  # someone's rule that drops dumps after 3 days
    s3.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration={"Rules": shorter})
    run = run_pod(s, cron_job_pod(s, "clawbot-database-backups"), tmp_path / "b", env={**aws_env, "PATH": path})
    assert (
        not run.ok and "no enabled lifecycle rule for prod/database/ that expires dumps after 30 days" in run.output()
    )
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)


def test_the_data_files_are_mirrored_and_what_a_day_removes_stays_as_a_version(
    aws_env: dict[str, str], tmp_path: Path
) -> None:
    s = synthesize("prod", overrides=BUCKET_CONFIG)
    s3 = make_bucket(s)
    data = tmp_path / "data"
    (data / "models" / "qwen").mkdir(parents=True)
    (data / "models" / "qwen" / "model.safetensors").write_bytes(os.urandom(4096))
    (data / "models" / "qwen" / "config.json").write_text("{}")
    (data / "conversations.sqlite3").write_text("live SQLite: not consistent mid-write")
    pod = cron_job_pod(s, "clawbot-data-backups")
    env = {**aws_env, "PATH": f"{AWS_BIN}:{os.environ['PATH']}"}
    run = run_pod(s, pod, tmp_path / "pod1", env=env, claims={"clawbot-data": data})
    assert run.ok, run.output()
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="prod/data/")["Contents"])
    assert keys == ["prod/data/models/qwen/config.json", "prod/data/models/qwen/model.safetensors"]
    # A file deleted from the volume disappears from the mirror, and its version stays for the retention.
    (data / "models" / "qwen" / "config.json").unlink()
    assert run_pod(s, pod, tmp_path / "pod2", env=env, claims={"clawbot-data": data}).ok
    versions = s3.list_object_versions(Bucket=BUCKET, Prefix="prod/data/models/qwen/config.json")
    assert len(versions["Versions"]) == 1 and len(versions["DeleteMarkers"]) == 1
    # And the mirror comes back into an empty volume.
    restored = tmp_path / "restored"
    restored.mkdir()
    done = subprocess.run(
        ["sh", str(JOBS_DIR / "bucket_copy.sh"), "restore-data"],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **env,
            "BUCKET": BUCKET,
            "AWS_REGION": "us-east-1",
            "DATA_DIR": str(restored),
            "DATA_PREFIX": "prod/data/",
            "HOME": str(tmp_path),
        },
    )
    assert done.returncode == 0, done.stderr
    assert (restored / "models" / "qwen" / "model.safetensors").read_bytes() == (
        data / "models" / "qwen" / "model.safetensors"
    ).read_bytes()


def dump_script(
    postgres_server: PostgresServer, dsn: str, backups: Path, retention: int
) -> subprocess.CompletedProcess[str]:
    """infra/jobs/database_dump.sh as the pod runs it: the URL without its password and a password file, as mounted."""
    (backups.parent / "dsn").write_text(dsn)
    (backups.parent / "pgpass").write_text(f"*:*:*:postgres:{postgres_server.password}\n")
    return subprocess.run(
        ["sh", str(JOBS_DIR / "database_dump.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": f"{postgres_server.bin_dir}:{os.environ['PATH']}",
            "DATABASE_DSN_FILE": str(backups.parent / "dsn"),
            "DATABASE_PASSFILE": str(backups.parent / "pgpass"),
            "BACKUP_DIR": str(backups),
            "RETENTION": str(retention),
            "PGCONNECT_TIMEOUT": "5",
            "TMPDIR": str(backups.parent),
        },
    )


def test_on_a_claim_the_dump_keeps_the_newest_and_touches_nothing_else(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    seed_conversations(postgres_server.bin_dir, postgres_url, rows=7)
    backups = tmp_path / "backups"
    backups.mkdir()
    for stamp in ("20250101T031700Z", "20250102T031700Z"):
        (backups / f"clawbot-{stamp}.dump").write_text("an older dump")
    (backups / "notes.txt").write_text("not a dump: never touched")
    done = dump_script(postgres_server, postgres_url.replace(f":{postgres_server.password}", ""), backups, retention=2)
    assert done.returncode == 0, done.stderr
    dumps = sorted(p.name for p in backups.glob("clawbot-*.dump"))
    assert len(dumps) == 2 and dumps[0] == "clawbot-20250102T031700Z.dump"  # the oldest went, the new one is last
    assert (backups / "notes.txt").exists() and "removed clawbot-20250101T031700Z.dump" in done.stdout


def test_a_failed_dump_leaves_no_file_and_the_old_dumps(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    (backups / "clawbot-20250101T031700Z.dump").write_text("an older dump")
    dsn = postgres_url.rsplit("/", 1)[0].replace(f":{postgres_server.password}", "") + "/no_such_database"
    done = dump_script(postgres_server, dsn, backups, retention=1)
    assert done.returncode != 0 and "no_such_database" in done.stderr
    assert sorted(p.name for p in backups.iterdir()) == ["clawbot-20250101T031700Z.dump"]  # no partial file either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backups", "dsn", "pgpass"]  # the private copy is gone too


# -- restore -------------------------------------------------------------------------------------------------------


def test_restoring_makes_a_new_claim_from_the_snapshot_and_points_everything_at_it(dev: Synthesis) -> None:
    s = synthesize("dev", overrides={"dataRestoreSnapshot": "clawbot-data-20260101-031700"})
    restored = s.one("PersistentVolumeClaim", "clawbot-data-20260101-031700-restored").manifest["spec"]
    assert restored["dataSource"] == {
        "apiGroup": "snapshot.storage.k8s.io",
        "kind": "VolumeSnapshot",
        "name": "clawbot-data-20260101-031700",
    }
    assert restored["resources"] == dev.one("PersistentVolumeClaim", "clawbot-data").manifest["spec"]["resources"]
    assert (
        s.one("PersistentVolumeClaim", "clawbot-data").manifest
        == dev.one("PersistentVolumeClaim", "clawbot-data").manifest
    )
    volumes = {v["name"]: v for v in pod_spec(s)["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "clawbot-data-20260101-031700-restored"
    # From now on the nightly snapshot is of the claim in use, and the Role reaches that claim only.
    assert (
        env_of(cron_job_pod(s, "clawbot-snapshots")["containers"][0])["PVC_NAME"]
        == "clawbot-data-20260101-031700-restored"
    )
    assert s.one("Role", "clawbot-snapshots").manifest["rules"][1]["resourceNames"] == [
        "clawbot-data-20260101-031700-restored"
    ]
    assert "chat-data-restored" in s.one("Deployment", "clawbot").depends_on


def test_the_restore_runbook_brings_the_newest_dump_back_into_a_new_database(
    postgres_server: PostgresServer, postgres_url: str, aws_env: dict[str, str], tmp_path: Path
) -> None:
    bin_dir = postgres_server.bin_dir
    seed_conversations(bin_dir, postgres_url, rows=42)
    config = {**BUCKET_CONFIG, "conversationDatabaseUrl": postgres_url, "databaseEgressCidrs": ["127.0.0.0/8"]}
    stack = Stack(tmp_path, "prod", config, {})
    stack.run("pulumi up --yes")
    s = prod_with_database(postgres_url)  # the same program and config, with the secrets in memory to run the job
    make_bucket(s)
    path = f"{bin_dir}:{AWS_BIN}:{os.environ['PATH']}"
    for night in ("one", "two"):  # two nights: the runbook takes the newest
        run = run_pod(s, cron_job_pod(s, "clawbot-database-backups"), tmp_path / night, env={**aws_env, "PATH": path})
        assert run.ok, run.output()
        if night == "one":
            psql(bin_dir, postgres_url, "INSERT INTO conversations (body) VALUES ('written after the first night')")
            wait_for_the_next_second()  # dumps are named by the second
    target_db = postgres_server.create_database()  # the docs' step before the runbook: a new, empty database
    try:
        restore_url = postgres_server.url(target_db)
        stack.run(
            runbook("restore-database", "operations/backups.md"),
            **aws_env,
            RESTORE_URL=restore_url,
            PATH=f"{path}:{stack.env['PATH']}",
        )
        assert psql(bin_dir, restore_url, "SELECT count(*) FROM conversations").strip() == "43"
        # The stack now points at the restored database, and its last `up` rolled that in.
        assert json.loads((stack.state / "config.json").read_text())["conversationDatabaseUrl"] == restore_url
    finally:
        postgres_server.drop_database(target_db)
