"""The secret store: rotating API and JWT keys sealed into the file app/ reads, under a key-encryption key that never
sits in the Secret store, namespace and pod of the sealed keys.

`keyEncryption kms` (production): AWS KMS holds the KEK. The key file's data key is sealed to the stack's KMS data
key (`kmsDataKey`), whose private half only KMS unwraps; the program needs no AWS access and holds no KEK. The chat
pods run as a ServiceAccount of their own (IRSA role or Pod Identity association) and ask KMS to unwrap it.
`keyEncryption namespace` (weaker): a generated KEK is a Secret in `<namespace>-kek`, a namespace with no pods
allowed (quota 0) and one Role: `get` on that Secret, bound to the chat pods' ServiceAccount. Only their init step
mounts a token; it leaves the unwrapped data key, in memory, for the chat container, which has none.

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

from app.access.keyfile import KMS_ENCRYPTION_CONTEXT, ApiKeyRecord, JwtKeyRecord, KeyFile, KmsDataKey, seal_key_file
from infra.components.firewall import EgressTarget
from infra.contract import (
    API_KEY_PATH,
    API_SERVER_PORTS,
    APP_LABELS,
    DATA_KEY_DIR,
    DATA_KEY_PATH,
    IRSA_ROLE_ANNOTATION,
    KEK_FILE,
    KEYS_FILE,
    SERVICE_ACCOUNT_DIR,
)
from infra.settings.key_store import KMS_PORT, POD_IDENTITY_AGENT_CIDRS, POD_IDENTITY_AGENT_PORT, KeyStoreSettings

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
            "slots": {
                s.name: {"generation": s.generation, "startsAt": s.starts_at} for s in (self.primary, self.secondary)
            },
        }

    @classmethod
    def from_output(cls, value: Any) -> RotationSchedule | None:
        """The schedule a previous `pulumi up` exported, or None when there is none (first deployment) or it is unreadable."""
        try:
            slots = {name: Slot(name, int(v["generation"]), int(v["startsAt"])) for name, v in value["slots"].items()}
            primary = slots[value["primary"]]
            (secondary,) = [slot for name, slot in slots.items() if name != primary.name]
            return cls(
                epoch=int(value["epoch"]), period_s=int(value["periodSeconds"]), primary=primary, secondary=secondary
            )
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


# RFC 1918: where an API server's in-cluster endpoints are (not link-local, where the instance metadata service is).
CLUSTER_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
# The init step's token: short-lived, for the API server, mounted in the init container only.
READER_TOKEN_SECONDS = 600


@dataclass
class SecretStoreArgs:
    namespace: pulumi.Input[str]
    key_store: KeyStoreSettings
    rotation_days: int = 90
    hub_token: pulumi.Output[str] | None = None
    # The `keyRotation` output of this stack's last update (None on the first): which key generations are live.
    previous_rotation: pulumi.Input[Any] = None
    name_prefix: str = "clawbot"
    now: float | None = None  # tests pin the clock; None reads it


@dataclass(frozen=True)
class SecretNames:
    kek: str  # keyEncryption namespace: the KEK Secret, in the KEK namespace
    keys: str
    service_account: str  # the chat pods'


def secret_names(prefix: str) -> SecretNames:
    """The names are fixed so ChatService can mount them before this component exists."""
    return SecretNames(kek=f"{prefix}-kek", keys=f"{prefix}-keys", service_account=prefix)


@dataclass(frozen=True)
class PodKeyAccess:
    """What a chat pod needs to open the key file under the stack's key store: env for app.settings, volumes, the
    chat container's mounts, and (namespace mode) the init step that unwraps the data key."""

    env: dict[str, str]
    volumes: tuple[dict[str, Any], ...] = ()
    mounts: tuple[dict[str, Any], ...] = ()
    init_args: tuple[str, ...] = ()  # `python -m app.keys unseal-data-key ...` in the chat image; () for none
    init_mounts: tuple[dict[str, Any], ...] = ()


