"""TLS settings: a certificate at the NLB (ACM), one in the pod (an existing Secret or a cert-manager issuer), or both."""
from __future__ import annotations

import re
from dataclasses import dataclass

from infra.settings.values import DNS_SUBDOMAIN, ConfigError, Raw, boolean, config_key, text

_ACM_ARN = re.compile(r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[0-9a-f-]{36}$")
_ISSUER = re.compile(r"^(ClusterIssuer|Issuer)/([a-z0-9]([-a-z0-9.]*[a-z0-9])?)$")


@dataclass(frozen=True)
class TlsSettings:
    certificate_arn: str  # TLS listener at the NLB
    endpoint_hostname: str
    pod_secret: str  # an existing kubernetes.io/tls Secret
    pod_issuer_kind: str  # cert-manager issuer for a Certificate
    pod_issuer_name: str
    allow_plaintext: bool

    @property
    def at_load_balancer(self) -> bool:
        return bool(self.certificate_arn)

    @property
    def in_pod(self) -> bool:
        return bool(self.pod_secret or self.pod_issuer_name)

    @property
    def enabled(self) -> bool:
        return self.at_load_balancer or self.in_pod


def parse_tls(raw: Raw) -> TlsSettings:
    arn = text(raw, "tlsCertificateArn").strip()
    hostname = text(raw, "endpointHostname").strip().lower()
    secret = text(raw, "podTlsSecret").strip()
    issuer = text(raw, "podTlsIssuer").strip()
    if arn and not _ACM_ARN.match(arn):
        raise ConfigError(f"{config_key('tlsCertificateArn')} must be an ACM certificate ARN like "
                          f"arn:aws:acm:us-east-1:123456789012:certificate/<uuid>, got {arn!r}")
    if arn and not hostname:
        raise ConfigError(f"{config_key('endpointHostname')} must name the DNS name on the certificate of "
                          f"{config_key('tlsCertificateArn')}: clients verify it, and the NLB's own *.elb.amazonaws.com "
                          "name is not on an ACM certificate")
    if hostname and not DNS_SUBDOMAIN.match(hostname):
        raise ConfigError(f"{config_key('endpointHostname')} must be a DNS name like chat.example.com, got {hostname!r}")
    if secret and issuer:
        raise ConfigError(f"{config_key('podTlsSecret')} and {config_key('podTlsIssuer')} are two sources of the pod "
                          "certificate; set one")
    if secret and not DNS_SUBDOMAIN.match(secret):
        raise ConfigError(f"{config_key('podTlsSecret')} must be a Secret name, got {secret!r}")
    issuer_match = _ISSUER.match(issuer) if issuer else None
    if issuer and not issuer_match:
        raise ConfigError(f"{config_key('podTlsIssuer')} must be ClusterIssuer/NAME or Issuer/NAME, got {issuer!r}")
    return TlsSettings(
        certificate_arn=arn,
        endpoint_hostname=hostname,
        pod_secret=secret,
        pod_issuer_kind=issuer_match.group(1) if issuer_match else "",
        pod_issuer_name=issuer_match.group(2) if issuer_match else "",
        allow_plaintext=boolean(raw, "allowPlaintext"),
    )
