"""Pulumi mocks that act like the providers would: deterministic random values and a load balancer address.

Used by the offline synth and the unit tests. Random values are derived from the resource
name and its keepers, so a changed keeper (a new rotation epoch) gives a new value, as
`pulumi-random` would.
"""
from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.runtime import rpc

LOAD_BALANCER_IP = "203.0.113.10"  # TEST-NET-3: never a real address
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
class MockedResource:
    type: str
    name: str
    inputs: dict[str, Any]
    state: dict[str, Any]


_SIG_KEY = rpc._special_sig_key  # noqa: SLF001  (how pulumi marks a serialized secret)
_SECRET_SIG = rpc._special_secret_sig  # noqa: SLF001


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
    def __init__(self, salt: str = "") -> None:
        self.salt = salt
        self.resources: list[MockedResource] = []

    def _seed(self, args: pulumi.runtime.MockResourceArgs) -> str:
        return f"{self.salt}|{args.typ}|{args.name}|{json.dumps(plain(args.inputs.get('keepers') or {}), sort_keys=True)}"

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
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
                state["status"] = {"loadBalancer": {"ingress": [{"ip": LOAD_BALANCER_IP}]}}
            state.setdefault("spec", {})["clusterIP"] = "10.96.0.20"
        self.resources.append(MockedResource(args.typ, args.name, plain(args.inputs), plain(state)))
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None