def key_env(key_store: KeyStoreSettings) -> dict[str, str]:
    """The chat container's env for opening the key file (app.settings KEY_ENCRYPTION, DATA_KEY_PATH)."""
    if key_store.uses_kms:
        # The key file names its KMS key; credentials come from the webhook IRSA or Pod Identity runs.
        return {"KEY_ENCRYPTION": "kms"}
    return {"KEY_ENCRYPTION": "data-key-file", "DATA_KEY_PATH": DATA_KEY_PATH}


def pod_key_access(key_store: KeyStoreSettings, names: SecretNames) -> PodKeyAccess:
    if key_store.uses_kms:
        return PodKeyAccess(env=key_env(key_store))
    token = {
        "name": "kek-reader-token",
        "projected": {
            "defaultMode": 0o440,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": READER_TOKEN_SECONDS}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            ],
        },
    }
    return PodKeyAccess(
        env=key_env(key_store),
        volumes=({"name": "data-key", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}, token),
        mounts=({"name": "data-key", "mountPath": DATA_KEY_DIR, "readOnly": True},),
        init_args=(
            "python",
            "-m",
            "app.keys",
            "unseal-data-key",
            "--kek-secret",
            f"{key_store.kek_namespace}/{names.kek}/{KEK_FILE}",
            "--key-file",
            API_KEY_PATH,
            "--out",
            DATA_KEY_PATH,
        ),
        init_mounts=(
            {"name": "data-key", "mountPath": DATA_KEY_DIR},
            {"name": "kek-reader-token", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True},
        ),
    )


def key_store_egress(key_store: KeyStoreSettings, kubernetes_api_cidrs: tuple[str, ...]) -> tuple[EgressTarget, ...]:
    """What the chat pods must reach to open the key file, for the firewall's chat egress: the KMS endpoint on 443 (and
    the Pod Identity agent for credentials), or, for the namespace mode's init step, the API server."""
    kms = key_store.kms
    if kms is not None:
        return (
            EgressTarget("kms", kms.egress_cidrs, KMS_PORT),
            *(
                (EgressTarget("pod-identity-agent", POD_IDENTITY_AGENT_CIDRS, POD_IDENTITY_AGENT_PORT),)
                if kms.pod_identity
                else ()
            ),
        )
    # The in-cluster address of the API server leads to its endpoints inside the cluster's network (on EKS, the
    # control plane's ENIs in the VPC): private ranges, never the internet, when kubernetesApiCidrs does not say.
    cidrs = kubernetes_api_cidrs or CLUSTER_NETWORKS
    return tuple(EgressTarget("kubernetes-api", cidrs, port) for port in API_SERVER_PORTS)


def kms_policy(key_store: KeyStoreSettings) -> dict[str, Any] | None:
    """The IAM policy the chat pods' role needs in KMS mode: Decrypt on the one key, for key files only."""
    kms = key_store.kms
    if kms is None:
        return None
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "UnwrapTheKeyFilesDataKey",
                "Effect": "Allow",
                "Action": "kms:Decrypt",
                "Resource": kms.key_arn,
                "Condition": {
                    "StringEquals": {f"kms:EncryptionContext:{k}": v for k, v in KMS_ENCRYPTION_CONTEXT.items()}
                },
            }
        ],
    }


def key_store_output(key_store: KeyStoreSettings, namespace: str, prefix: str) -> dict[str, Any]:
    """The `keyStore` stack output: where the KEK is, and (KMS) the role the chat pods need, for the operator to make."""
    out: dict[str, Any] = {
        "keyEncryption": key_store.encryption,
        "clusterSecretsKeyArn": key_store.cluster_secrets_key_arn,
    }
    if key_store.kms is not None:
        out |= {
            "kmsKeyArn": key_store.kms.key_arn,
            "serviceAccount": f"system:serviceaccount:{namespace}:{prefix}",
            "policy": kms_policy(key_store),
        }
    else:
        out |= {"kekSecret": f"{key_store.kek_namespace}/{prefix}-kek"}
    return out


