"""Key-store settings: where the key-encryption key lives, so that it never sits in the Secret store, namespace and pod
of the sealed keys, and the KMS key EKS encrypts Kubernetes Secrets with.

`kms`: AWS KMS holds the KEK. The key file's data key is sealed to a key pair that only KMS unwraps (`kmsDataKey`,
made by `python -m app.keys kms-data-key`); the chat pods ask KMS to unwrap it through their IAM role (IRSA with
`kmsRoleArn`, or an EKS Pod Identity association) and reach KMS at `kmsEgressCidrs` only. Production requires it.
`namespace` (weaker): the KEK is a Secret in a namespace of its own that only the chat pods' ServiceAccount may read,
and only their init step mounts a token to read it with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.access.keyfile import KeyFileError, KmsDataKey
from infra.settings.values import ConfigError, Raw, choice, cidrs, config_key, role_arn, text

KEY_ENCRYPTIONS = ("kms", "namespace")
_KMS_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/(mrk-)?[0-9a-f-]{32,36}$")
# The EKS Pod Identity Agent serves credentials on the node's link-local addresses (port 80).
POD_IDENTITY_AGENT_CIDRS = ("169.254.170.23/32", "fd00:ec2::23/128")
POD_IDENTITY_AGENT_PORT = 80
KMS_PORT = 443


@dataclass(frozen=True)
class KmsSettings:
    data_key: KmsDataKey
    role_arn: str  # IRSA: the role annotated on the chat pods' ServiceAccount; '' for Pod Identity
    egress_cidrs: tuple[str, ...]  # the KMS (and, with IRSA, STS) VPC endpoints the chat pods may reach on 443

    @property
    def key_arn(self) -> str:
        return self.data_key.key_id

    @property
    def pod_identity(self) -> bool:
        return not self.role_arn


@dataclass(frozen=True)
class KeyStoreSettings:
    encryption: str  # kms or namespace
    kms: KmsSettings | None  # set in kms mode
    kek_namespace: str  # namespace mode: where the KEK Secret lives ('' in kms mode)
    cluster_secrets_key_arn: str  # the KMS key EKS envelope-encrypts Secrets with; '' when not declared

    @property
    def uses_kms(self) -> bool:
        return self.kms is not None


def kek_namespace_of(namespace: str) -> str:
    return f"{namespace}-kek"


def _kms_key_arn(raw: Raw, name: str) -> str:
    arn = text(raw, name).strip()
    if arn and not _KMS_KEY_ARN.match(arn):
        raise ConfigError(
            f"{config_key(name)} must be a KMS key ARN like arn:aws:kms:us-east-1:123456789012:key/"
            f"1234abcd-12ab-34cd-56ef-1234567890ab, got {arn!r}"
        )
    return arn


def parse_key_store(raw: Raw, namespace: str) -> KeyStoreSettings:
    encryption = choice(raw, "keyEncryption", KEY_ENCRYPTIONS)
    cluster_key = _kms_key_arn(raw, "clusterSecretsKeyArn")
    if encryption == "namespace":
        kek_namespace = kek_namespace_of(namespace)
        if len(kek_namespace) > 63:
            raise ConfigError(
                f"{config_key('keyEncryption')} namespace keeps the KEK in {kek_namespace!r}, longer than a "
                f"namespace may be (63); shorten {config_key('namespace')}"
            )
        return KeyStoreSettings(encryption, None, kek_namespace, cluster_key)
    bundle = text(raw, "kmsDataKey").strip()
    if not bundle:
        raise ConfigError(
            f"{config_key('keyEncryption')} kms needs {config_key('kmsDataKey')}: run `python -m app.keys "
            f"kms-data-key --kms-key-id <KMS key ARN>` and `pulumi config set kmsDataKey \"$(...)\"` with its output"
        )
    try:
        data_key = KmsDataKey.from_json(bundle)
    except KeyFileError as exc:
        raise ConfigError(f"{config_key('kmsDataKey')}: {exc}") from None
    role = role_arn(raw, "kmsRoleArn", "clawbot-chat")
    kms = KmsSettings(data_key=data_key, role_arn=role, egress_cidrs=cidrs(raw, "kmsEgressCidrs"))
    return KeyStoreSettings(encryption, kms, "", cluster_key)
