"""Pulumi mocks that act like the providers would: deterministic random values and a load balancer address.

Used by the offline synth and the unit tests. Random values are derived from the resource
name and its keepers, so a changed keeper (a new rotation epoch) gives a new value, as
`pulumi-random` would. `RecordingMonitor` keeps the resource options the engine would get
(timeouts, protect, retainOnDelete, dependencies, aliases), which Pulumi's own mocks drop, and each resource's URN.
An object the program reads from the cluster (`Resource.get`) comes from `existing`, the cluster's objects by
`Kind/name` or `Kind/namespace/name`; without it every read finds a Ready stand-in, and with it a missing object fails
the read as the provider would. The kube-system namespace is always there, with `cluster_uid` as its UID.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor

LOAD_BALANCER_HOSTNAME = "clawbot-0123456789abcdef.elb.us-east-1.amazonaws.com"  # an NLB gets a DNS name, no IP
# The UID of the mocked cluster's kube-system namespace, unless a synthesis says which cluster it runs against.
CLUSTER_UID = "00000000-0000-4000-8000-00000000c1a5"
STACK_REFERENCE = "pulumi:pulumi:StackReference"
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def fresh_event_loop() -> asyncio.AbstractEventLoop:
    """Give this thread a new, open event loop for a mocked Pulumi run.

    The Pulumi SDK creates its futures with the thread's current loop; anything that ran before in
    the same process (`asyncio.run`, a closed test loop) may have left none or a closed one.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


@dataclass(frozen=True)
class ResourceOptionsSeen:
    """The options of one registration, as the engine receives them."""

    protect: bool = False
    retain_on_delete: bool = False
    custom_timeouts: dict[str, str] | None = None  # create/update/delete as duration strings
    dependencies: tuple[str, ...] = ()  # URNs
    replace_on_changes: tuple[str, ...] = ()
    urn: str = ""  # as the mock monitor makes it: the parent's type chain, this type, the name
    aliases: tuple[str, ...] = ()  # the URNs the aliases name: where an existing stack may hold this resource
    parent: str = ""  # the parent's URN ('' under the stack)


@dataclass(frozen=True)
class MockedResource:
    type: str
    name: str
    inputs: dict[str, Any]
    state: dict[str, Any]
    options: ResourceOptionsSeen = ResourceOptionsSeen()
    read: str = ""  # the id of an object read from the cluster (Resource.get); such a resource is never created


class ObjectNotFound(pulumi.RunError):
    """A read of an object the cluster does not hold, as the provider reports it."""


def stand_in_object(kind: str, object_id: str) -> dict[str, Any]:
    """What a read finds when the test names no cluster: the object exists and is Ready."""
    namespace, _, name = object_id.rpartition("/")
    return {
        "metadata": {"name": name, **({"namespace": namespace} if namespace else {})},
        "spec": {},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "StandIn"}]},
    }


_SIG_KEY = rpc._special_sig_key
_SECRET_SIG = rpc._special_secret_sig


def plain(value: Any) -> Any:
    """Inputs as a manifest would hold them: secrets unwrapped, whole-number floats (protobuf doubles) back to ints."""
    if isinstance(value, dict):
        if value.get(_SIG_KEY) == _SECRET_SIG:
            return plain(value.get("value"))
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _stream(seed: str, n: int) -> bytes:
    out, counter = b"", 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}/{counter}".encode()).digest()
        counter += 1
    return out[:n]


