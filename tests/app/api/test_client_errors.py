"""Only the errors the code means as the client's become 400s: the engine's InvalidRequestError keeps its message;
any other ValueError raised while serving is the service's fault, a logged 500 whose body says nothing of it."""

from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.errors import install_error_handlers
from app.api.serving import ChatJob, engine_calls
from app.inference.requests import InvalidRequestError, SamplingParams
from app.observability.metrics import build_metrics


class RaisingEngine:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def submit(self, *args: object, **kwargs: object) -> None:
        raise self.exc


def client_for(exc: Exception) -> TestClient:
    engine = RaisingEngine(exc)
    metrics = build_metrics()
    job = ChatJob(
        request_id="r1",
        route="/v1/chat/completions",
        key_id="k1",
        messages=[],
        prompt_ids=[1],
        params=SamplingParams(max_tokens=4),
        cache_key=None,
        plan=None,
    )  # type: ignore[arg-type]
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/submit")
    def submit() -> None:
        engine_calls.submit(engine, job, metrics)  # type: ignore[arg-type]

    return TestClient(app, raise_server_exceptions=False)


def test_an_invalid_request_is_a_400_naming_the_problem() -> None:
    reply = client_for(InvalidRequestError("the prompt is empty; at least one token is needed")).post("/submit")
    assert reply.status_code == 400
    assert reply.json()["error"] == {
        "type": "invalid_request_error",
        "code": "invalid_request",
        "message": "the prompt is empty; at least one token is needed",
    }


def test_any_other_value_error_is_a_500_that_leaks_nothing_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="clawbot.errors"):
        reply = client_for(ValueError("internal detail: tensor shape (3, 7)")).post("/submit")
    assert reply.status_code == 500
    assert reply.json()["error"] == {
        "type": "server_error",
        "code": "internal_error",
        "message": "internal server error",
    }
    assert "internal detail" not in reply.text
    (record,) = [r for r in caplog.records if r.name == "clawbot.errors"]
    assert record.exc_info and "internal detail" in str(record.exc_info[1])


def test_the_engine_raises_the_client_error_for_bad_parameters() -> None:
    with pytest.raises(InvalidRequestError, match="temperature must be between 0 and"):
        SamplingParams(max_tokens=4, temperature=-1.0).validate()
