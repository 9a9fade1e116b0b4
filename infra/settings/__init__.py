"""Stack configuration: every `clawbot:*` key read once into one frozen, validated StackSettings.

One module per topic (network, tls, gpu, scaling, alerts, data, release, model, pod, access, redis, cluster), each
with its settings dataclass and a small parser that checks its own keys; `checks` holds every rule that ties two
topics together; `keys` declares the keys (Pulumi.yaml's schema is held to it); `values` parses single values.
Components never call `pulumi.Config` themselves: `__main__.py` calls `load_settings` and hands them settings.
"""

from infra.settings.keys import CONFIG_KEYS, DEFAULTS, PROJECT, SECRET_KEYS, STRUCTURED_KEYS
from infra.settings.loader import StackSecrets, load_settings, parse_settings
from infra.settings.stack import StackSettings
from infra.settings.values import ConfigError

__all__ = [
    "CONFIG_KEYS",
    "DEFAULTS",
    "PROJECT",
    "SECRET_KEYS",
    "STRUCTURED_KEYS",
    "ConfigError",
    "StackSecrets",
    "StackSettings",
    "load_settings",
    "parse_settings",
]
