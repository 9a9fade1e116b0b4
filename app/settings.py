"""Service settings, declared once: each field of `Settings` holds its environment variable, default, bounds and
meaning, and is read once from the environment into one frozen, validated object.

What reads the declarations besides `load_settings`: `infra/` renders the Deployment's env from `ENV_VARS` and takes
the bounds of the stack keys that mirror a setting from `bounds_of` / `choices_of`; `docs/gen_reference.py` writes
docs/reference/service-settings.md from the fields. This module imports pydantic and nothing of the service, so the
Pulumi program can import it without torch or FastAPI.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import annotated_types
from pydantic import AliasChoices, BeforeValidator, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

SERVICE_PORT = 18789
# /metrics has a listener of its own, so the LoadBalancer (which exposes SERVICE_PORT only) never serves it.
METRICS_PORT = 9464
# auto: a GGUF keeps its own 4-bit blocks (gguf); a Hugging Face directory gets nf4 on CUDA and DTYPE on CPU.
Quantization = Literal["auto", "gguf", "nf4", "int8", "none"]
# The compute dtype; app.inference.loader.compute_dtype resolves auto.
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
# SQLite journal of the conversation store: WAL on a local disk; the rollback journal where several pods share
# DATA_DIR over a network filesystem (WAL's shared-memory index does not work across hosts).
JournalMode = Literal["wal", "delete"]
AppEnv = Literal["production", "development"]
# What opens the key file's data key: a KEK file (KEK_PATH), KMS (the KEK never leaves AWS KMS), or the data key
# itself (DATA_KEY_PATH), which an init step unwrapped with a KEK this container never sees.
KeyEncryption = Literal["kek-file", "kms", "data-key-file"]
# How the model writes tool calls (app/api/tools registers one parser per name); "auto" reads the chat template.
ToolCallParser = Literal["auto", "hermes", "llama3_json"]
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)
DTYPES: tuple[str, ...] = get_args(Dtype)
JOURNAL_MODES: tuple[str, ...] = get_args(JournalMode)
APP_ENVS: tuple[str, ...] = get_args(AppEnv)
KEY_ENCRYPTIONS: tuple[str, ...] = get_args(KeyEncryption)
TOOL_CALL_PARSERS: tuple[str, ...] = get_args(ToolCallParser)
EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
# The output cap when MAX_TOKENS is not set and the model has no default of its own (app.inference.loader).
DEFAULT_MAX_TOKENS = 2048
DATABASE_SCHEMES = ("postgresql", "postgres")
MIB = 1_048_576


class SettingsError(ValueError):
    """A setting is missing or out of range; the message names the variable and the value (never a secret's)."""


def _cidr_list(raw: Any) -> Any:
    """`a, b` (the environment's form) or a sequence: networks in canonical form, host bits allowed."""
    items = raw.split(",") if isinstance(raw, str) else raw
    out = []
    for part in (str(p).strip() for p in items):
        if not part:
            continue
        try:
            out.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise PydanticCustomError(
                "cidrs", "must be a comma-separated list of CIDRs, got {part}", {"part": repr(part)}
            ) from None
    return tuple(out)


def _prompt_list(raw: Any) -> Any:
    return tuple(p for p in raw.split("|") if p.strip()) if isinstance(raw, str) else raw


def _database_url(raw: Any) -> Any:
    """A postgresql:// URL; the error names the scheme it got, never the URL (it holds a password)."""
    text = raw.get_secret_value() if isinstance(raw, SecretStr) else raw
    if not isinstance(text, str):
        return raw
    scheme = text.split("://", 1)[0] if "://" in text else ""
    if scheme not in DATABASE_SCHEMES:
        got = f"scheme {scheme!r}" if scheme else "a value without a scheme"
        raise PydanticCustomError(
            "database_url",
            "must be a postgresql:// URL (postgresql://USER:PASSWORD@HOST:5432/DB), got {got}",
            {"got": got},
        )
    return raw


Cidrs = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_cidr_list)]
Prompts = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_prompt_list)]
DatabaseUrl = Annotated[SecretStr | None, BeforeValidator(_database_url)]


def env(name: str) -> Any:
    """The environment variable a field is read from (`Field(validation_alias=env("X"))`); its Python name works too."""
    return AliasChoices(name)


