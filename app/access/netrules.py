"""Which address a request comes from, and whether that address may use the service (ALLOWED/BLOCKED_CIDRS).

`X-Forwarded-For` is believed only when the peer is one of TRUSTED_PROXIES, and then only up
to the first hop that is not a trusted proxy: anything left of it was written by the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from app.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(value: str) -> IPAddress | None:
    """An address, with IPv4-mapped IPv6 (`::ffff:10.0.0.1`) folded to IPv4; None when not an address."""
    text = value.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "10.0.0.1:5000"
        text = text.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def address_group(address: str) -> str:
    """What per-address limits count against: an IPv4 address (/32), or the /64 an IPv6 address is in.

    A /64 is what one subscriber or host is handed, and a client can pick any address inside it,
    so counting IPv6 per address would give one client 2**64 separate budgets.
    """
    addr = parse_ip(address)
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))
    return str(addr) if addr is not None else address


def _networks(cidrs: Iterable[str], name: str) -> tuple[IPNetwork, ...]:
    out = []
    for c in cidrs:
        try:
            out.append(ipaddress.ip_network(c, strict=False))
        except ValueError:
            raise ValueError(f"{name} must hold CIDRs like 10.0.0.0/8, got {c!r}") from None
    return tuple(out)


def _within(addr: IPAddress, nets: tuple[IPNetwork, ...]) -> bool:
    return any(addr.version == n.version and addr in n for n in nets)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str  # "ok", "blocked", "not_allowed", "unknown_address"


class NetRules:
    def __init__(
        self, *, allowed_cidrs: Iterable[str], blocked_cidrs: Iterable[str], trusted_proxies: Iterable[str]
    ) -> None:
        self.allowed = _networks(allowed_cidrs, "ALLOWED_CIDRS")
        self.blocked = _networks(blocked_cidrs, "BLOCKED_CIDRS")
        self.trusted = _networks(trusted_proxies, "TRUSTED_PROXIES")

    @classmethod
    def for_api(cls, settings: Settings) -> NetRules:
        """The API port's rules: ALLOWED_CIDRS and BLOCKED_CIDRS, X-Forwarded-For from TRUSTED_PROXIES."""
        return cls(
            allowed_cidrs=settings.allowed_cidrs,
            blocked_cidrs=settings.blocked_cidrs,
            trusted_proxies=settings.trusted_proxies,
        )

    @classmethod
    def for_metrics(cls, settings: Settings) -> NetRules:
        """The metrics port's rules: METRICS_ALLOWED_CIDRS (Prometheus, not the API's clients) and BLOCKED_CIDRS.
        Scrapers connect directly, so no proxy is trusted there."""
        return cls(
            allowed_cidrs=settings.metrics_allowed_cidrs, blocked_cidrs=settings.blocked_cidrs, trusted_proxies=()
        )

    def client_address(self, peer: str | None, forwarded_for: list[str]) -> str:
        """The client's address. `forwarded_for`: every X-Forwarded-For header value, in order."""
        peer_text = peer or ""
        peer_addr = parse_ip(peer_text)
        if peer_addr is None or not _within(peer_addr, self.trusted) or not forwarded_for:
            return str(peer_addr) if peer_addr is not None else peer_text
        hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
        client = peer_addr
        # Walk right to left: each trusted proxy vouches for the hop to its left.
        for hop in reversed(hops):
            addr = parse_ip(hop)
            if addr is None:
                break  # garbage in the chain: trust stops at the last proxy that appended a real address
            client = addr
            if not _within(addr, self.trusted):
                break
        return str(client)

    def check(self, address: str) -> Verdict:
        if not self.allowed and not self.blocked:
            return Verdict(True, "ok")
        addr = parse_ip(address)
        if addr is None:
            # With rules configured, an address that cannot be classified is refused rather than guessed at.
            return Verdict(False, "unknown_address")
        if _within(addr, self.blocked):
            return Verdict(False, "blocked")
        if self.allowed and not _within(addr, self.allowed):
            return Verdict(False, "not_allowed")
        return Verdict(True, "ok")
