"""KMS-style secret store: a generated key-encryption key, rotating API and JWT keys, sealed into the file app/ reads.

Rotation without a scheduler: the current rotation epoch (floor(now / period)) sits in the
keepers of the random resources, so the first `pulumi up` of a new period replaces them.
API and JWT keys live in two slots, `a` and `b`, that rotate in turn; at any time one is new
(primary) and one is old (secondary), so clients holding the old key keep working for one more
period. The slots live are read back from the stack's own last `keyRotation` output, so an `up`
after a long pause still replaces one slot only: clients always get the overlap.
"""
from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass, replace
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from app.access.keyfile import ApiKeyRecord, JwtKeyRecord, KeyFile, seal_key_file
from infra.contract import APP_LABELS, KEK_FILE, KEYS_FILE

DAY_S = 86_400
API_KEY_SCOPES = ("chat", "admin")


@dataclass(frozen=True)
class Slot:
    name: str  # "a" or "b"
    generation: int
    starts_at: int  # epoch seconds

    @property
    def key_id(self) -> str:
        return f"key-{self.name}{self.generation}"

    @property
    def jwt_kid(self) -> str:
        return f"jwt-{self.name}{self.generation}"


@dataclass(frozen=True)
class RotationSchedule:
    epoch: int
    period_s: int
    primary: Slot
    secondary: Slot

    @property
    def period_end(self) -> int:
        return (self.epoch + 1) * self.period_s

    def slot(self, name: str) -> Slot:
        return self.primary if self.primary.name == name else self.secondary

    def as_output(self) -> dict[str, Any]:
        """The plain stack output the next `pulumi up` reads back (ids and times only, no key material)."""
        return {
            "epoch": self.epoch,
            "periodSeconds": self.period_s,
            "primary": self.primary.name,
            "slots": {s.name: {"generation": s.generation, "startsAt": s.starts_at} for s in (self.primary, self.secondary)},
        }

    @classmethod
    def from_output(cls, value: Any) -> "RotationSchedule | None":
        """The schedule a previous `pulumi up` exported, or None when there is none (first deployment) or it is unreadable."""
        try:
            slots = {name: Slot(name, int(v["generation"]), int(v["startsAt"])) for name, v in value["slots"].items()}
            primary = slots[value["primary"]]
            (secondary,) = [slot for name, slot in slots.items() if name != primary.name]
            return cls(epoch=int(value["epoch"]), period_s=int(value["periodSeconds"]), primary=primary, secondary=secondary)
        except (KeyError, TypeError, ValueError):
            return None


