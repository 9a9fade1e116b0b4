"""The images the tests build once per session (and reuse across sessions while their inputs are unchanged)."""

from __future__ import annotations

import pytest

from tests.image.podman import BuiltImage, Podman, app_image, base_image, podman, redis_image


@pytest.fixture(scope="session")
def pm() -> Podman:
    return podman()


@pytest.fixture(scope="session")
def base(pm: Podman) -> str:
    return base_image(pm)


@pytest.fixture(scope="session")
def image(pm: Podman, base: str) -> BuiltImage:
    return app_image(pm, base)


@pytest.fixture(scope="session")
def redis(pm: Podman, base: str) -> str:
    return redis_image(pm, base)