class SecretStore(pulumi.ComponentResource):
    api_key: pulumi.Output[str]
    api_key_ids: pulumi.Output[list[str]]
    key_file: pulumi.Output[str]
    kek: pulumi.Output[str] | None  # None with KMS: no KEK in the cluster then
    digest_key: pulumi.Output[str]
    rotation: pulumi.Output[dict[str, Any]]
    content_digest: pulumi.Output[str]
    names: SecretNames

    def __init__(self, name: str, args: SecretStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("clawbot:infra:SecretStore", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.name, self.args = name, args
        now = time.time() if args.now is None else args.now
        epoch = rotation_schedule(now, args.rotation_days).epoch
        schedule = pulumi.Output.from_input(args.previous_rotation).apply(
            lambda prev: next_schedule(prev, now, args.rotation_days)
        )
        self.names = secret_names(args.name_prefix)
        epoch_keepers = {"epoch": str(epoch), "periodDays": str(args.rotation_days)}
        kms = args.key_store.kms

        # The KEK and the envelope's data key may all change at once: clients never see them. With KMS there is no
        # KEK here at all: the data key is sealed to the KMS data key's public half.
        kek = (
            None
            if kms
            else random.RandomPassword(f"{name}-kek", length=64, special=False, keepers=epoch_keepers, opts=child)
        )
        # A new data key when the key store changes too: one that sat beside a KEK in the cluster is not carried into KMS.
        dek = random.RandomBytes(
            f"{name}-dek", length=32, keepers={**epoch_keepers, "keyEncryption": args.key_store.encryption}, opts=child
        )
        iv_seed = random.RandomBytes(f"{name}-iv-seed", length=32, keepers=epoch_keepers, opts=child)
        wrap: pulumi.Output[str | KmsDataKey] = pulumi.Output.from_input(kms.data_key) if kms else kek.result  # type: ignore[union-attr]

        def generation(slot: str) -> pulumi.Output[str]:
            return schedule.apply(lambda sc: str(sc.slot(slot).generation))

        def slot_keys(kind: str, length: int) -> dict[str, random.RandomPassword]:
            return {
                slot: random.RandomPassword(
                    f"{name}-{kind}-key-{slot}",
                    length=length,
                    special=False,
                    keepers={"generation": generation(slot)},
                    opts=child,
                )
                for slot in ("a", "b")
            }

        api, jwt = slot_keys("api", 48), slot_keys("jwt", 64)
        hub: pulumi.Output[str | None] = (
            args.hub_token if args.hub_token is not None else pulumi.Output.from_input(None)
        )

        def seal(values: list[Any]) -> str:
            sc, wrap_v, dek_v, iv_v, api_a, api_b, jwt_a, jwt_b, hub_v = values
            api_of, jwt_of = {"a": api_a, "b": api_b}, {"a": jwt_a, "b": jwt_b}
            primary, secondary = sc.primary, sc.secondary
            ring = KeyFile(
                api_keys=(
                    ApiKeyRecord(
                        id=primary.key_id,
                        secret=api_of[primary.name],
                        scopes=API_KEY_SCOPES,
                        not_before=_iso(primary.starts_at),
                    ),
                    # The old key stays valid to the end of this period: clients have one period to switch.
                    ApiKeyRecord(
                        id=secondary.key_id,
                        secret=api_of[secondary.name],
                        scopes=API_KEY_SCOPES,
                        not_before=_iso(secondary.starts_at),
                        expires_at=_iso(sc.period_end),
                    ),
                ),
                jwt_keys=(
                    JwtKeyRecord(kid=primary.jwt_kid, secret=jwt_of[primary.name], not_before=_iso(primary.starts_at)),
                    # No expiry: tokens signed before the rotation keep verifying until this slot rotates again.
                    JwtKeyRecord(
                        kid=secondary.jwt_kid, secret=jwt_of[secondary.name], not_before=_iso(secondary.starts_at)
                    ),
                ),
                hub_token=hub_v or None,
            )
            return seal_key_file(ring, wrap_v, dek=fernet_key_from_base64(dek_v), iv_seed=base64.b64decode(iv_v))

        # Computing the file is all that happens in the apply; the Secret holding it is declared outside.
        key_file = pulumi.Output.all(
            schedule,
            wrap,
            dek.base64,
            iv_seed.base64,
            api["a"].result,
            api["b"].result,
            jwt["a"].result,
            jwt["b"].result,
            hub,
        ).apply(seal)
        self.key_file = pulumi.Output.secret(key_file)
        self.kek = pulumi.Output.secret(kek.result) if kek else None
        # A secret key for HMACs the pod template carries (ChatService digests the database URL with it).
        self.digest_key = pulumi.Output.secret(kek.result if kek else dek.base64)
        self.api_key = pulumi.Output.secret(
            pulumi.Output.all(schedule, api["a"].result, api["b"].result).apply(
                lambda v: v[1] if v[0].primary.name == "a" else v[2]
            )
        )
        self.api_key_ids = schedule.apply(lambda sc: [sc.primary.key_id, sc.secondary.key_id])
        self.rotation = schedule.apply(lambda sc: sc.as_output())
        # A SHA-256 of high-entropy key material reveals nothing about it, so the digest is a plain value: the pod
        # template carries it to roll the pods when the keys change.
        material = pulumi.Output.all(self.kek, self.key_file) if self.kek else pulumi.Output.all(self.key_file)
        self.content_digest = pulumi.Output.unsecret(
            material.apply(lambda v: hashlib.sha256("\n".join(v).encode()).hexdigest())
        )

        self.keys_secret = k8s.core.v1.Secret(
            f"{name}-keys-secret",
            metadata={"name": self.names.keys, "namespace": args.namespace, "labels": APP_LABELS},
            type="Opaque",
            string_data={KEYS_FILE: self.key_file},
            opts=child,
        )
        self.service_account = k8s.core.v1.ServiceAccount(
            f"{name}-chat-account",
            metadata={
                "name": self.names.service_account,
                "namespace": args.namespace,
                "labels": APP_LABELS,
                **({"annotations": {IRSA_ROLE_ANNOTATION: kms.role_arn}} if kms and kms.role_arn else {}),
            },
            # No pod of it gets the API token mounted; the namespace mode's init step mounts a projected one itself.
            automount_service_account_token=False,
            opts=child,
        )
        self.secrets: list[pulumi.Resource] = [self.keys_secret, self.service_account]
        if kek is not None:
            self.secrets += self._kek_namespace(kek.result)
        self.register_outputs(
            {"apiKeyIds": self.api_key_ids, "keysSecret": self.names.keys, "keyEncryption": args.key_store.encryption}
        )

    def _kek_namespace(self, kek: pulumi.Output[str]) -> list[pulumi.Resource]:
        """keyEncryption namespace: the KEK in a namespace of its own, readable by the chat pods' account alone."""
        a, child = self.args, pulumi.ResourceOptions(parent=self)
        kek_ns = a.key_store.kek_namespace
        labels = {**APP_LABELS, "app.kubernetes.io/component": "key-encryption-key"}
        namespace = k8s.core.v1.Namespace(
            f"{self.name}-kek-namespace",
            metadata={
                "name": kek_ns,
                "labels": {
                    **labels,
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            },
            opts=child,
        )
        in_ns = pulumi.ResourceOptions(parent=self, depends_on=[namespace])
        # No pod may run here: a pod in this namespace could mount the Secret without any Role.
        quota = k8s.core.v1.ResourceQuota(
            f"{self.name}-kek-no-pods",
            metadata={"name": "no-pods", "namespace": kek_ns, "labels": labels},
            spec={"hard": {"pods": "0"}},
            opts=in_ns,
        )
        kek_file: pulumi.Output[str] = pulumi.Output.secret(kek)
        secret = k8s.core.v1.Secret(
            f"{self.name}-kek-secret",
            metadata={"name": self.names.kek, "namespace": kek_ns, "labels": labels},
            type="Opaque",
            string_data={KEK_FILE: kek_file},
            opts=in_ns,
        )
        reader = f"{a.name_prefix}-kek-reader"
        role = k8s.rbac.v1.Role(
            f"{self.name}-kek-reader",
            metadata={"name": reader, "namespace": kek_ns, "labels": labels},
            rules=[{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [self.names.kek], "verbs": ["get"]}],
            opts=in_ns,
        )
        binding = k8s.rbac.v1.RoleBinding(
            f"{self.name}-kek-reader-binding",
            metadata={"name": reader, "namespace": kek_ns, "labels": labels},
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": reader},
            subjects=[{"kind": "ServiceAccount", "name": self.names.service_account, "namespace": a.namespace}],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[role, self.service_account]),
        )
        return [namespace, quota, secret, role, binding]
