"""Release settings: which image the stable set runs, and the optional canary beside it.

The `canary` block is an object (`pulumi config set --path canary.image <ref>`), which Pulumi.yaml's config schema
cannot type, so it is one of keys.STRUCTURED_KEYS and is checked here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from infra.settings.keys import CANARY_KEY
from infra.settings.values import ConfigError, Raw, config_key, image_reference, integer

CANARY_FIELDS = ("image", "weight")
DEFAULT_CANARY_WEIGHT = 10
# Above half, the "canary" serves more than the release it is meant to be checked against.
MAX_CANARY_WEIGHT = 50


@dataclass(frozen=True)
class CanarySettings:
    image: str
    weight_percent: int  # what the operator asked for
    replicas: int  # derived from the weight and the stable set's replica range
    split_by_weight: bool = (
        False  # an HTTPRoute splits requests by weight; otherwise the Service spreads them over pods
    )

    def share_percent(self, stable_replicas: int) -> float:
        """The canary's share of requests when `stable_replicas` stable pods are ready. An HTTPRoute gives the weight
        at any count; the Service spreads connections over ready pods, so there the share is a count of pods."""
        if self.split_by_weight:
            return float(self.weight_percent)
        return round(100 * self.replicas / (self.replicas + stable_replicas), 1)


@dataclass(frozen=True)
class ReleaseSettings:
    image: str  # what the stable set runs
    canary: CanarySettings | None


def canary_replicas(weight_percent: int, stable_replicas: int) -> int:
    """Canary pods so that canary / (canary + stable) is nearest the weight; never fewer than one pod."""
    return max(1, round(weight_percent * stable_replicas / (100 - weight_percent)))


def parse_release(
    raw: Raw, *, production: bool, min_replicas: int, max_replicas: int | None = None, split_by_weight: bool = False
) -> ReleaseSettings:
    """The stable image and the canary. Behind an HTTPRoute the canary gets pods for its weight's part of the load at
    maxReplicas (its share no longer depends on its pods); behind the Service its pods are what sets its share, sized
    at minReplicas (checks.canary_share_is_served holds that share to the weight over the whole range)."""
    image = image_reference("image", raw["image"], production)
    sized_at = (max_replicas or min_replicas) if split_by_weight else min_replicas
    return ReleaseSettings(
        image=image,
        canary=parse_canary(raw.get(CANARY_KEY), image, sized_at, production, split_by_weight=split_by_weight),
    )


def parse_canary(
    raw: Any, stable_image: str, stable_replicas: int, production: bool, *, split_by_weight: bool = False
) -> CanarySettings | None:
    """The canary beside the stable set, from the `canary` block; None without one.

    Promoting is one change of config (docs/operations/releases.md, "Promote"): `image` takes the canary's image and the block goes, so
    nothing is left behind that a later rollback of `image` would have to know about.
    """
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{config_key(CANARY_KEY)} must be an object like {{image: <ref>, weight: 10}}, got {raw!r}")
    unknown = sorted(set(raw) - set(CANARY_FIELDS))
    if unknown:
        raise ConfigError(
            f"{config_key(CANARY_KEY)} has unknown field(s) {', '.join(unknown)}; allowed: {', '.join(CANARY_FIELDS)}"
        )
    fields = {f"{CANARY_KEY}.{k}": v for k, v in raw.items()}
    if f"{CANARY_KEY}.image" not in fields:
        raise ConfigError(
            f"{config_key(CANARY_KEY)}.image must name the release to try, e.g. "
            "`pulumi config set --path canary.image ghcr.io/acme/clawbot:<sha>@sha256:<digest>`"
        )
    image = image_reference(f"{CANARY_KEY}.image", fields[f"{CANARY_KEY}.image"], production)
    fields.setdefault(f"{CANARY_KEY}.weight", DEFAULT_CANARY_WEIGHT)
    weight = integer(fields, f"{CANARY_KEY}.weight", 1, MAX_CANARY_WEIGHT)
    if image == stable_image:
        raise ConfigError(
            f"{config_key(CANARY_KEY)}.image is {image!r}, the image the stable set runs already, so there is nothing to "
            f"compare; set it to the new release, or remove the block (`pulumi config rm {CANARY_KEY}`)"
        )
    return CanarySettings(
        image=image,
        weight_percent=weight,
        replicas=canary_replicas(weight, stable_replicas),
        split_by_weight=split_by_weight,
    )