class Settings(BaseSettings):
    """Every setting of the service. Built from the environment by `load_settings`; tests build their own
    (`Settings(max_tokens=128)`), which reads nothing from the environment."""

    model_config = SettingsConfigDict(
        frozen=True,
        populate_by_name=True,
        hide_input_in_errors=True,
        env_ignore_empty=True,
        extra="forbid",
    )

    app_env: AppEnv = Field(
        "production",
        validation_alias=env("APP_ENV"),
        description=(
            "`development` accepts `DEV_API_KEY` or makes a local key-encryption key and API key under "
            "`DATA_DIR/dev-keys/` (the key is printed once); `production` requires `API_KEY_PATH` and what `KEY_ENCRYPTION` opens it with"
        ),
    )
    host: str = Field("0.0.0.0", validation_alias=env("HOST"), description="Address the API listens on")
    port: int = Field(
        SERVICE_PORT,
        ge=1,
        le=65535,
        validation_alias=env("PORT"),
        description="The API port (HTTPS when `TLS_CERT_FILE` and `TLS_KEY_FILE` are set)",
    )
    metrics_port: int = Field(
        METRICS_PORT,
        ge=1,
        le=65535,
        validation_alias=env("METRICS_PORT"),
        description="`/metrics` on a port of its own, never the API's (the LoadBalancer does not expose it)",
    )
    model_path: str = Field(
        EMBEDDED_MODEL,
        validation_alias=env("MODEL_PATH"),
        description=(
            "A Hugging Face directory, a GGUF file, a hub id (`org/name`), or the embedded SmolLM2-135M-Instruct"
        ),
    )
    model_name: str = Field(
        "clawbot", validation_alias=env("MODEL_NAME"), description="The model's name in `/v1/models` and in answers"
    )
    quantization: Quantization = Field(
        "auto",
        validation_alias=env("QUANTIZATION"),
        description=(
            "`auto`: a GGUF keeps its own 4-bit blocks (`gguf`), a Hugging Face directory gets `nf4` on CUDA and "
            "`DTYPE` on CPU; `gguf` (Q4_0/Q4_1/Q4_K blocks as torch int4 weights, no second rounding), `nf4` "
            "(bitsandbytes 4-bit, double quant), `int8` (weight-only: torch's int8 kernel on CPU; bitsandbytes on CUDA) "
            "or `none`"
        ),
    )
    dtype: Dtype = Field(
        "auto",
        validation_alias=env("DTYPE"),
        description=(
            "Compute dtype: `auto` is bf16 on GPUs that have it (else fp16) and on CPUs with native bf16 "
            "(AVX512-BF16 or AMX), fp32 on other CPUs; or `float32`, `bfloat16`, `float16`. bf16 halves the bytes a "
            "decode step reads; its greedy answers differ from fp32's on some prompts and with the batch "
            "(see Benchmarks)"
        ),
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        le=8192,
        validation_alias=env("MAX_TOKENS"),
        description=(
            "Generation cap: a request's larger `max_tokens` is clamped to it, never refused. Unset: the model's "
            "own cap (256 for the embedded SmolLM2-135M, whose useful answers are short), else 2048; `/v1/models` "
            "reports the cap that applies"
        ),
    )
    max_batch_size: int = Field(
        32, ge=1, le=256, validation_alias=env("MAX_BATCH_SIZE"), description="Rows in each decode step"
    )
    batch_wait_ms: int = Field(
        10,
        ge=0,
        le=10_000,
        validation_alias=env("BATCH_WAIT_MS"),
        description="How long an idle engine waits for more arrivals to form a batch",
    )
    max_queue: int = Field(
        256,
        ge=1,
        le=100_000,
        validation_alias=env("MAX_QUEUE"),
        description="Requests that may wait for the engine; beyond it 429 `queue_full`",
    )
    kv_cache_tokens: int = Field(
        0,
        ge=0,
        le=100_000_000,
        validation_alias=env("KV_CACHE_TOKENS"),
        description=(
            "KV-cache tokens requests are admitted against (rows × padded length at the batch's worst-case peak); "
            "`0` derives it: 80 % of the GPU memory free after loading, or 65536 on CPU"
        ),
    )
    prefill_chunk_tokens: int = Field(
        2048,
        ge=16,
        le=1_048_576,
        validation_alias=env("PREFILL_CHUNK_TOKENS"),
        description="Prompt tokens per prefill pass; longer prompts are read in chunks between decode steps",
    )
    prefix_cache_tokens: int = Field(
        8192,
        ge=0,
        le=100_000_000,
        validation_alias=env("PREFIX_CACHE_TOKENS"),
        description=(
            "Prompt heads (64-token blocks) whose KV is kept for a key's later prompts that start the same way "
            "(system prompt, earlier turns), least recently used out first; `0` turns it off, and with it the "
            "one-time read of a head that a key's requests admitted together share. Reported as "
            "`usage.prompt_tokens_details.cached_tokens` (`input_tokens_details` on `/v1/responses`). A derived "
            "`KV_CACHE_TOKENS` leaves it room"
        ),
    )
    data_dir: Path = Field(
        Path("/app/data"),
        validation_alias=env("DATA_DIR"),
        description="Converted models, the SQLite conversation store, development keys",
    )
    api_key_path: Path | None = Field(
        None,
        validation_alias=env("API_KEY_PATH"),
        description="The envelope-encrypted API key file (reloaded on change or SIGHUP)",
    )
    kek_path: Path | None = Field(
        None,
        validation_alias=env("KEK_PATH"),
        description="The key-encryption key of `API_KEY_PATH` (`KEY_ENCRYPTION=kek-file`)",
    )
    key_encryption: KeyEncryption = Field(
        "kek-file",
        validation_alias=env("KEY_ENCRYPTION"),
        description=(
            "What opens the key file's data key: `kek-file` (a key-encryption key at `KEK_PATH`), `kms` (AWS "
            "KMS unwraps the key file's KMS data key; the key-encryption key never leaves KMS) or `data-key-file` (the "
            "data key at `DATA_KEY_PATH`, unwrapped by an init step with a key-encryption key this container never sees)"
        ),
    )
    data_key_path: Path | None = Field(
        None,
        validation_alias=env("DATA_KEY_PATH"),
        description="The key file's data key, unwrapped by an init step (`KEY_ENCRYPTION=data-key-file`)",
    )
    dev_api_key: SecretStr | None = Field(
        None,
        validation_alias=env("DEV_API_KEY"),
        description="Development only: use this API key instead of a generated one",
    )
    # A URL may carry a password (redis://:PASSWORD@HOST:6379).
    redis_url: SecretStr | None = Field(
        None,
        validation_alias=env("REDIS_URL"),
        description=(
            "Redis for the rate limits, concurrency slots and response cache every replica shares; without it, "
            "in-process"
        ),
    )
    allowed_cidrs: Cidrs = Field(
        (),
        validation_alias=env("ALLOWED_CIDRS"),
        description=(
            "Comma-separated client CIDRs allowed on every path of the API port but the probes; empty allows any"
        ),
    )
    blocked_cidrs: Cidrs = Field(
        (),
        validation_alias=env("BLOCKED_CIDRS"),
        description="Client CIDRs refused on every path of the API port but the probes, and on the metrics port",
    )
    trusted_proxies: Cidrs = Field(
        (),
        validation_alias=env("TRUSTED_PROXIES"),
        description="Proxies whose `X-Forwarded-For` is read; from anyone else it is ignored",
    )
    metrics_allowed_cidrs: Cidrs = Field(
        (),
        validation_alias=env("METRICS_ALLOWED_CIDRS"),
        description=(
            "Who may scrape `METRICS_PORT`; empty leaves it to the NetworkPolicy (Prometheus need not be in "
            "`ALLOWED_CIDRS`)"
        ),
    )
    jwt_ttl_s: int = Field(
        3600,
        ge=30,
        le=3600,
        validation_alias=env("JWT_TTL_SECONDS"),
        description="Lifetime of the tokens `/api/auth` issues (at most 3600 s)",
    )
    jwt_audience: str = Field(
        "clawbot", validation_alias=env("JWT_AUDIENCE"), description="The tokens' audience (`aud`)"
    )
    rate_limit_per_key: int = Field(
        600,
        ge=1,
        le=1_000_000,
        validation_alias=env("RATE_LIMIT_PER_KEY"),
        description="Requests a minute per API key (429 `rate_limited`)",
    )
    rate_limit_per_ip: int = Field(
        1200,
        ge=1,
        le=1_000_000,
        validation_alias=env("RATE_LIMIT_PER_IP"),
        description="Requests a minute per client address (IPv4 by /32, IPv6 by /64)",
    )
    rate_limit_tokens_per_key: int = Field(
        200_000,
        ge=1,
        le=1_000_000_000,
        validation_alias=env("RATE_LIMIT_TOKENS_PER_KEY"),
        description="Prompt + completion tokens a key may use a minute (429 `token_budget_exceeded`)",
    )
    max_concurrent_per_key: int = Field(
        32,
        ge=1,
        le=100_000,
        validation_alias=env("MAX_CONCURRENT_PER_KEY"),
        description=(
            "Requests one key may have queued or in flight across replicas (429 `key_concurrency_limit`); keep it "
            "below `MAX_QUEUE`, so one key cannot fill the shared queue"
        ),
    )
    auth_failures_per_minute: int = Field(
        30,
        ge=1,
        le=1_000_000,
        validation_alias=env("AUTH_FAILURES_PER_MINUTE"),
        description=(
            "Failed authentications from one address (IPv6 by /64) before its auth attempts get 429 "
            "`too_many_auth_failures`"
        ),
    )
    abnormal_key_per_minute: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        validation_alias=env("ABNORMAL_KEY_PER_MINUTE"),
        description="Requests a minute above which a key is flagged (`clawbot_abnormal_key_usage_total`)",
    )
    max_body_bytes: int = Field(
        MIB,
        ge=1024,
        le=64 * MIB,
        validation_alias=env("MAX_BODY_BYTES"),
        description="Largest request body, 1 MiB by default (413 beyond)",
    )
    max_messages: int = Field(
        256,
        ge=1,
        le=10_000,
        validation_alias=env("MAX_MESSAGES"),
        description="Most messages in one request (400 `too_many_messages` beyond)",
    )
    generation_timeout_s: float = Field(
        120.0,
        ge=1.0,
        le=3600.0,
        validation_alias=env("GENERATION_TIMEOUT_SECONDS"),
        description=(
            "Seconds one generation may take: an answer it cuts short is returned with `finish_reason` `length` "
            "and `X-Generation-Deadline`; one it reaches before the first token is a 504"
        ),
    )
    cache_ttl_s: int = Field(
        3600,
        ge=0,
        le=30 * 86400,
        validation_alias=env("CACHE_TTL_SECONDS"),
        description=(
            "Lifetime of a response-cache entry: deterministic (temperature 0) answers, per key, on the "
            "prompt's exact tokens"
        ),
    )
    cache_max_entries: int = Field(
        10_000,
        ge=0,
        le=10_000_000,
        validation_alias=env("CACHE_MAX_ENTRIES"),
        description="Most entries the response cache holds (`0` turns it off, as does a TTL of `0`)",
    )
    retention_days: int = Field(
        30,
        ge=1,
        le=3650,
        validation_alias=env("RETENTION_DAYS"),
        description="Conversation store retention (an hourly job deletes older exchanges)",
    )
    conversation_journal: JournalMode = Field(
        "wal",
        validation_alias=env("CONVERSATION_JOURNAL"),
        description=(
            "SQLite store only: `delete` (rollback journal) where pods share `DATA_DIR` over a network filesystem"
        ),
    )
    conversation_database_url: DatabaseUrl = Field(
        None,
        validation_alias=env("CONVERSATION_DATABASE_URL"),
        description=(
            "`postgresql://USER:PASSWORD@HOST:5432/DB[?sslmode=require]`: the conversation store in PostgreSQL; from "
            "a Secret, never logged with its password"
        ),
    )
    conversation_database_pool_size: int = Field(
        8,
        ge=1,
        le=100,
        validation_alias=env("CONVERSATION_DATABASE_POOL_SIZE"),
        description="Connections per replica to the conversation database",
    )
    conversation_database_wait_s: float = Field(
        15.0,
        ge=1.0,
        le=300.0,
        validation_alias=env("CONVERSATION_DATABASE_WAIT_SECONDS"),
        description=(
            "How long a request retries an unreachable conversation database before its 503 "
            "`conversation_store_unavailable`"
        ),
    )
    warmup_prompts: Prompts = Field(
        ("Hello!",),
        validation_alias=env("WARMUP_PROMPTS"),
        description="Prompts run once before `/readyz` turns 200, separated by `|`",
    )
    torch_threads: int = Field(
        0, ge=0, le=1024, validation_alias=env("TORCH_THREADS"), description="CPU threads for torch; `0`: all cores"
    )
    shutdown_grace_s: float = Field(
        25.0,
        ge=1.0,
        le=3600.0,
        validation_alias=env("SHUTDOWN_GRACE_SECONDS"),
        description=(
            "On SIGTERM, how long accepted requests get to finish; the Deployment's "
            "`terminationGracePeriodSeconds` is derived from it. What cannot finish gets a 503 `shutting_down` (or a "
            "stream error event) up to 2 s before the deadline, never a 500"
        ),
    )
    tls_cert_file: Path | None = Field(
        None,
        validation_alias=env("TLS_CERT_FILE"),
        description=(
            "PEM certificate for HTTPS on `PORT`, with `TLS_KEY_FILE` (both or neither); the metrics port stays "
            "plain HTTP inside the cluster"
        ),
    )
    tls_key_file: Path | None = Field(
        None, validation_alias=env("TLS_KEY_FILE"), description="PEM private key of `TLS_CERT_FILE`"
    )
    tls_reload_s: float = Field(
        60.0,
        ge=1.0,
        le=86400.0,
        validation_alias=env("TLS_RELOAD_SECONDS"),
        description=(
            "How often the certificate files are checked for a renewal (cert-manager rewrites the mounted "
            "Secret); a renewed certificate is served without a restart"
        ),
    )
    tool_call_parser: ToolCallParser = Field(
        "auto",
        validation_alias=env("TOOL_CALL_PARSER"),
        description=(
            "How the model writes tool calls: `hermes` (`<tool_call>{json}</tool_call>`: Hermes, Qwen 2.5+), "
            "`llama3_json` (Llama 3.1-3.3); `auto` reads the chat template (Hermes where the template has no tool "
            "format)"
        ),
    )
    grammar_compile_timeout_s: float = Field(
        5.0,
        ge=0.1,
        le=600.0,
        validation_alias=env("GRAMMAR_COMPILE_TIMEOUT_SECONDS"),
        description=(
            "Wall-clock budget of one JSON Schema's grammar compile, in a process of its own; a schema over it is "
            "refused (400 `schema_too_complex`)"
        ),
    )
    grammar_compile_workers: int = Field(
        2,
        ge=1,
        le=64,
        validation_alias=env("GRAMMAR_COMPILE_WORKERS"),
        description=(
            "Grammar compiles that may run at once (each in a process of its own, then a thread of the server); one "
            "key compiles one new schema at a time"
        ),
    )
    grammar_cache_bytes: int = Field(
        64 * MIB,
        ge=0,
        le=64 * 1024 * MIB,
        validation_alias=env("GRAMMAR_CACHE_BYTES"),
        description=(
            "Compiled grammars kept for schemas that come again, least recently used out first, by their size in memory"
        ),
    )

    @field_validator("*", mode="before")
    @classmethod
    def _whole_numbers_as_python_reads_them(cls, value: Any, info: Any) -> Any:
        """An integer setting given as text is read by `int()`, so `1.0` is refused as it always was."""
        if isinstance(value, str) and _number_type(info.field_name) is int:
            try:
                return int(value)
            except ValueError:
                raise PydanticCustomError("int_parsing", "not an integer") from None
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only what the caller passes: `load_settings` reads the environment it is given (os.environ by default)."""
        return (init_settings,)

    @property
    def development(self) -> bool:
        return self.app_env == "development"

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with `changes` (by field name), validated like the original."""
        return type(self)(**{**dict(self), **changes})


