"""Stack settings for releases: which image the stable set runs, and the optional canary beside it.

The `canary` block is an object (`pulumi config set --path canary.image <ref>`), which Pulumi.yaml's config schema
cannot type (it knows string, integer, boolean and array), so it is listed in STRUCTURED_KEYS and checked here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from infra.images import ImageReferenceError, parse_image
from infra.settings import ConfigError, ScalingSettings, _int, _key

CANARY_KEY = "canary"
CANARY_FIELDS = ("image", "weight")
DEFAULT_CANARY_WEIGHT = 10
# Above half, the "canary" serves more than the release it is meant to be checked against.
MAX_CANARY_WEIGHT = 50
STRUCTURED_KEYS: dict[str, str] = {
    CANARY_KEY: "Canary release: {image: <ref>, weight: 1..50 (percent, default 10)}; absent for none",
}


@dataclass(frozen=True)
class CanarySettings:
    image: str
    weight_percent: int  # what the operator asked for
    replicas: int  # derived from the weight and the stable floor (minReplicas)

    def share_percent(self, stable_replicas: int) -> float:
        """The canary's share of requests when `stable_replicas` stable pods are ready: the Service spreads
        connections over ready pods, so the share is a count of pods, not the weight asked for."""
        return round(100 * self.replicas / (self.replicas + stable_replicas), 1)


def canary_replicas(weight_percent: int, stable_replicas: int) -> int:
    """Canary pods so that canary / (canary + stable) is nearest the weight; never fewer than one pod."""
    return max(1, round(weight_percent * stable_replicas / (100 - weight_percent)))


def image_setting(name: str, value: Any, production: bool) -> str:
    """A valid image reference; production refuses one that could move under the stack (no tag, or `latest`)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{_key(name)} must be an image reference like ghcr.io/acme/clawbot:1.2.0, got {value!r}")
    try:
        ref = parse_image(value)
    except ImageReferenceError as exc:
        raise ConfigError(f"{_key(name)}: {exc}") from None
    if production and not ref.pinned:
        raise ConfigError(f"{_key(name)} must pin a tag or digest in production, got {value!r}")
    return value


def parse_canary(raw: Any, stable_image: str, scaling: ScalingSettings, production: bool) -> CanarySettings | None:
    """The canary beside the stable set, from the `canary` block; None without one.

    Promoting is one change of config (README: Promote): `image` takes the canary's image and the block goes, so
    nothing is left behind that a later rollback of `image` would have to know about.
    """
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{_key(CANARY_KEY)} must be an object like {{image: <ref>, weight: 10}}, got {raw!r}")
    unknown = sorted(set(raw) - set(CANARY_FIELDS))
    if unknown:
        raise ConfigError(f"{_key(CANARY_KEY)} has unknown field(s) {', '.join(unknown)}; allowed: {', '.join(CANARY_FIELDS)}")
    fields = {f"{CANARY_KEY}.{k}": v for k, v in raw.items()}
    if f"{CANARY_KEY}.image" not in fields:
        raise ConfigError(f"{_key(CANARY_KEY)}.image must name the release to try, e.g. "
                          "`pulumi config set --path canary.image ghcr.io/acme/clawbot:<sha>@sha256:<digest>`")
    image = image_setting(f"{CANARY_KEY}.image", fields[f"{CANARY_KEY}.image"], production)
    fields.setdefault(f"{CANARY_KEY}.weight", DEFAULT_CANARY_WEIGHT)
    weight = _int(fields, f"{CANARY_KEY}.weight", 1, MAX_CANARY_WEIGHT)
    if image == stable_image:
        raise ConfigError(
            f"{_key(CANARY_KEY)}.image is {image!r}, the image the stable set runs already, so there is nothing to compare; "
            f"set it to the new release, or remove the block (`pulumi config rm {CANARY_KEY}`)"
        )
    return CanarySettings(image=image, weight_percent=weight, replicas=canary_replicas(weight, scaling.min_replicas))
