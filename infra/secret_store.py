"""KMS-style secret store: a generated key-encryption key, rotating API and JWT keys, sealed into the file app/ reads.

Rotation without a scheduler: the current rotation epoch (floor(now / period)) sits in the
keepers of the random resources, so the first `pulumi up` of a new period replaces them.
API and JWT keys live in two slots, `a` and `b`, that each last two periods and rotate on
alternate boundaries; at any time one is new (primary) and one is old (secondary), so
clients holding the old key keep working for one more period.
"""
from __future__ import annotations

import base64
import time
from dataclasses import dataclass

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


def rotation_schedule(now: float, days: int) -> RotationSchedule:
    """Which key generation each slot holds at `now`, for a rotation period of `days`."""
    period = days * DAY_S
    epoch = int(now // period)
    gen_a, gen_b = epoch // 2, (epoch + 1) // 2
    a = Slot("a", gen_a, max(0, 2 * gen_a * period))
    b = Slot("b", gen_b, max(0, (2 * gen_b - 1) * period))
    primary, secondary = (a, b) if epoch % 2 == 0 else (b, a)
    return RotationSchedule(epoch=epoch, period_s=period, primary=primary, secondary=secondary)


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
    names: SecretNames
    schedule: RotationSchedule

    def __init__(self, name: str, args: SecretStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("clawbot:infra:SecretStore", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        schedule = rotation_schedule(time.time() if args.now is None else args.now, args.rotation_days)
        self.schedule = schedule
        self.names = secret_names(args.name_prefix)
        epoch_keepers = {"epoch": str(schedule.epoch), "periodDays": str(args.rotation_days)}

        kek = random.RandomPassword(f"{name}-kek", length=64, special=False, keepers=epoch_keepers, opts=child)
        dek = random.RandomBytes(f"{name}-dek", length=32, keepers=epoch_keepers, opts=child)
        iv_seed = random.RandomBytes(f"{name}-iv-seed", length=32, keepers=epoch_keepers, opts=child)
        slots = sorted((schedule.primary, schedule.secondary), key=lambda s: s.name)

        def slot_keys(kind: str, length: int) -> dict[str, random.RandomPassword]:
            return {
                s.name: random.RandomPassword(
                    f"{name}-{kind}-key-{s.name}", length=length, special=False, keepers={"generation": str(s.generation)}, opts=child
                )
                for s in slots
            }

        api, jwt = slot_keys("api", 48), slot_keys("jwt", 64)
        primary, secondary = schedule.primary, schedule.secondary
        hub: pulumi.Output[str | None] = args.hub_token if args.hub_token is not None else pulumi.Output.from_input(None)

        def seal(values: list[object]) -> str:
            kek_v, dek_v, iv_v, api_p, api_s, jwt_p, jwt_s, hub_v = (str(v) if v is not None else None for v in values)
            assert kek_v and dek_v and iv_v and api_p and api_s and jwt_p and jwt_s
            ring = KeyFile(
                api_keys=(
                    ApiKeyRecord(id=primary.key_id, secret=api_p, scopes=API_KEY_SCOPES, not_before=_iso(primary.starts_at)),
                    # The old key stays valid to the end of this period: clients have one period to switch.
                    ApiKeyRecord(
                        id=secondary.key_id, secret=api_s, scopes=API_KEY_SCOPES,
                        not_before=_iso(secondary.starts_at), expires_at=_iso(schedule.period_end),
                    ),
                ),
                jwt_keys=(
                    JwtKeyRecord(kid=primary.jwt_kid, secret=jwt_p, not_before=_iso(primary.starts_at)),
                    # No expiry: tokens signed before the rotation keep verifying until this slot rotates again.
                    JwtKeyRecord(kid=secondary.jwt_kid, secret=jwt_s, not_before=_iso(secondary.starts_at)),
                ),
                hub_token=hub_v,
            )
            return seal_key_file(ring, kek_v, dek=fernet_key_from_base64(dek_v), iv_seed=base64.b64decode(iv_v))

        # Computing the file is all that happens in the apply; the Secret holding it is declared outside.
        key_file = pulumi.Output.all(
            kek.result, dek.base64, iv_seed.base64,
            api[primary.name].result, api[secondary.name].result,
            jwt[primary.name].result, jwt[secondary.name].result, hub,
        ).apply(seal)
        self.key_file = pulumi.Output.secret(key_file)
        self.kek = pulumi.Output.secret(kek.result)
        self.api_key = pulumi.Output.secret(api[primary.name].result)
        self.api_key_ids = pulumi.Output.from_input([primary.key_id, secondary.key_id])

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
        self.register_outputs({"apiKeyIds": self.api_key_ids, "kekSecret": self.names.kek, "keysSecret": self.names.keys})
