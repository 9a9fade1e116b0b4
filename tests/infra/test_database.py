"""The conversation database in the program: a secret URL delivered through a Secret, or none (SQLite, one replica)."""

from __future__ import annotations

import hashlib
import json

import pytest

from app.settings import Settings, load_settings
from infra.components.chat_pod import CHECKSUM_ANNOTATION
from infra.tools.synth import SHAPED_STAND_INS, SynthError, Synthesis, synthesize
from tests.infra.components.test_chat_service import env_of
from tests.infra.conftest import chat_container

URL = "postgresql://clawbot:s3cret-Pa55word@db.internal.example:6432/clawbot"


def read_url(settings: Settings) -> str | None:
    url = settings.conversation_database_url
    return url.get_secret_value() if url else None


def checksum(s: Synthesis) -> str:
    return s.one("Deployment", "clawbot").manifest["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]


def test_the_url_reaches_the_pods_from_a_secret_never_the_configmap() -> None:
    s = synthesize("prod", overrides={"conversationDatabaseUrl": URL})
    assert s.one("Secret", "clawbot-database").manifest["stringData"] == {"url": URL}
    (entry,) = chat_container(s)["env"]
    assert entry == {
        "name": "CONVERSATION_DATABASE_URL",
        "valueFrom": {"secretKeyRef": {"name": "clawbot-database", "key": "url"}},
    }
    assert read_url(load_settings(env_of(s))) == URL  # what the app reads, as the kubelet builds it
    config = s.one("ConfigMap", "clawbot-config").manifest["data"]
    assert "CONVERSATION_DATABASE_URL" not in config and "CONVERSATION_JOURNAL" not in config  # no SQLite here
    plain = json.dumps([o.manifest for o in s.objects if o.kind != "Secret"]) + json.dumps(s.outputs)
    assert "s3cret-Pa55word" not in plain
    # The pod template's checksum moves with the URL (a new password rolls the pods) but is no hash of it alone.
    other = synthesize("prod", overrides={"conversationDatabaseUrl": URL.replace("s3cret", "n3w")})
    assert checksum(other) != checksum(s)
    assert hashlib.sha256(URL.encode()).hexdigest() not in plain
    # The chat pods may reach the database on the URL's port, at databaseEgressCidrs only.
    egress = s.one("NetworkPolicy", "clawbot-chat-egress").manifest["spec"]["egress"]
    assert {"to": [{"ipBlock": {"cidr": "10.0.64.0/20"}}], "ports": [{"protocol": "TCP", "port": 6432}]} in egress


def test_a_production_stack_with_several_replicas_and_no_database_is_refused_at_preview() -> None:
    with pytest.raises(SynthError) as err:
        synthesize("prod", overrides={"conversationDatabaseUrl": ""})
    message = str(err.value)
    assert "clawbot:maxReplicas 10 needs a conversation database" in message
    assert "clawbot:conversationDatabaseUrl" in message and "clawbot:databaseEgressCidrs" in message


def test_one_replica_keeps_sqlite_by_default(dev: Synthesis) -> None:
    assert dev.find("Secret", "clawbot-database") == [] and "env" not in chat_container(dev)
    assert load_settings({**env_of(dev), "APP_ENV": "development"}).conversation_database_url is None
    single = synthesize("prod", overrides={"minReplicas": 1, "maxReplicas": 1, "conversationDatabaseUrl": ""})
    assert single.find("Secret", "clawbot-database") == [] and single.find("CronJob", "clawbot-database-backups") == []


@pytest.mark.parametrize(
    "url, changes, message",
    [
        (
            "mysql://clawbot:s3cret-Pa55word@db:3306/x",
            {},
            "must be a postgresql://USER:PASSWORD@HOST:5432/DB URL, got scheme 'mysql'",
        ),
        ("s3cret-Pa55word", {}, "got a value without a scheme"),
        ("postgresql://clawbot:s3cret-Pa55word@db:99999/x", {}, "has a port that is not a number 1..65535"),
        (URL, {"databaseEgressCidrs": []}, "clawbot:databaseEgressCidrs must list the CIDRs the database listens on"),
    ],
)
def test_a_bad_database_setting_is_refused_without_echoing_the_url(
    url: str, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(SynthError) as err:
        synthesize("prod", overrides={"conversationDatabaseUrl": url, **changes})
    assert message in str(err.value) and "s3cret-Pa55word" not in str(err.value)


def test_synth_stands_in_a_url_of_the_right_shape(prod: Synthesis) -> None:
    assert "conversationDatabaseUrl" in prod.stand_ins
    assert (
        prod.one("Secret", "clawbot-database").manifest["stringData"]["url"]
        == SHAPED_STAND_INS["conversationDatabaseUrl"]
    )
