"""Backups: the CronJobs and what they may do, the snapshot script against an API server, the dump script against a
real PostgreSQL (tests/postgres_server.py), and restoring the data volume from a snapshot.

No Kubernetes API server runs here, so the snapshot script talks HTTPS to a stand-in that keeps VolumeSnapshots in
memory, plays the snapshot controller, and records every request; each request is then checked against the Role
the program grants, and every object the script creates against the upstream VolumeSnapshot CRD.
"""
from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives import serialization

from infra.components.backups import DUMP_LABELS, JOBS_DIR, SNAPSHOT_LABELS
from infra.tools.synth import Synthesis, synthesize
from tests.e2e.test_tls import issue, make_ca
from tests.infra.conftest import pod_spec
from tests.infra.crd_validation import validate
from tests.postgres_server import PostgresServer

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "sa-token-for-the-snapshot-job"
NAMESPACE = "clawbot-dev"
SNAPSHOTS = f"/apis/snapshot.storage.k8s.io/v1/namespaces/{NAMESPACE}/volumesnapshots"


def cron_pod(s: Synthesis, name: str) -> dict[str, Any]:
    return s.one("CronJob", name).manifest["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# -- what the program declares -------------------------------------------------------------------------------------


def test_a_daily_snapshot_job_runs_restricted_with_a_role_that_allows_only_snapshots(dev: Synthesis) -> None:
    cron = dev.one("CronJob", "clawbot-snapshots").manifest["spec"]
    assert (cron["schedule"], cron["timeZone"], cron["concurrencyPolicy"]) == ("17 3 * * *", "Etc/UTC", "Forbid")
    pod = cron_pod(dev, "clawbot-snapshots")
    (c,) = pod["containers"]
    assert pod["serviceAccountName"] == "clawbot-snapshots" and pod["automountServiceAccountToken"] is True
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False and "limits" in c["resources"]
    assert c["image"] == "python:3.13-alpine" and c["command"] == ["python", "/opt/clawbot/volume_snapshot.py"]
    assert env_of(c) | {"WAIT_SECONDS": "-"} == {"PVC_NAME": "clawbot-data", "SNAPSHOT_CLASS": "csi-aws-vsc", "RETENTION": "7",
                                                 "WAIT_SECONDS": "-", "PYTHONDONTWRITEBYTECODE": "1"}
    # The script the pod runs is the file the tests below run.
    shipped = dev.one("ConfigMap", "clawbot-backup-scripts").manifest["data"]["volume_snapshot.py"]
    assert shipped == (JOBS_DIR / "volume_snapshot.py").read_text()
    role = dev.one("Role", "clawbot-snapshots").manifest
    assert role["rules"] == [
        {"apiGroups": ["snapshot.storage.k8s.io"], "resources": ["volumesnapshots"], "verbs": ["create", "list", "delete"]},
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "resourceNames": ["clawbot-data"], "verbs": ["get"]},
    ]
    binding = dev.one("RoleBinding", "clawbot-snapshots").manifest
    assert binding["roleRef"]["name"] == "clawbot-snapshots"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "clawbot-snapshots", "namespace": NAMESPACE}]
    egress = dev.one("NetworkPolicy", "clawbot-snapshots-egress").manifest["spec"]
    assert egress["podSelector"]["matchLabels"] == SNAPSHOT_LABELS
    assert [sorted(p["port"] for p in rule["ports"]) for rule in egress["egress"]] == [[53, 53], [443, 6443]]


