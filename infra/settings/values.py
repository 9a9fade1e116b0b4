"""Parsers for one raw config value each: they return it typed or raise a ConfigError naming the key, the value and
what is allowed. Every topic module builds on these; they know nothing of topics."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

import pulumi

from infra.images import ImageReferenceError, parse_image
from infra.settings.keys import KEYS, PROJECT

Raw = Mapping[str, Any]  # the stack's values by key name, defaults filled in

LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_CPU = re.compile(r"^(\d+(\.\d+)?)(m?)$")
_MEMORY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti)?$")
_MEMORY_UNITS = {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}
_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+s)?$|^Never$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_PROM_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


class ConfigError(pulumi.RunError, ValueError):
    """A stack config value is missing or out of range; the message names the key, the value and what is allowed."""


def config_key(name: str) -> str:
    """The key as `pulumi config` spells it: `clawbot:<name>`."""
    return f"{PROJECT}:{name}"


def choice(raw: Raw, name: str, allowed: tuple[str, ...] = ()) -> str:
    """One of `allowed`; without it, of the choices the key declares (a service setting's own, for a service key)."""
    allowed = allowed or KEYS[name].choices
    value = raw[name]
    if value not in allowed:
        raise ConfigError(f"{config_key(name)} must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def integer(raw: Raw, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """An integer between lo and hi; without them, the bounds the key declares (a service setting's own)."""
    if lo is None or hi is None:
        bounds = KEYS[name].bounds
        assert bounds is not None, f"{name} declares no bounds; pass them"
        lo, hi = bounds
    value = raw[name]
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value))
        except ValueError:
            raise ConfigError(
                f"{config_key(name)} must be an integer between {lo} and {hi}, got {raw[name]!r}"
            ) from None
    if not lo <= value <= hi:
        raise ConfigError(f"{config_key(name)} must be between {lo} and {hi}, got {value}")
    return value


def boolean(raw: Raw, name: str) -> bool:
    value = raw[name]
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise ConfigError(f"{config_key(name)} must be true or false, got {value!r}")


def text(raw: Raw, name: str, *, required: bool = False) -> str:
    value = raw[name]
    if not isinstance(value, str):
        raise ConfigError(f"{config_key(name)} must be a string, got {value!r}")
    if required and not value.strip():
        raise ConfigError(f"{config_key(name)} must not be empty")
    return value


def strings(raw: Raw, name: str) -> tuple[str, ...]:
    value = raw[name]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{config_key(name)} must be a list of strings, got {value!r}")
    return tuple(value)


def cidrs(raw: Raw, name: str) -> tuple[str, ...]:
    """Networks in canonical form, duplicates dropped; host bits set are refused (almost always a typo)."""
    out: list[str] = []
    for item in strings(raw, name):
        try:
            out.append(str(ipaddress.ip_network(item.strip(), strict=True)))
        except ValueError as exc:
            raise ConfigError(f"{config_key(name)} must hold CIDRs like 192.168.1.0/24, got {item!r} ({exc})") from None
    return tuple(dict.fromkeys(out))


def label_pairs(raw: Raw, name: str) -> tuple[tuple[str, str], ...]:
    """`key=value` items with Kubernetes label syntax."""
    out: list[tuple[str, str]] = []
    for item in strings(raw, name):
        key, sep, value = item.partition("=")
        if not sep or not LABEL_KEY.match(key) or not LABEL_VALUE.match(value):
            raise ConfigError(
                f"{config_key(name)} must hold key=value pairs with Kubernetes label syntax, got {item!r}"
            )
        out.append((key, value))
    return tuple(out)


def cpu_millis(name: str, value: str) -> int:
    m = _CPU.match(value)
    if not m:
        raise ConfigError(f"{config_key(name)} must be a CPU quantity like 2 or 500m, got {value!r}")
    return int(float(m.group(1))) if m.group(3) else int(float(m.group(1)) * 1000)


def memory_bytes(name: str, value: str) -> int:
    m = _MEMORY.match(value)
    if not m:
        raise ConfigError(f"{config_key(name)} must be a memory quantity like 4Gi or 512Mi, got {value!r}")
    return int(m.group(1)) * _MEMORY_UNITS[m.group(2)]


def duration(raw: Raw, name: str) -> str:
    """A Go duration as Karpenter takes it (10m, 1h30m, 720h) or Never."""
    value = text(raw, name, required=True)
    if not _DURATION.match(value):
        raise ConfigError(f"{config_key(name)} must be a duration like 10m, 1h30m or 720h, got {value!r}")
    return value


def duration_seconds(value: str) -> int | None:
    """The seconds of a duration `duration` accepted (10m, 1h30m, 720h); None for Never."""
    if value == "Never":
        return None
    m = _PROM_DURATION.match(value)
    if not m or not value:
        raise ValueError(f"not a duration: {value!r}")
    h, mi, sec = (int(g or 0) for g in m.groups())
    return 3600 * h + 60 * mi + sec


def go_duration(seconds: int) -> str:
    """Seconds as the shortest Go duration (1h30m, 45s), the form Karpenter and the API server parse."""
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{n}{unit}" for n, unit in ((h, "h"), (m, "m"), (s, "s")) if n) or "0s"


def prometheus_duration(raw: Raw, name: str, lo_s: int, hi_s: int) -> str:
    """A Prometheus/Alertmanager duration such as 30s, 5m or 1h30m, between lo_s and hi_s seconds."""
    value = text(raw, name, required=True)
    m = _PROM_DURATION.match(value)
    if not m:
        raise ConfigError(f"{config_key(name)} must be a duration like 30s, 5m or 1h30m, got {value!r}")
    h, mi, sec = (int(g or 0) for g in m.groups())
    seconds = 3600 * h + 60 * mi + sec
    if not lo_s <= seconds <= hi_s:
        raise ConfigError(f"{config_key(name)} must be between {lo_s}s and {hi_s}s, got {value!r}")
    return value


def image_reference(name: str, value: Any, production: bool) -> str:
    """A valid image reference; production refuses one that could move under the stack (no tag, or `latest`)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"{config_key(name)} must be an image reference like ghcr.io/acme/clawbot:1.2.0, got {value!r}"
        )
    try:
        ref = parse_image(value)
    except ImageReferenceError as exc:
        raise ConfigError(f"{config_key(name)}: {exc}") from None
    if production and not ref.pinned:
        raise ConfigError(f"{config_key(name)} must pin a tag or digest in production, got {value!r}")
    return value


def role_arn(raw: Raw, name: str, example: str) -> str:
    """An IAM role ARN, or '' (none: EKS Pod Identity associates the role instead of an IRSA annotation)."""
    value = text(raw, name).strip()
    if value and not _ROLE_ARN.match(value):
        raise ConfigError(
            f"{config_key(name)} must be an IAM role ARN like arn:aws:iam::123456789012:role/{example}, got {value!r}"
        )
    return value
