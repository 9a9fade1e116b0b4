"""Service settings: read once from the environment into one typed, validated object.

`ENV_VARS` lists every variable the service reads; `infra/` renders the Deployment's
env from the same names and a test holds the two to each other.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

SERVICE_PORT = 18789
# /metrics has a listener of its own, so the LoadBalancer (which exposes SERVICE_PORT only) never serves it.
METRICS_PORT = 9464
QUANTIZATIONS = ("nf4", "int8", "none")
DTYPES = ("auto", "float32", "bfloat16", "float16")  # the compute dtype; app.inference.loader.compute_dtype resolves auto
# SQLite journal of the conversation store: WAL on a local disk; the rollback journal where several pods share
# DATA_DIR over a network filesystem (WAL's shared-memory index does not work across hosts).
JOURNAL_MODES = ("wal", "delete")
APP_ENVS = ("production", "development")
# What opens the key file's data key: a KEK file (KEK_PATH), KMS (the KEK never leaves AWS KMS), or the data key
# itself (DATA_KEY_PATH), which an init step unwrapped with a KEK this container never sees.
KEY_ENCRYPTIONS = ("kek-file", "kms", "data-key-file")
EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
# How the model writes tool calls (app/api/tools registers one parser per name); "auto" reads the chat template.
TOOL_CALL_PARSERS = ("auto", "hermes", "llama3_json")


class SettingsError(ValueError):
    """A setting is missing or out of range; the message names the variable and the value."""


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer between {lo} and {hi}, got {raw!r}") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number between {lo} and {hi}, got {raw!r}") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name) or default
    if value not in allowed:
        raise SettingsError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _database_url(env: Mapping[str, str], name: str) -> str | None:
    """A postgresql:// URL; an error names the scheme it got, never the URL (it holds a password)."""
    raw = env.get(name) or None
    if raw is None:
        return None
    scheme = raw.split("://", 1)[0] if "://" in raw else ""
    if scheme not in ("postgresql", "postgres"):
        got = f"scheme {scheme!r}" if scheme else "a value without a scheme"
        raise SettingsError(f"{name} must be a postgresql:// URL (postgresql://USER:PASSWORD@HOST:5432/DB), got {got}")
    return raw


def _cidrs(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name, "")
    out = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            out.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise SettingsError(f"{name} must be a comma-separated list of CIDRs, got {part!r}") from None
    return tuple(out)