def test_a_daily_database_dump_reads_the_url_from_the_secret_and_has_no_kubernetes_credentials(prod: Synthesis) -> None:
    pod = cron_pod(prod, "clawbot-database-backups")
    (c,) = pod["containers"]
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    assert c["image"] == "postgres:17-alpine" and c["command"] == ["sh", "/opt/clawbot/database_dump.sh"]
    env = env_of(c)
    assert (env["DATABASE_URL_FILE"], env["BACKUP_DIR"], env["RETENTION"]) == ("/var/run/clawbot/database/url", "/backups", "14")
    assert c["securityContext"]["readOnlyRootFilesystem"] and pod["securityContext"]["runAsNonRoot"]
    claim = prod.one("PersistentVolumeClaim", "clawbot-database-backups")
    assert claim.options.protect and claim.options.retain_on_delete  # production: dumps outlive destroy
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert volumes["backups"]["persistentVolumeClaim"]["claimName"] == "clawbot-database-backups"
    assert volumes["database"]["secret"] == {"secretName": "clawbot-database", "defaultMode": 0o440,
                                             "items": [{"key": "url", "path": "url"}]}
    assert mounts["database"] == "/var/run/clawbot/database"
    egress = prod.one("NetworkPolicy", "clawbot-database-backups-egress").manifest["spec"]
    assert egress["podSelector"]["matchLabels"] == DUMP_LABELS
    assert egress["egress"][1] == {"to": [{"ipBlock": {"cidr": "10.0.64.0/20"}}], "ports": [{"protocol": "TCP", "port": 5432}]}
    assert prod.find("CronJob", "clawbot-snapshots") == []  # EFS has no CSI snapshots (Pulumi.prod.yaml says why)


def test_without_a_snapshot_class_or_a_database_there_is_nothing_to_back_up() -> None:
    s = synthesize("dev", overrides={"backupSnapshotClass": ""})
    assert s.find("CronJob") == [] and s.find("Role") == [] and s.find("ConfigMap", "clawbot-backup-scripts") == []


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"backupSchedule": "daily"}, "clawbot:backupSchedule must be a five-field cron schedule"),
        ({"backupSchedule": "0 3 * * MON"}, "clawbot:backupSchedule must be a five-field cron schedule"),
        ({"backupSnapshotClass": "Snap Class"}, "clawbot:backupSnapshotClass must name a VolumeSnapshotClass"),
        ({"backupRetention": 0}, "clawbot:backupRetention must be between 1 and 90, got 0"),
        ({"backupImage": "python:latest"}, "clawbot:backupImage must pin a tag or digest in production"),
        ({"databaseBackupVolumeSize": "512Mi"}, "clawbot:databaseBackupVolumeSize must be at least 1Gi"),
        ({"dataRestoreSnapshot": "Bad_Name"}, "clawbot:dataRestoreSnapshot must name a VolumeSnapshot"),
    ],
)
def test_bad_backup_settings_are_refused_naming_the_key(changes: dict[str, Any], message: str) -> None:
    from infra.settings import ConfigError, parse_settings
    from infra.tools.synth import read_stack_config

    with pytest.raises(ConfigError) as err:
        parse_settings({**read_stack_config("prod"), **changes}, stack="prod")
    assert message in str(err.value)


# -- the snapshot script, against a stand-in API server ------------------------------------------------------------