def env_name(name: str) -> str:
    """The environment variable of field `name`."""
    alias = Settings.model_fields[name].validation_alias
    assert isinstance(alias, AliasChoices), f"Settings.{name} declares no environment variable"
    return str(alias.choices[0])


# Every variable the service reads, in declaration order: name -> field.
ENV_VARS: dict[str, str] = {env_name(name): name for name in Settings.model_fields}
SECRET_FIELDS = frozenset(
    name for name, spec in Settings.model_fields.items() if SecretStr in (spec.annotation, *get_args(spec.annotation))
)


def _number_type(name: str) -> type:
    """int or float for a numeric field (optional or not); str for any other."""
    annotation = Settings.model_fields[name].annotation
    kinds = (annotation, *get_args(annotation))
    return int if int in kinds else float if float in kinds else str


def _field(name_or_variable: str) -> tuple[str, FieldInfo]:
    name = ENV_VARS.get(name_or_variable, name_or_variable)
    return name, Settings.model_fields[name]


def bounds_of(name_or_variable: str) -> tuple[Any, Any]:
    """The (lowest, highest) a numeric setting accepts, by field or variable name; infra's mirroring keys use them."""
    name, spec = _field(name_or_variable)
    lo = next((m.ge for m in spec.metadata if isinstance(m, annotated_types.Ge)), None)
    hi = next((m.le for m in spec.metadata if isinstance(m, annotated_types.Le)), None)
    if lo is None or hi is None:
        raise KeyError(f"Settings.{name} declares no bounds")
    return lo, hi


