"""The real app (create_app) with production key files and no model (its load fails at once): every route,
middleware and rule as served, without paying for a model; the chat routes answer 503 past authentication."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import app.factory as factory
from app.settings import Settings
from tests.app.conftest import KeyFiles


@pytest.fixture
def modelless_app(
    make_settings: Callable[..., Settings], keyfiles: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., FastAPI]:
    """`build(**settings)`: create_app with the test key files (plus `ops`: admin only, `bench`: chat and benchmark)."""

    def no_model(settings: Settings, hub_token: Any) -> Any:
        raise RuntimeError("test: no model")

    monkeypatch.setattr(factory, "_load", no_model)
    keyfiles.add("ops", ("admin",))
    keyfiles.add("bench", ("chat", "benchmark"))
    keyfiles.write()
    return lambda **overrides: factory.create_app(make_settings(**overrides))


@pytest.fixture
def service(modelless_app: Callable[..., FastAPI]) -> Iterator[TestClient]:
    with TestClient(modelless_app()) as client:
        yield client