@dataclass
class FakeApi:
    """VolumeSnapshots in memory; the snapshot controller marks a new one ready (or failed) on its second poll."""

    outcome: str = "ready"  # or "error"
    pvc_exists: bool = True
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, str, str | None]] = field(default_factory=list)  # verb, group, resource, name
    created: list[dict[str, Any]] = field(default_factory=list)
    polls: dict[str, int] = field(default_factory=dict)
    clock: int = 0

    def seed(self, name: str, *, ready: bool = True, error: bool = False, labelled: bool = True) -> None:
        self.clock += 1
        labels = {**SNAPSHOT_LABELS, "clawbot.dev/snapshot-of": "clawbot-data"} if labelled else {"made-by": "hand"}
        status = {"error": {"message": "driver failed"}} if error else {"readyToUse": ready}
        self.snapshots[name] = {"metadata": {"name": name, "labels": labels,
                                             "creationTimestamp": f"2026-01-01T00:00:{self.clock:02d}Z"}, "status": status}

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
            self.clock += 1
            self.snapshots[body["metadata"]["name"]] = {
                **body, "metadata": {**body["metadata"], "creationTimestamp": f"2026-01-01T00:00:{self.clock:02d}Z"}}
            return 201, body
        if parts.path == SNAPSHOTS and method == "GET":
            self.requests.append(("list", "snapshot.storage.k8s.io", "volumesnapshots", None))
            items = list(self.snapshots.values())
            if "fieldSelector" in query:
                name = query["fieldSelector"].removeprefix("metadata.name=")
                items = [s for s in items if s["metadata"]["name"] == name]
                self.polls[name] = self.polls.get(name, 0) + 1
                if items and self.polls[name] >= 2:  # the controller got to it
                    items[0]["status"] = ({"readyToUse": True, "restoreSize": "10Gi"} if self.outcome == "ready"
                                          else {"readyToUse": False, "error": {"message": "the EBS snapshot failed"}})
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

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self._answer(401, {"reason": "Unauthorized"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            self._answer(*api.handle(self.command, self.path, body))

        def _answer(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:
            pass

    ca = make_ca()
    cert, key, _ = issue(ca, tmp_path, "apiserver")
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(TOKEN)
    (account / "namespace").write_text(NAMESPACE)
    (account / "ca.crt").write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(server.server_address[1]),
           "SERVICE_ACCOUNT_DIR": str(account), "PVC_NAME": "clawbot-data", "SNAPSHOT_CLASS": "csi-aws-vsc",
           "RETENTION": "3", "WAIT_SECONDS": "60", "POLL_SECONDS": "0.01"}
    try:
        yield api, env
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def run_snapshot_job(env: dict[str, str]) -> tuple[int, list[dict[str, Any]]]:
    done = subprocess.run([sys.executable, str(JOBS_DIR / "volume_snapshot.py")], env={"PATH": os.environ["PATH"], **env},
                          capture_output=True, text=True, timeout=120)
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def allowed(role: dict[str, Any], verb: str, group: str, resource: str, name: str | None) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               and ("resourceNames" not in r or name in r["resourceNames"]) for r in role["rules"])


def test_the_job_snapshots_the_claim_waits_for_it_and_keeps_the_newest(api_server: tuple[FakeApi, dict[str, str]],
                                                                       dev: Synthesis) -> None:
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
    assert [e["event"] for e in events] == ["snapshot-created", "snapshot-ready", "snapshots-pruned"]
    # Three kept (the new one and the two newest old ones); the two oldest and the failed one older still go; a
    # snapshot someone made by hand (without the job's labels) is never touched.
    assert sorted(api.snapshots) == sorted([new, "clawbot-data-old-2", "clawbot-data-old-3", "by-hand"])
    # What the API server would accept: the object against the upstream CRD, every request against the Role.
    report = validate({**created, "metadata": {**created["metadata"], "namespace": NAMESPACE}})
    assert report.errors == [] and created["spec"] == {"volumeSnapshotClassName": "csi-aws-vsc",
                                                       "source": {"persistentVolumeClaimName": "clawbot-data"}}
    role = dev.one("Role", "clawbot-snapshots").manifest
    assert all(allowed(role, *r) for r in api.requests), [r for r in api.requests if not allowed(role, *r)]


def test_a_failed_snapshot_fails_the_job_and_prunes_nothing(api_server: tuple[FakeApi, dict[str, str]]) -> None:
    api, env = api_server
    api.outcome = "error"
    for i in range(5):
        api.seed(f"clawbot-data-old-{i}")
    code, events = run_snapshot_job(env)
    assert code == 1 and "the EBS snapshot failed" in events[-1]["error"]
    assert len(api.snapshots) == 6 and not any(r[0] == "delete" for r in api.requests)


def test_a_missing_claim_or_a_wrong_token_fails_before_anything_is_made(api_server: tuple[FakeApi, dict[str, str]],
                                                                       tmp_path: Path) -> None:
    api, env = api_server
    api.pvc_exists = False
    code, events = run_snapshot_job(env)
    assert code == 1 and "persistentvolumeclaims/clawbot-data answered 404" in events[-1]["error"] and api.created == []
    api.pvc_exists = True
    (Path(env["SERVICE_ACCOUNT_DIR"]) / "token").write_text("stolen")
    code, events = run_snapshot_job(env)
    assert code == 1 and "answered 401" in events[-1]["error"] and api.created == []


# -- the dump script, against a real PostgreSQL --------------------------------------------------------------------


def dump_job(url: str, backups: Path, bin_dir: Path, retention: int = 2) -> subprocess.CompletedProcess[str]:
    url_file = backups.parent / "url"  # as the Secret is mounted
    url_file.write_text(url)
    return subprocess.run(["sh", str(JOBS_DIR / "database_dump.sh")], capture_output=True, text=True, timeout=120,
                          env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "DATABASE_URL_FILE": str(url_file),
                               "BACKUP_DIR": str(backups), "RETENTION": str(retention), "PGCONNECT_TIMEOUT": "5"})