def choices_of(name_or_variable: str) -> tuple[str, ...]:
    """The values a choice setting accepts, by field or variable name."""
    name, spec = _field(name_or_variable)
    choices = get_args(spec.annotation)
    if not choices or not all(isinstance(c, str) for c in choices):
        raise KeyError(f"Settings.{name} is not a choice")
    return choices


def default_of(name_or_variable: str) -> Any:
    return _field(name_or_variable)[1].default


class _EnvironmentSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of os.environ."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(Settings, case_sensitive=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k: v for k, v in self._environ.items() if k in ENV_VARS and v != ""}


def _message(error: Any) -> str:
    """One ValidationError entry as `VARIABLE must ..., got VALUE`; a secret's value is never in it."""
    given = str(error["loc"][0]) if error["loc"] else "settings"
    field = ENV_VARS.get(given, given)
    if field not in Settings.model_fields:
        return f"{given} is not a setting"
    variable, kind, raw = env_name(field), error["type"], error.get("input")
    got = "" if field in SECRET_FIELDS else f", got {raw!r}"
    if kind == "literal_error":
        return f"{variable} must be one of {', '.join(choices_of(field))}{got}"
    if kind in ("int_parsing", "float_parsing"):
        lo, hi = bounds_of(field)
        return f"{variable} must be {'an integer' if kind == 'int_parsing' else 'a number'} between {lo} and {hi}{got}"
    if kind in ("greater_than_equal", "less_than_equal"):
        lo, hi = bounds_of(field)
        number = _number_type(field)(raw) if isinstance(raw, str) else raw
        return f"{variable} must be between {lo} and {hi}" + ("" if field in SECRET_FIELDS else f", got {number}")
    return f"{variable} {error['msg']}"  # the field's own validator wrote it, without the value of a secret


def _check_tls(s: Settings) -> None:
    if (s.tls_cert_file is None) != (s.tls_key_file is None):
        have, lack = ("TLS_CERT_FILE", "TLS_KEY_FILE") if s.tls_cert_file else ("TLS_KEY_FILE", "TLS_CERT_FILE")
        raise SettingsError(
            f"{have} is set but {lack} is not; HTTPS needs both the certificate and its key (or neither)"
        )
    for name, path in (("TLS_CERT_FILE", s.tls_cert_file), ("TLS_KEY_FILE", s.tls_key_file)):
        if path is not None and not path.is_file():
            raise SettingsError(f"{name} must name a readable PEM file, got {str(path)!r} (no such file)")


def check_settings(s: Settings) -> None:
    """The rules that tie settings together (a value alone is checked by its field)."""
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


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from `environ` (default: os.environ). Raises SettingsError naming the variable."""
    values = _EnvironmentSource(os.environ if environ is None else environ)()
    try:
        s = Settings(**values)
    except ValidationError as exc:
        raise SettingsError("; ".join(_message(e) for e in exc.errors())) from None
    check_settings(s)
    return s
