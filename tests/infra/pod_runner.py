"""Runs a synthesized pod's containers here, as a kubelet would run them, for the jobs whose tools run on this machine.

Each volume becomes a directory: a ConfigMap's or Secret's items are written from the synthesized objects (secrets
in plain, as the in-memory Synthesis keeps them), an emptyDir is empty, a claim is a directory the test names. Every
mount path in a container's command, args and env is rewritten to that directory; init containers run first, in
order, and the pod stops at the first that fails. What the cluster would add (an IAM role's credentials, the tools
of the image) comes from the test: `env` and `PATH`.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.tools.synth import Synthesis


@dataclass
class PodRun:
    results: list[tuple[str, subprocess.CompletedProcess[str]]]  # (container name, its run), in the order they ran

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.returncode == 0 for _, r in self.results)

    def output(self) -> str:
        return "\n".join(f"[{name}] {r.stdout}{r.stderr}" for name, r in self.results)


def cron_job_pod(s: Synthesis, name: str) -> dict[str, Any]:
    return s.one("CronJob", name).manifest["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def _materialize(s: Synthesis, volume: dict[str, Any], where: Path, claims: dict[str, Path]) -> Path:
    if "persistentVolumeClaim" in volume:
        return claims[volume["persistentVolumeClaim"]["claimName"]]
    where.mkdir(parents=True, exist_ok=True)
    if "configMap" in volume or "secret" in volume:
        kind, ref = ("ConfigMap", volume["configMap"]) if "configMap" in volume else ("Secret", volume["secret"])
        obj = s.one(kind, ref["name"] if kind == "ConfigMap" else ref["secretName"]).manifest
        data = obj.get("data" if kind == "ConfigMap" else "stringData", {})
        for item in ref.get("items") or [{"key": k, "path": k} for k in data]:
            (where / item["path"]).write_text(data[item["key"]])
            (where / item["path"]).chmod(ref.get("defaultMode", 0o644))
    return where


def run_pod(
    s: Synthesis,
    pod: dict[str, Any],
    root: Path,
    *,
    env: dict[str, str],
    claims: dict[str, Path] | None = None,
    timeout: float = 300,
) -> PodRun:
    volumes = {v["name"]: _materialize(s, v, root / "volumes" / v["name"], claims or {}) for v in pod["volumes"]}
    results: list[tuple[str, subprocess.CompletedProcess[str]]] = []
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        # Longest mount path first, so /a/b maps before /a.
        mounts = sorted(
            ((m["mountPath"], volumes[m["name"]]) for m in container.get("volumeMounts", [])), key=lambda m: -len(m[0])
        )

        def local(value: str, mounts: list[tuple[str, Any]] = mounts) -> str:
            for path, there in mounts:
                if value == path or value.startswith(path + "/"):
                    return str(there) + value[len(path) :]
            return value

        argv = [local(a) for a in [*container.get("command", []), *container.get("args", [])]]
        container_env = {e["name"]: local(e["value"]) for e in container.get("env", []) if "value" in e}
        done = subprocess.run(
            argv,
            env={"PATH": os.environ["PATH"], **env, **container_env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        results.append((container["name"], done))
        if done.returncode != 0:
            break
    return PodRun(results)
