"""Cluster settings: the stack's environment, its namespace, and the Kubernetes version the manifests must run on."""

from __future__ import annotations

import re

from infra.settings.values import DNS_LABEL, ConfigError, Raw, choice, config_key, text

# Oldest Kubernetes minor the manifests need: lifecycle.preStop.sleep is on by default from 1.30 (beta; GA 1.34).
MIN_KUBERNETES = (1, 30)
_VERSION = re.compile(r"^(\d+)\.(\d+)\+?$")


def parse_environment(raw: Raw) -> str:
    """The stack's environment is the app's APP_ENV."""
    return choice(raw, "environment")


def parse_namespace(raw: Raw) -> str:
    namespace = text(raw, "namespace", required=True)
    if not DNS_LABEL.match(namespace):
        raise ConfigError(
            f"{config_key('namespace')} must be a DNS label (lowercase letters, digits and '-'), got {namespace!r}"
        )
    return namespace


def parse_kubernetes_version(raw: Raw) -> tuple[int, int]:
    version_text = text(raw, "kubernetesVersion", required=True).strip()
    m = _VERSION.match(version_text)
    if not m:
        raise ConfigError(f"{config_key('kubernetesVersion')} must be a minor version like 1.33, got {version_text!r}")
    version = (int(m.group(1)), int(m.group(2)))
    if version < MIN_KUBERNETES:
        raise ConfigError(
            f"{config_key('kubernetesVersion')} {version_text} is older than the oldest supported, "
            f"{MIN_KUBERNETES[0]}.{MIN_KUBERNETES[1]}: the chat pods stop with a lifecycle.preStop.sleep hook, which needs "
            "1.30; upgrade the cluster"
        )
    return version