@dataclass(frozen=True)
class Settings:
    app_env: str = "production"
    host: str = "0.0.0.0"
    port: int = SERVICE_PORT
    metrics_port: int = METRICS_PORT
    model_path: str = EMBEDDED_MODEL
    model_name: str = "clawbot"
    quantization: str = "none"
    dtype: str = "auto"
    max_tokens: int = 2048
    max_batch_size: int = 32
    batch_wait_ms: int = 10
    max_queue: int = 256
    # KV-cache tokens the engine admits requests against; 0 derives it (CUDA: free memory, CPU: a default).
    kv_cache_tokens: int = 0
    # Prompt tokens per prefill forward pass: longer prompts are read in chunks between decode steps.
    prefill_chunk_tokens: int = 2048
    # Tokens of prompt heads whose KV is kept for reuse by later prompts that start the same way; 0 = off.
    prefix_cache_tokens: int = 8192
    data_dir: Path = Path("/app/data")
    api_key_path: Path | None = None
    kek_path: Path | None = None
    key_encryption: str = "kek-file"
    data_key_path: Path | None = None
    dev_api_key: str | None = None
    redis_url: str | None = None
    allowed_cidrs: tuple[str, ...] = ()
    blocked_cidrs: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    # Who may scrape METRICS_PORT; empty leaves it to the NetworkPolicy (BLOCKED_CIDRS still apply).
    metrics_allowed_cidrs: tuple[str, ...] = ()
    jwt_ttl_s: int = 3600
    jwt_audience: str = "clawbot"
    rate_limit_per_key: int = 600
    rate_limit_per_ip: int = 1200
    # Prompt + completion tokens a key may use per minute, alongside its requests per minute.
    rate_limit_tokens_per_key: int = 200_000
    # Requests one key may have queued or in flight at once (all replicas together when REDIS_URL is set);
    # below MAX_QUEUE, one key cannot fill the shared queue and lock the other keys out.
    max_concurrent_per_key: int = 32
    # Failed authentications per minute from one address (IPv6 by /64) before its auth attempts get 429.
    auth_failures_per_minute: int = 30
    abnormal_key_per_minute: int = 1000
    max_body_bytes: int = 1_048_576
    max_messages: int = 256
    generation_timeout_s: float = 120.0
    cache_ttl_s: int = 3600
    cache_max_entries: int = 10_000
    retention_days: int = 30
    conversation_journal: str = "wal"
    # PostgreSQL for the conversation store (several replicas); it carries a password, so it is kept out of repr.
    conversation_database_url: str | None = field(default=None, repr=False)
    conversation_database_pool_size: int = 8
    # How long a request waits for an unreachable conversation database (retrying) before it is answered 503.
    conversation_database_wait_s: float = 15.0
    warmup_prompts: tuple[str, ...] = ("Hello!",)
    torch_threads: int = 0
    # How long a SIGTERM waits for accepted requests; the Deployment's terminationGracePeriodSeconds is derived from it.
    shutdown_grace_s: float = 25.0
    # HTTPS on PORT when both are set (PEM files); the metrics port stays plain HTTP inside the cluster.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # How often the certificate files are checked for a renewal (cert-manager rewrites the mounted Secret).
    tls_reload_s: float = 60.0
    tool_call_parser: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def development(self) -> bool:
        return self.app_env == "development"

    def with_overrides(self, **changes: Any) -> "Settings":
        return replace(self, **changes)


ENV_VARS: dict[str, str] = {
    "APP_ENV": "app_env",
    "HOST": "host",
    "PORT": "port",
    "METRICS_PORT": "metrics_port",
    "MODEL_PATH": "model_path",
    "MODEL_NAME": "model_name",
    "QUANTIZATION": "quantization",
    "DTYPE": "dtype",
    "MAX_TOKENS": "max_tokens",
    "MAX_BATCH_SIZE": "max_batch_size",
    "BATCH_WAIT_MS": "batch_wait_ms",
    "MAX_QUEUE": "max_queue",
    "KV_CACHE_TOKENS": "kv_cache_tokens",
    "PREFILL_CHUNK_TOKENS": "prefill_chunk_tokens",
    "PREFIX_CACHE_TOKENS": "prefix_cache_tokens",
    "DATA_DIR": "data_dir",
    "API_KEY_PATH": "api_key_path",
    "KEK_PATH": "kek_path",
    "KEY_ENCRYPTION": "key_encryption",
    "DATA_KEY_PATH": "data_key_path",
    "DEV_API_KEY": "dev_api_key",
    "REDIS_URL": "redis_url",
    "ALLOWED_CIDRS": "allowed_cidrs",
    "BLOCKED_CIDRS": "blocked_cidrs",
    "TRUSTED_PROXIES": "trusted_proxies",
    "METRICS_ALLOWED_CIDRS": "metrics_allowed_cidrs",
    "JWT_TTL_SECONDS": "jwt_ttl_s",
    "JWT_AUDIENCE": "jwt_audience",
    "RATE_LIMIT_PER_KEY": "rate_limit_per_key",
    "RATE_LIMIT_PER_IP": "rate_limit_per_ip",
    "RATE_LIMIT_TOKENS_PER_KEY": "rate_limit_tokens_per_key",
    "MAX_CONCURRENT_PER_KEY": "max_concurrent_per_key",
    "AUTH_FAILURES_PER_MINUTE": "auth_failures_per_minute",
    "ABNORMAL_KEY_PER_MINUTE": "abnormal_key_per_minute",
    "MAX_BODY_BYTES": "max_body_bytes",
    "MAX_MESSAGES": "max_messages",
    "GENERATION_TIMEOUT_SECONDS": "generation_timeout_s",
    "CACHE_TTL_SECONDS": "cache_ttl_s",
    "CACHE_MAX_ENTRIES": "cache_max_entries",
    "RETENTION_DAYS": "retention_days",
    "CONVERSATION_JOURNAL": "conversation_journal",
    "CONVERSATION_DATABASE_URL": "conversation_database_url",
    "CONVERSATION_DATABASE_POOL_SIZE": "conversation_database_pool_size",
    "CONVERSATION_DATABASE_WAIT_SECONDS": "conversation_database_wait_s",
    "WARMUP_PROMPTS": "warmup_prompts",
    "TORCH_THREADS": "torch_threads",
    "SHUTDOWN_GRACE_SECONDS": "shutdown_grace_s",
    "TLS_CERT_FILE": "tls_cert_file",
    "TLS_KEY_FILE": "tls_key_file",
    "TLS_RELOAD_SECONDS": "tls_reload_s",
    "TOOL_CALL_PARSER": "tool_call_parser",
}
assert set(ENV_VARS.values()) == {f.name for f in fields(Settings)} - {"extra"}


