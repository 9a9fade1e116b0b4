"""The one typed context a request carries between the layers that handle it: who called, the limits that applied,
the tokens it used, and the status it really ended with.

The API layer keeps one per request (app.api.context) and the request log reads it at the end; access
control fills in the caller and the limits, and charges the tokens to the key's budget; the serving layer
fills in the usage. Nothing else travels in the request's state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.access.ratelimit import Decision


@dataclass(frozen=True)
class Principal:
    key_id: str
    scopes: frozenset[str]
    via: str  # "jwt" | "api_key"


@dataclass(frozen=True)
class TokenUsage:
    prompt: int  # prompt tokens read (the whole prompt once the answer is complete)
    completion: int  # tokens generated
    cached: bool = False  # the whole answer came from the response cache
    cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache

    @property
    def total(self) -> int:
        return self.prompt + self.completion


@dataclass
class RequestContext:
    request_id: str
    client_ip: str | None = None  # decided once, by the network rules (X-Forwarded-For only from trusted proxies)
    principal: Principal | None = None
    key_limit: Decision | None = None  # the key's requests-a-minute bucket, once checked
    address_limit: Decision | None = None  # the address's bucket, once checked
    audited: bool = False  # a refusal was written to the audit trail where it was decided
    usage: TokenUsage | None = None  # what the request used: its answer's usage, or set by `end()`
    # Set by the serving layer while the request's generation may still run: stops it (nothing, once it has
    # finished) and says what it used, the prompt tokens it read and the tokens it generated.
    stop_generation: Callable[[], TokenUsage] | None = None
    final_status: int | None = None  # the status a stream really ended with, after its 200 went out

    def end(self) -> None:
        """The request is over (answered, failed, or its client hung up): a generation it leaves is stopped, and
        a request without an answer is charged what its generation used."""
        stop, self.stop_generation = self.stop_generation, None
        if stop is not None:
            used = stop()
            if self.usage is None:
                self.usage = used
