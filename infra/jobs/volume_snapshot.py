"""Takes a VolumeSnapshot of one PVC, waits until it is ready to use, then deletes the oldest beyond the retention count.

Runs in the backup CronJob's pod (a small Python image, standard library only) under a ServiceAccount that may
create, list and delete VolumeSnapshots in its namespace and get the one PVC, nothing else. It exits non-zero when
the snapshot fails or is not ready in time, so the Job is marked failed, and then prunes no ready snapshot: the
snapshots kept are always the newest ones that are ready. A snapshot that is still not ready STUCK_AFTER_SECONDS
after it was made (failed, or stuck in the driver) is deleted by every run, the failed run included: it would
otherwise hold storage forever. Only snapshots this job made (its labels) are ever deleted.

Environment: PVC_NAME, SNAPSHOT_CLASS, RETENTION, WAIT_SECONDS, STUCK_AFTER_SECONDS, and the API server's address
that the kubelet gives every pod (KUBERNETES_SERVICE_HOST/PORT); the token, CA and namespace come from the
ServiceAccount mount.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

API_VERSION = "snapshot.storage.k8s.io/v1"
SNAPSHOT_OF = "clawbot.dev/snapshot-of"
JOB_LABELS = {"app.kubernetes.io/name": "clawbot", "app.kubernetes.io/component": "backup"}
POLL_SECONDS = float(os.environ.get("POLL_SECONDS", "10"))


class JobError(RuntimeError):
    pass


def log(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def setting(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise JobError(f"{name} is not set")
    return value


class Api:
    """The few Kubernetes API calls the job makes, authenticated with the pod's ServiceAccount token."""

    def __init__(self, account_dir: Path) -> None:
        host = setting("KUBERNETES_SERVICE_HOST")
        self.base = f"https://{f'[{host}]' if ':' in host else host}:{setting('KUBERNETES_SERVICE_PORT')}"
        self.account_dir = account_dir
        self.tls = ssl.create_default_context(cafile=str(account_dir / "ca.crt"))
        self.namespace = (account_dir / "namespace").read_text().strip()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, **query: str) -> dict[str, Any]:
        url = self.base + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        # The kubelet rotates the projected token; read it for every call.
        token = (self.account_dir / "token").read_text().strip()
        request = urllib.request.Request(
            url,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, context=self.tls, timeout=30) as response:
                answer: dict[str, Any] = json.loads(response.read() or b"{}")
                return answer
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise JobError(f"{method} {path} answered {exc.code}: {detail}") from None

    def snapshots_path(self) -> str:
        return f"/apis/{API_VERSION}/namespaces/{self.namespace}/volumesnapshots"


def snapshot_manifest(name: str, namespace: str, pvc: str, snapshot_class: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "VolumeSnapshot",
        "metadata": {"name": name, "namespace": namespace, "labels": {**JOB_LABELS, SNAPSHOT_OF: pvc}},
        "spec": {"volumeSnapshotClassName": snapshot_class, "source": {"persistentVolumeClaimName": pvc}},
    }


def wait_until_ready(api: Api, name: str, wait_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + wait_s
    while True:
        found = api.call("GET", api.snapshots_path(), fieldSelector=f"metadata.name={name}").get("items") or []
        status = (found[0].get("status") or {}) if found else {}
        if status.get("readyToUse") is True:
            snapshot: dict[str, Any] = found[0]
            return snapshot
        if status.get("error"):
            raise JobError(f"snapshot {name} failed: {status['error'].get('message', status['error'])}")
        if time.monotonic() >= deadline:
            raise JobError(f"snapshot {name} was not ready to use after {wait_s:.0f}s")
        time.sleep(POLL_SECONDS)


def _ready(snapshot: dict[str, Any]) -> bool:
    return (snapshot.get("status") or {}).get("readyToUse") is True


def _made_at(snapshot: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(snapshot["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
    except (KeyError, TypeError, ValueError):
        return None


def _ours(api: Api, pvc: str) -> list[dict[str, Any]]:
    """This job's snapshots of `pvc`, newest first."""
    selector = ",".join(f"{k}={v}" for k, v in {**JOB_LABELS, SNAPSHOT_OF: pvc}.items())
    items = api.call("GET", api.snapshots_path(), labelSelector=selector).get("items") or []
    return sorted(items, key=lambda s: s["metadata"].get("creationTimestamp", ""), reverse=True)


def _delete(api: Api, doomed: list[dict[str, Any]]) -> list[str]:
    for s in doomed:
        api.call("DELETE", f"{api.snapshots_path()}/{s['metadata']['name']}")
    return [s["metadata"]["name"] for s in doomed]


def prune(api: Api, pvc: str, keep: int) -> list[str]:
    """Delete this job's ready snapshots of `pvc` beyond the newest `keep`."""
    return _delete(api, [s for s in _ours(api, pvc) if _ready(s)][keep:])


def prune_stuck(api: Api, pvc: str, stuck_after_s: float, now: datetime) -> list[str]:
    """Delete this job's snapshots of `pvc` that are still not ready `stuck_after_s` after they were made."""
    return _delete(
        api,
        [
            s
            for s in _ours(api, pvc)
            if not _ready(s) and (made := _made_at(s)) is not None and (now - made).total_seconds() >= stuck_after_s
        ],
    )


def main() -> int:
    try:
        api = Api(Path(os.environ.get("SERVICE_ACCOUNT_DIR", "/var/run/secrets/kubernetes.io/serviceaccount")))
        pvc, snapshot_class = setting("PVC_NAME"), setting("SNAPSHOT_CLASS")
        keep, wait_s = int(setting("RETENTION")), float(setting("WAIT_SECONDS"))
        stuck_after_s = float(setting("STUCK_AFTER_SECONDS"))
        # Fails early, with the claim's name, when the volume is not there (or the Role does not reach it).
        api.call("GET", f"/api/v1/namespaces/{api.namespace}/persistentvolumeclaims/{pvc}")
        name = f"{pvc}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
        api.call("POST", api.snapshots_path(), snapshot_manifest(name, api.namespace, pvc, snapshot_class))
        log("snapshot-created", snapshot=name, pvc=pvc, snapshotClass=snapshot_class)
        try:
            ready = wait_until_ready(api, name, wait_s)
        finally:
            # Whether this one made it or not: what never became ready within the deadline only holds storage.
            log(
                "stuck-snapshots-pruned",
                deleted=prune_stuck(api, pvc, stuck_after_s, datetime.now(UTC)),
                after_seconds=stuck_after_s,
            )
        log("snapshot-ready", snapshot=name, restoreSize=(ready.get("status") or {}).get("restoreSize"))
        log("snapshots-pruned", deleted=prune(api, pvc, keep), kept=keep)
    except (JobError, OSError, ValueError) as exc:
        log("snapshot-failed", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
