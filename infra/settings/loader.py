"""Reading a stack's config: `load_settings` takes every `clawbot:*` key from pulumi.Config once (the only code that
touches it), `parse_settings` turns raw values into checked StackSettings, topic by topic."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import pulumi

from infra.settings.access import parse_access
from infra.settings.alerts import parse_alerts
from infra.settings.checks import (
    check_stack,
    database_serves_every_replica,
    hub_token_is_set,
    smtp_credentials_pair,
    stack_names_its_cluster,
)
from infra.settings.cluster import parse_environment, parse_kubernetes_version, parse_namespace
from infra.settings.data import DATABASE_URL_KEY, database_connection, parse_backups, parse_data_volume, parse_database
from infra.settings.gpu import parse_gpu
from infra.settings.key_store import parse_key_store
from infra.settings.keys import CONFIG_KEYS, DEFAULTS, PROJECT, SECRET_KEYS, STRUCTURED_KEYS
from infra.settings.model import parse_model
from infra.settings.network import parse_network
from infra.settings.pod import parse_pod
from infra.settings.redis import parse_redis
from infra.settings.release import parse_release
from infra.settings.routing import parse_routing
from infra.settings.scaling import parse_scaling
from infra.settings.stack import StackSettings
from infra.settings.target import parse_target
from infra.settings.tls import parse_tls
from infra.settings.values import ConfigError, config_key


@dataclass(frozen=True)
class StackSecrets:
    """Secret config values, kept as secret Outputs so they never reach state or logs in plain text."""

    hub_token: pulumi.Output[str] | None
    smtp_password: pulumi.Output[str] | None
    conversation_database_url: pulumi.Output[str] | None


def parse_settings(values: Mapping[str, Any], *, stack: str) -> StackSettings:
    """Validate raw config values (missing keys take DEFAULTS) into StackSettings; raises ConfigError."""
    unknown = sorted(set(values) - set(DEFAULTS) - set(SECRET_KEYS) - set(STRUCTURED_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(config_key(k) for k in unknown)}; allowed keys are listed in Pulumi.yaml"
        )
    raw = {**DEFAULTS, **values}
    environment = parse_environment(raw)
    production = environment == "production"
    namespace = parse_namespace(raw)
    network, tls = parse_network(raw), parse_tls(raw)
    scaling = parse_scaling(raw)
    routing = parse_routing(raw)
    settings = StackSettings(
        stack=stack,
        environment=environment,
        namespace=namespace,
        network=network,
        tls=tls,
        scaling=scaling,
        release=parse_release(
            raw,
            production=production,
            min_replicas=scaling.min_replicas,
            max_replicas=scaling.max_replicas,
            split_by_weight=routing.gateway,
        ),
        gpu=parse_gpu(raw),
        alerts=parse_alerts(raw),
        pod=parse_pod(raw),
        data_volume=parse_data_volume(raw),
        model=parse_model(raw),
        kubernetes_version=parse_kubernetes_version(raw),
        access=parse_access(raw),
        redis=parse_redis(raw),
        backups=parse_backups(raw),
        database=parse_database(raw),
        key_store=parse_key_store(raw, namespace),
        routing=routing,
        target=parse_target(raw),
    )
    check_stack(settings)
    return settings


def load_settings(config: pulumi.Config | None = None) -> tuple[StackSettings, StackSecrets]:
    """Read every `clawbot:*` key of the current stack once, then the secrets; the only place that touches pulumi.Config."""
    config = config or pulumi.Config(PROJECT)
    settings = parse_settings(_plain_values(config), stack=pulumi.get_stack())
    # Read in plain once, here, to check its shape and port; the program only ever holds it as a secret Output.
    database_url = pulumi.runtime.get_config(f"{config.name}:{DATABASE_URL_KEY}") or None
    settings = replace(settings, database=database_connection(database_url, settings.database))
    provider = pulumi.Config("kubernetes")  # the provider's own keys: which cluster this stack deploys to
    settings = replace(
        settings,
        target=replace(
            settings.target, context=provider.get("context") or "", kubeconfig=bool(provider.get("kubeconfig"))
        ),
    )
    stack_names_its_cluster(settings)
    database_serves_every_replica(settings)
    hub, smtp = _secret(config, "hubToken"), _secret(config, "alertSmtpPassword")
    hub_token_is_set(settings, hub is not None)
    smtp_credentials_pair(settings, smtp is not None)
    return settings, StackSecrets(
        hub_token=hub if settings.model.hub_auth else None,
        smtp_password=smtp if settings.alerts.enabled else None,
        conversation_database_url=pulumi.Output.secret(database_url) if database_url else None,
    )


def _plain_values(config: pulumi.Config) -> dict[str, Any]:
    """The stack's values of the declared keys, typed as Pulumi.yaml declares them; unset keys are left out."""
    values: dict[str, Any] = {}
    for key in CONFIG_KEYS:
        if key.type == "array":
            got: Any = config.get_object(key.name)
        elif key.type == "integer":
            got = config.get_int(key.name)
        elif key.type == "boolean":
            got = config.get_bool(key.name)
        else:
            got = config.get(key.name)
        if got is not None:
            values[key.name] = got
    for name in STRUCTURED_KEYS:
        if (structured := config.get_object(name)) is not None:
            values[name] = structured
    return values


def _secret(config: pulumi.Config, name: str) -> pulumi.Output[str] | None:
    """A secret config value as a secret Output, or None when it is unset or empty (empty means "none")."""
    raw = pulumi.runtime.get_config(f"{config.name}:{name}")
    return pulumi.Output.secret(raw) if raw else None
