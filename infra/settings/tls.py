"""TLS settings: a certificate at the NLB (ACM), one in the pod (an existing Secret or a cert-manager issuer), or both."""

from __future__ import annotations

import re
from dataclasses import dataclass

from infra.settings.values import DNS_SUBDOMAIN, ConfigError, Raw, boolean, config_key, text

_ACM_ARN = re.compile(r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[0-9a-f-]{36}$")
_ISSUER = re.compile(r"^(ClusterIssuer|Issuer)/([a-z0-9]([-a-z0-9.]*[a-z0-9])?)$")
# podTlsIssuer's value that has the program create a private CA in the namespace instead of naming an issuer.
CREATED_PRIVATE_CA = "private-ca"


@dataclass(frozen=True)
class TlsSettings:
    certificate_arn: str  # TLS listener at the NLB
    endpoint_hostname: str
    pod_secret: str  # an existing kubernetes.io/tls Secret
    pod_issuer_kind: str  # an existing cert-manager issuer for the Certificate: ClusterIssuer or Issuer
    pod_issuer_name: str
    allow_plaintext: bool
    pod_issuer_created: bool = False  # the program creates a private CA and issues from it
    pod_issuer_private: bool = False  # the issuer is a private CA, so the Service's .svc names go on the certificate

    @property
    def pod_certificate(self) -> bool:
        """cert-manager issues the pod's certificate (from a named issuer or the program's own CA)."""
        return bool(self.pod_issuer_name) or self.pod_issuer_created

    @property
    def at_load_balancer(self) -> bool:
        return bool(self.certificate_arn)

    @property
    def in_pod(self) -> bool:
        return bool(self.pod_secret) or self.pod_certificate

    @property
    def enabled(self) -> bool:
        return self.at_load_balancer or self.in_pod


def parse_tls(raw: Raw) -> TlsSettings:
    arn = text(raw, "tlsCertificateArn").strip()
    hostname = text(raw, "endpointHostname").strip().lower()
    secret = text(raw, "podTlsSecret").strip()
    issuer = text(raw, "podTlsIssuer").strip()
    if arn and not _ACM_ARN.match(arn):
        raise ConfigError(
            f"{config_key('tlsCertificateArn')} must be an ACM certificate ARN like "
            f"arn:aws:acm:us-east-1:123456789012:certificate/<uuid>, got {arn!r}"
        )
    if arn and not hostname:
        raise ConfigError(
            f"{config_key('endpointHostname')} must name the DNS name on the certificate of "
            f"{config_key('tlsCertificateArn')}: clients verify it, and the NLB's own *.elb.amazonaws.com "
            "name is not on an ACM certificate"
        )
    if hostname and not DNS_SUBDOMAIN.match(hostname):
        raise ConfigError(
            f"{config_key('endpointHostname')} must be a DNS name like chat.example.com, got {hostname!r}"
        )
    if secret and issuer:
        raise ConfigError(
            f"{config_key('podTlsSecret')} and {config_key('podTlsIssuer')} are two sources of the pod "
            "certificate; set one"
        )
    if secret and not DNS_SUBDOMAIN.match(secret):
        raise ConfigError(f"{config_key('podTlsSecret')} must be a Secret name, got {secret!r}")
    created = issuer == CREATED_PRIVATE_CA
    issuer_match = _ISSUER.match(issuer) if issuer and not created else None
    if issuer and not created and not issuer_match:
        raise ConfigError(
            f"{config_key('podTlsIssuer')} must be ClusterIssuer/NAME or Issuer/NAME (an issuer that exists), "
            f"or {CREATED_PRIVATE_CA} (the program creates a private CA), got {issuer!r}"
        )
    declared_private = boolean(raw, "podTlsIssuerPrivate")
    if declared_private and not issuer_match:
        raise ConfigError(
            f"{config_key('podTlsIssuerPrivate')} says what the issuer named by {config_key('podTlsIssuer')} is; "
            f"it takes ClusterIssuer/NAME or Issuer/NAME, got {issuer!r}"
        )
    private = created or declared_private
    if (issuer_match or created) and not private and not hostname:
        raise ConfigError(
            f"{config_key('podTlsIssuer')} {issuer} is taken for a public CA (ACME), which issues only for names it can "
            f"verify, never the Service's .svc names, so the certificate would name nothing: set {config_key('endpointHostname')}, "
            f"or {config_key('podTlsIssuerPrivate')}: true if that issuer is a private CA"
        )
    return TlsSettings(
        certificate_arn=arn,
        endpoint_hostname=hostname,
        pod_secret=secret,
        pod_issuer_kind=issuer_match.group(1) if issuer_match else "",
        pod_issuer_name=issuer_match.group(2) if issuer_match else "",
        allow_plaintext=boolean(raw, "allowPlaintext"),
        pod_issuer_created=created,
        pod_issuer_private=private,
    )
