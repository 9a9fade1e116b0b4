"""Offline synth: run the real Pulumi program under mocks with a stack's config and write every Kubernetes object it would create.

    python -m infra.synth --stack prod --out build/manifests [--config key=value ...]

Writes one YAML file per object (`<kind>-<namespace>-<name>.yaml`), `summary.json` and
`summary.md`. Secret values are redacted in the files; the in-memory `Synthesis` keeps them
so tests can decrypt the key file. No Pulumi CLI, cloud or cluster is needed.

What the CLI checks before the program runs is checked here too: a key that Pulumi.yaml
declares `secret: true` must be encrypted in the stack file. Declared secrets a stack file
does not hold (a `pulumi config set --secret` away) are stood in for, and listed.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra.tools.mocks import (
    CLUSTER_UID,
    ClawbotMocks,
    MockedResource,
    RecordingMonitor,
    ResourceOptionsSeen,
    fresh_event_loop,
)

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "clawbot"
REDACTED = "<redacted>"
# Stand-in for a `secure:` value or an unset required secret: synth cannot decrypt the stack's secrets.
SECRET_PLACEHOLDER = "synth-stand-in-for-a-secret-Q7wZ3kN9vR2m"
# A secret whose shape the program checks gets a stand-in of that shape.
SHAPED_STAND_INS = {
    "conversationDatabaseUrl": f"postgresql://clawbot:{SECRET_PLACEHOLDER}@database.invalid:5432/clawbot"
}


class SynthError(RuntimeError):
    """The stack file is missing or malformed, or the program failed; the message says which."""


@dataclass(frozen=True)
class K8sObject:
    api_version: str
    kind: str
    name: str
    namespace: str | None
    manifest: dict[str, Any]
    resource_name: str  # the Pulumi resource name (logical name), e.g. "chat-deployment"
    options: ResourceOptionsSeen = ResourceOptionsSeen()

    @property
    def depends_on(self) -> set[str]:
        """The Pulumi resource names this object waits for (explicit dependencies and inputs' sources)."""
        return {urn.rsplit("::", 1)[-1] for urn in self.options.dependencies}

    @property
    def file_name(self) -> str:
        parts = [self.kind.lower(), self.namespace or "cluster", self.name]
        return "-".join(p.replace("/", "_").replace(".", "_") for p in parts) + ".yaml"


@dataclass
class Synthesis:
    stack: str
    config: dict[str, Any]
    objects: list[K8sObject]
    outputs: dict[str, Any]
    secret_outputs: set[str]
    resources: list[MockedResource] = field(default_factory=list)  # every registration, random ones included
    stand_ins: list[str] = field(default_factory=list)  # secret keys synth filled with SECRET_PLACEHOLDER

    def find(self, kind: str, name: str | None = None) -> list[K8sObject]:
        return [o for o in self.objects if o.kind == kind and (name is None or o.name == name)]

    def one(self, kind: str, name: str | None = None) -> K8sObject:
        found = self.find(kind, name)
        if len(found) != 1:
            raise KeyError(f"expected one {kind}{' ' + name if name else ''}, found {len(found)}")
        return found[0]


def _stack_file_config(stack: str, project_dir: Path) -> dict[str, Any]:
    path = project_dir / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        raise SynthError(
            f"stack file {path} does not exist; stacks here: {', '.join(sorted(p.name for p in project_dir.glob('Pulumi.*.yaml')))}"
        )
    doc = yaml.safe_load(path.read_text()) or {}
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise SynthError(f"{path}: 'config' must be a mapping, got {type(config).__name__}")
    return {str(k): v for k, v in config.items()}


def read_stack_config(stack: str, project_dir: Path = ROOT) -> dict[str, Any]:
    """The `clawbot:*` values of Pulumi.<stack>.yaml, without the project prefix."""
    out: dict[str, Any] = {}
    for key, value in _stack_file_config(stack, project_dir).items():
        ns, _, name = key.partition(":")
        if ns == PROJECT and name:
            out[name] = value
    return out


def read_provider_config(stack: str, project_dir: Path = ROOT) -> dict[str, str]:
    """The provider's keys of Pulumi.<stack>.yaml (`kubernetes:context`, ...): they name the stack's cluster."""
    return {
        key: _config_value(value)
        for key, value in _stack_file_config(stack, project_dir).items()
        if key.partition(":")[0] not in (PROJECT, "") and ":" in key
    }


def _config_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value


def _prepare_config(
    file_values: Mapping[str, Any], overrides: Mapping[str, Any], stack: str
) -> tuple[dict[str, str], list[str], list[str]]:
    from infra.settings import SECRET_KEYS

    for name in SECRET_KEYS:  # the CLI refuses these before the program starts
        value = file_values.get(name)
        if name in file_values and not (isinstance(value, dict) and "secure" in value):
            raise SynthError(
                f"Stack '{stack}' with configuration key '{name}' must be encrypted as it's secret "
                f"(Pulumi.yaml declares it secret: use `pulumi config set --secret {name}`)"
            )
    values = {**file_values, **overrides}
    config: dict[str, str] = {}
    stand_ins: list[str] = []
    for name, value in values.items():
        if isinstance(value, dict) and "secure" in value:
            value = SHAPED_STAND_INS.get(name, SECRET_PLACEHOLDER)
            stand_ins.append(name)
        config[f"{PROJECT}:{name}"] = _config_value(value)
    # Declared secrets the stack file lacks: what `pulumi config set --secret` would give, as its comments say.
    needed = _secrets_required(values, stack)
    for name in SECRET_KEYS:
        if name not in values:
            config[f"{PROJECT}:{name}"] = SHAPED_STAND_INS.get(name, SECRET_PLACEHOLDER) if name in needed else ""
            stand_ins.append(name)
    return config, [f"{PROJECT}:{name}" for name in SECRET_KEYS], stand_ins


def _secrets_required(values: Mapping[str, Any], stack: str) -> dict[str, str]:
    """The secrets the stack needs set; none when its config is refused anyway (the program then says why)."""
    from infra.settings import ConfigError, parse_settings
    from infra.settings.checks import secrets_required

    try:
        return secrets_required(parse_settings(values, stack=stack))
    except ConfigError:
        return {}


def synthesize(
    stack: str,
    *,
    overrides: Mapping[str, Any] | None = None,
    project_dir: Path = ROOT,
    stack_outputs: Mapping[str, Any] | None = None,
    cluster_uid: str | None = None,
    existing: Mapping[str, Mapping[str, Any]] | None = None,
) -> Synthesis:
    """Evaluate __main__.py under mocks with Pulumi.<stack>.yaml (plus overrides) and collect what it declares.

    `stack_outputs` are the outputs of the stack's previous update, as a StackReference to itself reads them.
    `cluster_uid` is the kube-system UID of the cluster the mocked provider reaches: by default the stack's own
    (its clusterId), so a synthesis runs against the stack's cluster unless a test points it at another. Override
    keys with a provider prefix (`kubernetes:context`) set provider config; None removes a key.
    `existing` is the cluster's objects the program reads (`Kind/name`, `Kind/namespace/name`); without it every
    object the program reads is there and Ready.
    """
    import pulumi
    from pulumi.runtime import settings as runtime_settings
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    fresh_event_loop()
    file_values = read_stack_config(stack, project_dir)
    provider = {**read_provider_config(stack, project_dir), **{k: v for k, v in (overrides or {}).items() if ":" in k}}
    overrides = {k: v for k, v in (overrides or {}).items() if ":" not in k}
    values = {**file_values, **overrides}
    config, secret_keys, stand_ins = _prepare_config(file_values, overrides, stack)
    config.update({k: _config_value(v) for k, v in provider.items() if v is not None})
    pulumi.runtime.set_all_config(config, secret_keys)
    runtime_settings.ROOT.set(None)  # a fresh root stack per synthesis, so outputs never mix between stacks
    cluster_uid = cluster_uid or str(values.get("clusterId") or "") or CLUSTER_UID
    mocks = ClawbotMocks(
        salt=stack,
        stack_outputs=dict(stack_outputs or {}),
        cluster_uid=cluster_uid,
        existing=None if existing is None else {k: dict(v) for k, v in existing.items()},
    )
    # "organization" is what a DIY backend calls every stack's organization.
    pulumi.runtime.set_mocks(
        mocks, project=PROJECT, stack=stack, preview=False, monitor=RecordingMonitor(mocks), organization="organization"
    )
    # An earlier synthesis that failed midway (a refused run stops at its first failed RPC, or an error raised while
    # resources were registering) leaves their tasks behind, bound to its closed event loop; awaiting them here would
    # never return. Pulumi's own test decorator clears the same two.
    runtime_settings.SETTINGS.rpc_manager.clear()
    runtime_settings.SETTINGS.outputs.clear()
    root = runtime_settings.get_root_resource()
    resolved: dict[str, Any] = {}
    secret_outputs: set[str] = set()

    async def program() -> None:
        runpy.run_path(str(project_dir / "__main__.py"), run_name="__main__")
        for name, value in dict(root.outputs).items():  # type: ignore[union-attr]
            out = pulumi.Output.from_input(value)
            resolved[name] = await out.future()
            if await out.is_secret():
                secret_outputs.add(name)

    try:
        _sync_await(run_pulumi_func(program))
    except Exception as exc:
        refusal = _config_refusal(exc)
        if refusal is None:
            raise
        raise SynthError(f"stack {stack!r}: {refusal}") from exc

    objects: list[K8sObject] = []
    for res in mocks.resources:
        if not res.type.startswith("kubernetes:") or res.read:
            continue  # a read object is the cluster's, never one the program creates
        manifest = _strip_none(res.inputs)
        meta = manifest.get("metadata") or {}
        ordered = {"apiVersion": manifest.pop("apiVersion"), "kind": manifest.pop("kind"), **manifest}
        objects.append(
            K8sObject(
                api_version=ordered["apiVersion"],
                kind=ordered["kind"],
                name=str(meta.get("name", res.name)),
                namespace=meta.get("namespace"),
                manifest=ordered,
                resource_name=res.name,
                options=res.options,
            )
        )
    # Registration order depends on how the program's outputs resolve; a fixed order keeps summaries diffable.
    objects.sort(key=lambda o: o.file_name)
    return Synthesis(
        stack=stack,
        config=values,
        objects=objects,
        outputs=resolved,
        secret_outputs=secret_outputs,
        resources=list(mocks.resources),
        stand_ins=stand_ins,
    )


def _config_refusal(exc: BaseException) -> BaseException | None:
    """The program's own refusal (a pulumi.RunError such as ConfigError) behind `exc`, however the SDK wrapped it:
    the Pulumi CLI prints that message and nothing else."""
    import pulumi

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, pulumi.RunError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def redacted(obj: K8sObject) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(json.dumps(obj.manifest))
    if obj.kind == "Secret":
        for section in ("stringData", "data"):
            if isinstance(manifest.get(section), dict):
                manifest[section] = {k: REDACTED for k in manifest[section]}
    return manifest


def write(synthesis: Synthesis, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.yaml"):
        stale.unlink()  # a removed object must not linger from an earlier run
    written: list[Path] = []
    for obj in synthesis.objects:
        path = out_dir / obj.file_name
        path.write_text(yaml.safe_dump(redacted(obj), sort_keys=False, default_flow_style=False))
        written.append(path)
    outputs = {k: ("[secret]" if k in synthesis.secret_outputs else v) for k, v in synthesis.outputs.items()}
    summary = {
        "stack": synthesis.stack,
        "objects": [
            {
                "apiVersion": o.api_version,
                "kind": o.kind,
                "namespace": o.namespace,
                "name": o.name,
                "file": o.file_name,
                **_options_summary(o.options),
            }
            for o in synthesis.objects
        ],
        "counts": _counts(synthesis),
        "outputs": outputs,
        "secretStandIns": synthesis.stand_ins,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"# clawbot — stack `{synthesis.stack}`",
        "",
        f"{len(synthesis.objects)} Kubernetes objects.",
        "",
        "| kind | namespace | name | file |",
        "| --- | --- | --- | --- |",
        *[f"| {o.kind} | {o.namespace or '-'} | {o.name} | {o.file_name} |" for o in synthesis.objects],
        "",
        "## Outputs",
        "",
        *[f"- `{k}`: {json.dumps(v)}" for k, v in outputs.items()],
    ]
    if synthesis.stand_ins:
        lines += ["", f"Secret config stood in for (not decryptable offline): {', '.join(synthesis.stand_ins)}"]
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n")
    return written


def _options_summary(options: ResourceOptionsSeen) -> dict[str, Any]:
    """The options a reviewer of a plan cares about: what `pulumi destroy` leaves and how long `up` waits."""
    out: dict[str, Any] = {}
    if options.protect:
        out["protect"] = True
    if options.retain_on_delete:
        out["retainOnDelete"] = True
    if options.custom_timeouts:
        out["customTimeouts"] = options.custom_timeouts
    return out


def _counts(synthesis: Synthesis) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in synthesis.objects:
        counts[o.kind] = counts.get(o.kind, 0) + 1
    return dict(sorted(counts.items()))


def _parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SynthError(
                f"--config takes key=value (JSON values allowed, e.g. allowedCidrs='[\"10.0.0.0/8\"]'), got {pair!r}"
            )
        key = key.removeprefix(f"{PROJECT}:")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.synth", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--stack", required=True, help="stack name: reads Pulumi.<stack>.yaml")
    parser.add_argument("--out", required=True, type=Path, help="directory for the YAML files and summary")
    parser.add_argument(
        "--config", action="append", default=[], metavar="KEY=VALUE", help="override a clawbot:* config value"
    )
    ns = parser.parse_args(argv)
    try:
        synthesis = synthesize(ns.stack, overrides=_parse_overrides(ns.config))
    except SynthError as exc:
        print(f"infra.synth: {exc}", file=sys.stderr)
        return 2
    files = write(synthesis, ns.out)
    print(
        f"infra.synth: stack {ns.stack}: wrote {len(files)} objects to {ns.out}/ ({', '.join(f'{k} {v}' for k, v in _counts(synthesis).items())})"
    )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