class ClawbotMocks(pulumi.runtime.Mocks):
    def __init__(
        self,
        salt: str = "",
        stack_outputs: dict[str, Any] | None = None,
        existing: dict[str, dict[str, Any]] | None = None,
        cluster_uid: str = CLUSTER_UID,
    ) -> None:
        self.salt = salt
        self.cluster_uid = cluster_uid  # which cluster a read of kube-system finds
        self.resources: list[MockedResource] = []
        self.stack_outputs = dict(stack_outputs or {})  # what a StackReference to this stack reads: its last outputs
        self.existing = existing  # the cluster's objects by Kind/[namespace/]name; None: every read finds a stand-in
        self.pending_options: dict[tuple[str, str], ResourceOptionsSeen] = {}
        self.pending_reads: dict[tuple[str, str], str] = {}

    def _read(self, typ: str, object_id: str) -> dict[str, Any]:
        kind = typ.rsplit(":", 1)[-1]
        if self.existing is None:
            found: dict[str, Any] | None = stand_in_object(kind, object_id)
        else:
            found = self.existing.get(f"{kind}/{object_id}")
        if kind == "Namespace" and object_id == "kube-system":
            # Every cluster has one; its UID is the cluster's identity (infra/preflight.py).
            found = copy.deepcopy(found or stand_in_object(kind, object_id))
            found.setdefault("metadata", {}).setdefault("uid", self.cluster_uid)
        if found is None:
            group = typ.split(":")[1].split("/")[0]
            raise ObjectNotFound(
                f'reading {kind} {object_id!r}: {kind.lower()}s.{group} "{object_id.rsplit("/", 1)[-1]}" not found'
            )
        return copy.deepcopy(found)

    def _seed(self, args: pulumi.runtime.MockResourceArgs) -> str:
        return (
            f"{self.salt}|{args.typ}|{args.name}|{json.dumps(plain(args.inputs.get('keepers') or {}), sort_keys=True)}"
        )

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        read_id = self.pending_reads.pop((args.typ, args.name), None)
        if read_id is not None and args.typ.startswith("kubernetes:"):
            state = self._read(args.typ, read_id)
            self.resources.append(MockedResource(args.typ, args.name, plain(args.inputs), plain(state), read=read_id))
            return read_id, state
        state = copy.deepcopy(args.inputs)
        seed = self._seed(args)
        if args.typ in ("random:index/randomPassword:RandomPassword", "random:index/randomString:RandomString"):
            length = int(plain(args.inputs.get("length", 32)))
            state["result"] = "".join(_ALNUM[b % len(_ALNUM)] for b in _stream(seed, length))
        elif args.typ == "random:index/randomBytes:RandomBytes":
            raw = _stream(seed, int(plain(args.inputs.get("length", 32))))
            state["base64"] = base64.b64encode(raw).decode()
            state["hex"] = raw.hex()
        elif args.typ == "kubernetes:core/v1:Service":
            spec = args.inputs.get("spec") or {}
            if spec.get("type") == "LoadBalancer":
                state["status"] = {"loadBalancer": {"ingress": [{"hostname": LOAD_BALANCER_HOSTNAME}]}}
            state.setdefault("spec", {})["clusterIP"] = "10.96.0.20"
        elif args.typ == STACK_REFERENCE:
            state["outputs"] = copy.deepcopy(self.stack_outputs)
            state["secretOutputNames"] = []
        # A registration's options were recorded by RecordingMonitor; a read (a StackReference) has none.
        options = self.pending_options.pop((args.typ, args.name), ResourceOptionsSeen())
        self.resources.append(MockedResource(args.typ, args.name, plain(args.inputs), plain(state), options))
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


class RecordingMonitor(MockMonitor):
    """Pulumi's mock monitor, keeping each registration's options for ClawbotMocks to attach to the resource."""

    def __init__(self, mocks: ClawbotMocks) -> None:
        super().__init__(mocks)
        self.clawbot_mocks = mocks

    def RegisterResource(self, request: Any) -> Any:
        timeouts = request.customTimeouts
        seen = ResourceOptionsSeen(
            urn=self.make_urn(request.parent, request.type, request.name),
            parent=str(request.parent or ""),
            aliases=tuple(self._alias_urn(request, alias) for alias in request.aliases),
            protect=bool(request.protect),
            retain_on_delete=bool(request.retainOnDelete),
            custom_timeouts={
                k: v
                for k, v in (("create", timeouts.create), ("update", timeouts.update), ("delete", timeouts.delete))
                if v
            }
            or None,
            dependencies=tuple(request.dependencies),
            replace_on_changes=tuple(request.replaceOnChanges),
        )
        self.clawbot_mocks.pending_options[(request.type, request.name)] = seen
        register: Callable[[Any], Any] = super().RegisterResource  # unannotated in pulumi
        return register(request)

    def ReadResource(self, request: Any) -> Any:
        self.clawbot_mocks.pending_reads[(request.type, request.name)] = str(request.id)
        read: Callable[[Any], Any] = super().ReadResource  # unannotated in pulumi
        return read(request)

    def _alias_urn(self, request: Any, alias: Any) -> str:
        """The URN an alias names, as the engine resolves it: what the spec leaves out is the resource's own."""
        if alias.urn:
            return str(alias.urn)
        spec = alias.spec
        if spec.parentUrn:
            parent = spec.parentUrn
        else:
            parent = "" if spec.noParent else request.parent
        return self.make_urn(parent, spec.type or request.type, spec.name or request.name)
