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
# auto: a GGUF keeps its own 4-bit blocks (gguf); a Hugging Face directory gets nf4 on CUDA and DTYPE on CPU.
QUANTIZATIONS = ("auto", "gguf", "nf4", "int8", "none")
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


def described(default: Any, description: str) -> Any:
    """A Settings field and what it means: docs/reference/service-settings.md is generated from these."""
    return field(default=default, metadata={"description": description})


@dataclass(frozen=True)
class Settings:
    app_env: str = described(
        "production", "`development` accepts `DEV_API_KEY` or makes a local key-encryption key and API key under "
        "`DATA_DIR/dev-keys/` (the key is printed once); `production` requires `API_KEY_PATH` and what `KEY_ENCRYPTION` opens it with")
    host: str = described("0.0.0.0", "Address the API listens on")
    port: int = described(SERVICE_PORT, "The API port (HTTPS when `TLS_CERT_FILE` and `TLS_KEY_FILE` are set)")
    # /metrics has a listener of its own, so the LoadBalancer (which exposes SERVICE_PORT only) never serves it.
    metrics_port: int = described(
        METRICS_PORT, "`/metrics` on a port of its own, never the API's (the LoadBalancer does not expose it)")
    model_path: str = described(
        EMBEDDED_MODEL, "A Hugging Face directory, a GGUF file, a hub id (`org/name`), or the embedded "
        "SmolLM2-135M-Instruct")
    model_name: str = described("clawbot", "The model's name in `/v1/models` and in answers")
    quantization: str = described(
        "auto", "`auto`: a GGUF keeps its own 4-bit blocks (`gguf`), a Hugging Face directory gets `nf4` on CUDA and "
        "`DTYPE` on CPU; `gguf` (Q4_0/Q4_1/Q4_K blocks as torch int4 weights, no second rounding), `nf4` "
        "(bitsandbytes 4-bit, double quant), `int8` (weight-only: torch's int8 kernel on CPU; bitsandbytes on CUDA) "
        "or `none`")
    dtype: str = described(
        "auto", "Compute dtype: `auto` is bf16 on GPUs that have it (else fp16) and on CPUs with native bf16 "
        "(AVX512-BF16 or AMX), fp32 on other CPUs; or `float32`, `bfloat16`, `float16`. bf16 halves the bytes a "
        "decode step reads; its greedy answers differ from fp32's on some prompts and with the batch "
        "(see Benchmarks)")
    max_tokens: int = described(
        2048, "Generation cap: a request's larger `max_tokens` is clamped to it, never refused")
    max_batch_size: int = described(32, "Rows in each decode step")
    batch_wait_ms: int = described(10, "How long an idle engine waits for more arrivals to form a batch")
    max_queue: int = described(256, "Requests that may wait for the engine; beyond it 429 `queue_full`")
    kv_cache_tokens: int = described(
        0, "KV-cache tokens requests are admitted against (rows × padded length at the batch's worst-case peak); "
        "`0` derives it: 80 % of the GPU memory free after loading, or 65536 on CPU")
    prefill_chunk_tokens: int = described(
        2048, "Prompt tokens per prefill pass; longer prompts are read in chunks between decode steps")
    prefix_cache_tokens: int = described(
        8192, "Prompt heads (64-token blocks) whose KV is kept for a key's later prompts that start the same way "
        "(system prompt, earlier turns), least recently used out first; `0` turns it off. Reported as "
        "`usage.prompt_tokens_details.cached_tokens` (`input_tokens_details` on `/v1/responses`). A derived "
        "`KV_CACHE_TOKENS` leaves it room")
    data_dir: Path = described(Path("/app/data"), "Converted models, the SQLite conversation store, development keys")
    api_key_path: Path | None = described(
        None, "The envelope-encrypted API key file (reloaded on change or SIGHUP)")
    kek_path: Path | None = described(None, "The key-encryption key of `API_KEY_PATH` (`KEY_ENCRYPTION=kek-file`)")
    key_encryption: str = described(
        "kek-file", "What opens the key file's data key: `kek-file` (a key-encryption key at `KEK_PATH`), `kms` (AWS "
        "KMS unwraps the key file's KMS data key; the key-encryption key never leaves KMS) or `data-key-file` (the "
        "data key at `DATA_KEY_PATH`, unwrapped by an init step with a key-encryption key this container never sees)")
    data_key_path: Path | None = described(
        None, "The key file's data key, unwrapped by an init step (`KEY_ENCRYPTION=data-key-file`)")
    dev_api_key: str | None = described(
        None, "Development only: use this API key instead of a generated one")
    redis_url: str | None = described(
        None, "Redis for the rate limits, concurrency slots and response cache every replica shares; without it, "
        "in-process")
    allowed_cidrs: tuple[str, ...] = described(
        (), "Comma-separated client CIDRs allowed on every path of the API port but the probes; empty allows any")
    blocked_cidrs: tuple[str, ...] = described(
        (), "Client CIDRs refused on every path of the API port but the probes, and on the metrics port")
    trusted_proxies: tuple[str, ...] = described(
        (), "Proxies whose `X-Forwarded-For` is read; from anyone else it is ignored")
    metrics_allowed_cidrs: tuple[str, ...] = described(
        (), "Who may scrape `METRICS_PORT`; empty leaves it to the NetworkPolicy (Prometheus need not be in "
        "`ALLOWED_CIDRS`)")
    jwt_ttl_s: int = described(3600, "Lifetime of the tokens `/api/auth` issues (at most 3600 s)")
    jwt_audience: str = described("clawbot", "The tokens' audience (`aud`)")
    rate_limit_per_key: int = described(600, "Requests a minute per API key (429 `rate_limited`)")
    rate_limit_per_ip: int = described(1200, "Requests a minute per client address (IPv4 by /32, IPv6 by /64)")
    rate_limit_tokens_per_key: int = described(
        200_000, "Prompt + completion tokens a key may use a minute (429 `token_budget_exceeded`)")
    max_concurrent_per_key: int = described(
        32, "Requests one key may have queued or in flight across replicas (429 `key_concurrency_limit`); keep it "
        "below `MAX_QUEUE`, so one key cannot fill the shared queue")
    auth_failures_per_minute: int = described(
        30, "Failed authentications from one address (IPv6 by /64) before its auth attempts get 429 "
        "`too_many_auth_failures`")
    abnormal_key_per_minute: int = described(
        1000, "Requests a minute above which a key is flagged (`clawbot_abnormal_key_usage_total`)")
    max_body_bytes: int = described(1_048_576, "Largest request body, 1 MiB by default (413 beyond)")
    max_messages: int = described(256, "Most messages in one request (400 `too_many_messages` beyond)")
    generation_timeout_s: float = described(120.0, "Seconds one generation may take (504 beyond)")
    cache_ttl_s: int = described(
        3600, "Lifetime of a response-cache entry: deterministic (temperature 0) answers, per key, on the "
        "prompt's exact tokens")
    cache_max_entries: int = described(
        10_000, "Most entries the response cache holds (`0` turns it off, as does a TTL of `0`)")
    retention_days: int = described(
        30, "Conversation store retention (an hourly job deletes older exchanges)")
    conversation_journal: str = described(
        "wal", "SQLite store only: `delete` (rollback journal) where pods share `DATA_DIR` over a network "
        "filesystem")
    # It carries a password, so it is kept out of repr.
    conversation_database_url: str | None = field(default=None, repr=False, metadata={"description": (
        "`postgresql://USER:PASSWORD@HOST:5432/DB[?sslmode=require]`: the conversation store in PostgreSQL; from a "
        "Secret, never logged with its password")})
    conversation_database_pool_size: int = described(8, "Connections per replica to the conversation database")
    conversation_database_wait_s: float = described(
        15.0, "How long a request retries an unreachable conversation database before its 503 "
        "`conversation_store_unavailable`")
    warmup_prompts: tuple[str, ...] = described(
        ("Hello!",), "Prompts run once before `/readyz` turns 200, separated by `|`")
    torch_threads: int = described(0, "CPU threads for torch; `0`: all cores")
    shutdown_grace_s: float = described(
        25.0, "On SIGTERM, how long accepted requests get to finish; the Deployment's "
        "`terminationGracePeriodSeconds` is derived from it. What cannot finish gets a 503 `shutting_down` (or a "
        "stream error event) up to 2 s before the deadline, never a 500")
    tls_cert_file: Path | None = described(
        None, "PEM certificate for HTTPS on `PORT`, with `TLS_KEY_FILE` (both or neither); the metrics port stays "
        "plain HTTP inside the cluster")
    tls_key_file: Path | None = described(None, "PEM private key of `TLS_CERT_FILE`")
    tls_reload_s: float = described(
        60.0, "How often the certificate files are checked for a renewal (cert-manager rewrites the mounted "
        "Secret); a renewed certificate is served without a restart")
    tool_call_parser: str = described(
        "auto", "How the model writes tool calls: `hermes` (`<tool_call>{json}</tool_call>`: Hermes, Qwen 2.5+), "
        "`llama3_json` (Llama 3.1-3.3); `auto` reads the chat template (Hermes where the template has no tool "
        "format)")
    grammar_compile_timeout_s: float = described(
        5.0, "Wall-clock budget of one JSON Schema's grammar compile, in a process of its own; a schema over it is "
        "refused (400 `schema_too_complex`)")
    grammar_compile_workers: int = described(
        2, "Grammar compiles that may run at once (each in a process of its own, then a thread of the server); one "
        "key compiles one new schema at a time")
    grammar_cache_bytes: int = described(
        64 * 1_048_576, "Compiled grammars kept for schemas that come again, least recently used out first, by "
        "their size in memory")
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
    "GRAMMAR_COMPILE_TIMEOUT_SECONDS": "grammar_compile_timeout_s",
    "GRAMMAR_COMPILE_WORKERS": "grammar_compile_workers",
    "GRAMMAR_CACHE_BYTES": "grammar_cache_bytes",
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
        quantization=_choice(env, "QUANTIZATION", "auto", QUANTIZATIONS),
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
        grammar_compile_timeout_s=_float(env, "GRAMMAR_COMPILE_TIMEOUT_SECONDS", 5.0, 0.1, 600.0),
        grammar_compile_workers=_int(env, "GRAMMAR_COMPILE_WORKERS", 2, 1, 64),
        grammar_cache_bytes=_int(env, "GRAMMAR_CACHE_BYTES", 64 * 1_048_576, 0, 64 * 1024 * 1_048_576),
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