def _check_tls(s: Settings) -> None:
    if (s.tls_cert_file is None) != (s.tls_key_file is None):
        have, lack = ("TLS_CERT_FILE", "TLS_KEY_FILE") if s.tls_cert_file else ("TLS_KEY_FILE", "TLS_CERT_FILE")
        raise SettingsError(f"{have} is set but {lack} is not; HTTPS needs both the certificate and its key (or neither)")
    for name, path in (("TLS_CERT_FILE", s.tls_cert_file), ("TLS_KEY_FILE", s.tls_key_file)):
        if path is not None and not path.is_file():
            raise SettingsError(f"{name} must name a readable PEM file, got {str(path)!r} (no such file)")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from `env` (default: os.environ). Raises SettingsError naming the variable."""
    env = os.environ if env is None else env
    app_env = _choice(env, "APP_ENV", "production", APP_ENVS)
    optional_path = lambda name: Path(env[name]) if env.get(name) else None  # noqa: E731
    s = Settings(
        app_env=app_env,
        host=env.get("HOST") or "0.0.0.0",
        port=_int(env, "PORT", SERVICE_PORT, 1, 65535),
        metrics_port=_int(env, "METRICS_PORT", METRICS_PORT, 1, 65535),
        model_path=env.get("MODEL_PATH") or EMBEDDED_MODEL,
        model_name=env.get("MODEL_NAME") or "clawbot",
        quantization=_choice(env, "QUANTIZATION", "none", QUANTIZATIONS),
        dtype=_choice(env, "DTYPE", "auto", DTYPES),
        max_tokens=_int(env, "MAX_TOKENS", 2048, 1, 8192),
        max_batch_size=_int(env, "MAX_BATCH_SIZE", 32, 1, 256),
        batch_wait_ms=_int(env, "BATCH_WAIT_MS", 10, 0, 10_000),
        max_queue=_int(env, "MAX_QUEUE", 256, 1, 100_000),
        kv_cache_tokens=_int(env, "KV_CACHE_TOKENS", 0, 0, 100_000_000),
        prefill_chunk_tokens=_int(env, "PREFILL_CHUNK_TOKENS", 2048, 16, 1_048_576),
        prefix_cache_tokens=_int(env, "PREFIX_CACHE_TOKENS", 8192, 0, 100_000_000),
        data_dir=Path(env.get("DATA_DIR") or "/app/data"),
        api_key_path=optional_path("API_KEY_PATH"),
        kek_path=optional_path("KEK_PATH"),
        key_encryption=_choice(env, "KEY_ENCRYPTION", "kek-file", KEY_ENCRYPTIONS),
        data_key_path=optional_path("DATA_KEY_PATH"),
        dev_api_key=env.get("DEV_API_KEY") or None,
        redis_url=env.get("REDIS_URL") or None,
        allowed_cidrs=_cidrs(env, "ALLOWED_CIDRS"),
        blocked_cidrs=_cidrs(env, "BLOCKED_CIDRS"),
        trusted_proxies=_cidrs(env, "TRUSTED_PROXIES"),
        metrics_allowed_cidrs=_cidrs(env, "METRICS_ALLOWED_CIDRS"),
        jwt_ttl_s=_int(env, "JWT_TTL_SECONDS", 3600, 30, 3600),
        jwt_audience=env.get("JWT_AUDIENCE") or "clawbot",
        rate_limit_per_key=_int(env, "RATE_LIMIT_PER_KEY", 600, 1, 1_000_000),
        rate_limit_per_ip=_int(env, "RATE_LIMIT_PER_IP", 1200, 1, 1_000_000),
        rate_limit_tokens_per_key=_int(env, "RATE_LIMIT_TOKENS_PER_KEY", 200_000, 1, 1_000_000_000),
        max_concurrent_per_key=_int(env, "MAX_CONCURRENT_PER_KEY", 32, 1, 100_000),
        auth_failures_per_minute=_int(env, "AUTH_FAILURES_PER_MINUTE", 30, 1, 1_000_000),
        abnormal_key_per_minute=_int(env, "ABNORMAL_KEY_PER_MINUTE", 1000, 1, 1_000_000),
        max_body_bytes=_int(env, "MAX_BODY_BYTES", 1_048_576, 1024, 64 * 1_048_576),
        max_messages=_int(env, "MAX_MESSAGES", 256, 1, 10_000),
        generation_timeout_s=_float(env, "GENERATION_TIMEOUT_SECONDS", 120.0, 1.0, 3600.0),
        cache_ttl_s=_int(env, "CACHE_TTL_SECONDS", 3600, 0, 30 * 86400),
        cache_max_entries=_int(env, "CACHE_MAX_ENTRIES", 10_000, 0, 10_000_000),
        retention_days=_int(env, "RETENTION_DAYS", 30, 1, 3650),
        conversation_journal=_choice(env, "CONVERSATION_JOURNAL", "wal", JOURNAL_MODES),
        conversation_database_url=_database_url(env, "CONVERSATION_DATABASE_URL"),
        conversation_database_pool_size=_int(env, "CONVERSATION_DATABASE_POOL_SIZE", 8, 1, 100),
        conversation_database_wait_s=_float(env, "CONVERSATION_DATABASE_WAIT_SECONDS", 15.0, 1.0, 300.0),
        warmup_prompts=tuple(p for p in (env.get("WARMUP_PROMPTS") or "Hello!").split("|") if p.strip()),
        torch_threads=_int(env, "TORCH_THREADS", 0, 0, 1024),
        shutdown_grace_s=_float(env, "SHUTDOWN_GRACE_SECONDS", 25.0, 1.0, 3600.0),
        tls_cert_file=optional_path("TLS_CERT_FILE"),
        tls_key_file=optional_path("TLS_KEY_FILE"),
        tls_reload_s=_float(env, "TLS_RELOAD_SECONDS", 60.0, 1.0, 86400.0),
        tool_call_parser=_choice(env, "TOOL_CALL_PARSER", "auto", TOOL_CALL_PARSERS),
    )
    _check_tls(s)
    if s.metrics_port == s.port:
        raise SettingsError(f"METRICS_PORT must differ from PORT ({s.port}): /metrics is served on a port of its own")
    if not s.development:
        # KMS needs no file beside the key file: the key file names its KMS key.
        opener = {"kek-file": ("KEK_PATH", s.kek_path), "data-key-file": ("DATA_KEY_PATH", s.data_key_path)}
        needed = [("API_KEY_PATH", s.api_key_path), *([opener[s.key_encryption]] if s.key_encryption in opener else [])]
        missing = [n for n, v in needed if v is None]
        if missing:
            mode = "" if s.key_encryption == "kek-file" else f" with KEY_ENCRYPTION={s.key_encryption}"
            raise SettingsError(
                f"{' and '.join(missing)} must be set in production (APP_ENV=production){mode}; "
                "set APP_ENV=development to run with a local key"
            )
        if s.dev_api_key:
            raise SettingsError("DEV_API_KEY is only accepted with APP_ENV=development")
    return s