def test_the_dump_job_writes_a_restorable_dump_and_keeps_the_newest(postgres_server: PostgresServer, postgres_url: str,
                                                                     tmp_path: Path) -> None:
    url, bin_dir = postgres_url, postgres_server.bin_dir
    psql = lambda target, sql: subprocess.run([bin_dir / "psql", target, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],  # noqa: E731
                                              check=True, capture_output=True, text=True, timeout=60).stdout
    psql(url, "CREATE TABLE conversations (id serial PRIMARY KEY, body text); "
              "INSERT INTO conversations (body) SELECT 'turn ' || g FROM generate_series(1, 50) g")
    backups = tmp_path / "backups"
    backups.mkdir()
    for stamp in ("20250101T031700Z", "20250102T031700Z"):
        (backups / f"clawbot-{stamp}.dump").write_text("an older dump")
    (backups / "notes.txt").write_text("not a dump: never touched")
    done = dump_job(url, backups, bin_dir)
    assert done.returncode == 0, done.stderr
    dumps = sorted(p.name for p in backups.glob("clawbot-*.dump"))
    assert len(dumps) == 2 and dumps[0] == "clawbot-20250102T031700Z.dump"  # the oldest went, the new one is last
    assert (backups / "notes.txt").exists() and "removed clawbot-20250101T031700Z.dump" in done.stdout
    # The documented restore (docs/operations/backups.md): into a new database, every row back.
    restored_db = postgres_server.create_database()
    try:
        restored = postgres_server.url(restored_db)
        subprocess.run([bin_dir / "pg_restore", "--no-owner", "--no-acl", "--exit-on-error", "--single-transaction",
                        f"--dbname={restored}", backups / dumps[1]], check=True, capture_output=True, timeout=120)
        assert psql(restored, "SELECT count(*) FROM conversations").strip() == "50"
    finally:
        postgres_server.drop_database(restored_db)


def test_a_failed_dump_leaves_no_file_and_the_old_dumps(postgres_server: PostgresServer, postgres_url: str,
                                                         tmp_path: Path) -> None:
    url, bin_dir = postgres_url, postgres_server.bin_dir
    backups = tmp_path / "backups"
    backups.mkdir()
    (backups / "clawbot-20250101T031700Z.dump").write_text("an older dump")
    done = dump_job(url.rsplit("/", 1)[0] + "/no_such_database", backups, bin_dir, retention=1)
    assert done.returncode != 0
    assert sorted(p.name for p in backups.iterdir()) == ["clawbot-20250101T031700Z.dump"]  # no partial file either


# -- restore -------------------------------------------------------------------------------------------------------


def test_restoring_makes_a_new_claim_from_the_snapshot_and_points_everything_at_it(dev: Synthesis) -> None:
    s = synthesize("dev", overrides={"dataRestoreSnapshot": "clawbot-data-20260101-031700"})
    restored = s.one("PersistentVolumeClaim", "clawbot-data-20260101-031700-restored").manifest["spec"]
    assert restored["dataSource"] == {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                                      "name": "clawbot-data-20260101-031700"}
    assert restored["resources"] == dev.one("PersistentVolumeClaim", "clawbot-data").manifest["spec"]["resources"]
    assert s.one("PersistentVolumeClaim", "clawbot-data").manifest == dev.one("PersistentVolumeClaim", "clawbot-data").manifest
    volumes = {v["name"]: v for v in pod_spec(s)["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "clawbot-data-20260101-031700-restored"
    # From now on the nightly snapshot is of the claim in use, and the Role reaches that claim only.
    assert env_of(cron_pod(s, "clawbot-snapshots")["containers"][0])["PVC_NAME"] == "clawbot-data-20260101-031700-restored"
    assert s.one("Role").manifest["rules"][1]["resourceNames"] == ["clawbot-data-20260101-031700-restored"]
    assert "chat-data-restored" in s.one("Deployment", "clawbot").depends_on
