"""Container image references: validation, the version label a pod carries, and the stack's record of deployed images.

The grammar is the one registries and container runtimes share (distribution/reference): an optional registry
host, lowercase path components, then `:tag` and/or `@sha256:<64 hex>`. A release is recorded by reference as
deployed; CI deploys `<repository>:<commit sha>@sha256:<digest>`, so what the history holds is a digest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?)"
_REFERENCE = re.compile(
    rf"^(?P<name>(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)
MAX_NAME_LENGTH = 255
# Rollback reaches this many releases back: the running one and the two before it (revisionHistoryLimit matches).
HISTORY_LENGTH = 3
_LABEL_VALUE_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


class ImageReferenceError(ValueError):
    """Not an image reference a container runtime would pull."""


@dataclass(frozen=True)
class ImageReference:
    name: str  # registry host (optional) and repository path
    tag: str | None
    digest: str | None  # sha256:<64 hex>

    @property
    def pinned(self) -> bool:
        """Names one image for good: by digest, or by a tag other than `latest` (tags can move; digests cannot)."""
        return self.digest is not None or (self.tag is not None and self.tag != "latest")

    @property
    def version_label(self) -> str:
        """A value for `app.kubernetes.io/version`: the tag (CI tags by commit), else the digest's first 12 hex digits."""
        if self.tag:
            value = _LABEL_VALUE_CHARS.sub("-", self.tag)[:63].strip("-_.")
            if value:
                return value
        if self.digest is None:
            return "latest"  # no tag and no digest is what a runtime pulls as :latest (refused in production)
        return "sha256-" + self.digest.split(":", 1)[1][:12]


def parse_image(ref: str) -> ImageReference:
    """`ghcr.io/acme/clawbot:abc123@sha256:...` -> its parts; raises ImageReferenceError naming what is wrong."""
    match = _REFERENCE.match(ref)
    if not match:
        raise ImageReferenceError(
            f"{ref!r} is not an image reference: expected [registry/]repository[:tag][@sha256:<64 hex digits>] with a "
            "lowercase repository"
        )
    if len(match.group("name")) > MAX_NAME_LENGTH:
        raise ImageReferenceError(f"{ref!r} has a repository name longer than {MAX_NAME_LENGTH} characters")
    return ImageReference(name=match.group("name"), tag=match.group("tag"), digest=match.group("digest"))


def is_image(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parse_image(value)
    except ImageReferenceError:
        return False
    return True


def image_history(previous: Any, deployed: str) -> list[str]:
    """The images this stack ran, newest first: this update's, then the last update's history, without repeats.

    `previous` is the `imageHistory` output of the stack's last update, read back through a stack reference;
    anything there that is not an image reference (an older format, a hand edit) is dropped rather than
    offered to a rollback.
    """
    past = [p for p in previous if is_image(p)] if isinstance(previous, list) else []
    return list(dict.fromkeys([deployed, *past]))[:HISTORY_LENGTH]