def rotation_schedule(now: float, days: int) -> RotationSchedule:
    """Which key generation each slot holds at `now`, for a rotation period of `days`."""
    period = days * DAY_S
    epoch = int(now // period)
    gen_a, gen_b = epoch // 2, (epoch + 1) // 2
    a = Slot("a", gen_a, max(0, 2 * gen_a * period))
    b = Slot("b", gen_b, max(0, (2 * gen_b - 1) * period))
    primary, secondary = (a, b) if epoch % 2 == 0 else (b, a)
    return RotationSchedule(epoch=epoch, period_s=period, primary=primary, secondary=secondary)


def next_schedule(previous: Any, now: float, days: int) -> RotationSchedule:
    """The schedule for this `pulumi up`: at most one slot changes from the previous one, however much time passed.

    From the schedule of time alone, an `up` after two idle periods would replace both slots at once and every
    client would lose its key with no overlap; advancing the live schedule by one step never does.
    """
    current = rotation_schedule(now, days)
    live = RotationSchedule.from_output(previous)
    if live is None:
        return current
    if live.period_s == current.period_s and current.epoch <= live.epoch:
        return live  # same period (or a clock behind the last run): nothing rotates
    old = live.secondary
    fresh = Slot(old.name, old.generation + 1, current.epoch * current.period_s)
    return replace(current, primary=fresh, secondary=live.primary)


def _iso(epoch_s: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def fernet_key_from_base64(std_b64: str) -> str:
    """RandomBytes gives standard base64; Fernet wants url-safe base64 of 32 bytes."""
    return base64.urlsafe_b64encode(base64.b64decode(std_b64)).decode()


@dataclass
class SecretStoreArgs:
    namespace: pulumi.Input[str]
    rotation_days: int = 90
    hub_token: pulumi.Output[str] | None = None
    # The `keyRotation` output of this stack's last update (None on the first): which key generations are live.
    previous_rotation: pulumi.Input[Any] = None
    name_prefix: str = "clawbot"
    now: float | None = None  # tests pin the clock; None reads it


@dataclass(frozen=True)
class SecretNames:
    kek: str
    keys: str


def secret_names(prefix: str) -> SecretNames:
    """The Secret names are fixed so ChatService can mount them before this component exists."""
    return SecretNames(kek=f"{prefix}-kek", keys=f"{prefix}-keys")


class SecretStore(pulumi.ComponentResource):
    api_key: pulumi.Output[str]
    api_key_ids: pulumi.Output[list[str]]
    key_file: pulumi.Output[str]
    kek: pulumi.Output[str]
    rotation: pulumi.Output[dict[str, Any]]
    content_digest: pulumi.Output[str]
    names: SecretNames

    def __init__(self, name: str, args: SecretStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("clawbot:infra:SecretStore", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        now = time.time() if args.now is None else args.now
        epoch = rotation_schedule(now, args.rotation_days).epoch
        schedule = pulumi.Output.from_input(args.previous_rotation).apply(lambda prev: next_schedule(prev, now, args.rotation_days))
        self.names = secret_names(args.name_prefix)
        epoch_keepers = {"epoch": str(epoch), "periodDays": str(args.rotation_days)}

        # The KEK and the envelope's data key may all change at once: clients never see them.
        kek = random.RandomPassword(f"{name}-kek", length=64, special=False, keepers=epoch_keepers, opts=child)
        dek = random.RandomBytes(f"{name}-dek", length=32, keepers=epoch_keepers, opts=child)
        iv_seed = random.RandomBytes(f"{name}-iv-seed", length=32, keepers=epoch_keepers, opts=child)

        def slot_keys(kind: str, length: int) -> dict[str, random.RandomPassword]:
            return {
                slot: random.RandomPassword(
                    f"{name}-{kind}-key-{slot}", length=length, special=False,
                    keepers={"generation": schedule.apply(lambda sc, slot=slot: str(sc.slot(slot).generation))}, opts=child,
                )
                for slot in ("a", "b")
            }

        api, jwt = slot_keys("api", 48), slot_keys("jwt", 64)
        hub: pulumi.Output[str | None] = args.hub_token if args.hub_token is not None else pulumi.Output.from_input(None)

        def seal(values: list[Any]) -> str:
            sc, kek_v, dek_v, iv_v, api_a, api_b, jwt_a, jwt_b, hub_v = values
            api_of, jwt_of = {"a": api_a, "b": api_b}, {"a": jwt_a, "b": jwt_b}
            primary, secondary = sc.primary, sc.secondary
            ring = KeyFile(
                api_keys=(
                    ApiKeyRecord(id=primary.key_id, secret=api_of[primary.name], scopes=API_KEY_SCOPES, not_before=_iso(primary.starts_at)),
                    # The old key stays valid to the end of this period: clients have one period to switch.
                    ApiKeyRecord(
                        id=secondary.key_id, secret=api_of[secondary.name], scopes=API_KEY_SCOPES,
                        not_before=_iso(secondary.starts_at), expires_at=_iso(sc.period_end),
                    ),
                ),
                jwt_keys=(
                    JwtKeyRecord(kid=primary.jwt_kid, secret=jwt_of[primary.name], not_before=_iso(primary.starts_at)),
                    # No expiry: tokens signed before the rotation keep verifying until this slot rotates again.
                    JwtKeyRecord(kid=secondary.jwt_kid, secret=jwt_of[secondary.name], not_before=_iso(secondary.starts_at)),
                ),
                hub_token=hub_v or None,
            )
            return seal_key_file(ring, kek_v, dek=fernet_key_from_base64(dek_v), iv_seed=base64.b64decode(iv_v))

        # Computing the file is all that happens in the apply; the Secret holding it is declared outside.
        key_file = pulumi.Output.all(
            schedule, kek.result, dek.base64, iv_seed.base64,
            api["a"].result, api["b"].result, jwt["a"].result, jwt["b"].result, hub,
        ).apply(seal)
        self.key_file = pulumi.Output.secret(key_file)
        self.kek = pulumi.Output.secret(kek.result)
        self.api_key = pulumi.Output.secret(
            pulumi.Output.all(schedule, api["a"].result, api["b"].result).apply(lambda v: v[1] if v[0].primary.name == "a" else v[2])
        )
        self.api_key_ids = schedule.apply(lambda sc: [sc.primary.key_id, sc.secondary.key_id])
        self.rotation = schedule.apply(lambda sc: sc.as_output())
        # A SHA-256 of high-entropy key material reveals nothing about it, so the digest is a plain value: the pod
        # template carries it to roll the pods when the keys change.
        self.content_digest = pulumi.Output.unsecret(
            pulumi.Output.all(self.kek, self.key_file).apply(lambda v: hashlib.sha256(f"{v[0]}\n{v[1]}".encode()).hexdigest())
        )

        def secret(suffix: str, secret_name: str, file_name: str, value: pulumi.Output[str]) -> k8s.core.v1.Secret:
            return k8s.core.v1.Secret(
                f"{name}-{suffix}-secret",
                metadata={"name": secret_name, "namespace": args.namespace, "labels": APP_LABELS},
                type="Opaque",
                string_data={file_name: value},
                opts=child,
            )

        self.kek_secret = secret("kek", self.names.kek, KEK_FILE, self.kek)
        self.keys_secret = secret("keys", self.names.keys, KEYS_FILE, self.key_file)
        self.secrets: list[pulumi.Resource] = [self.kek_secret, self.keys_secret]
        self.register_outputs({"apiKeyIds": self.api_key_ids, "kekSecret": self.names.kek, "keysSecret": self.names.keys})
