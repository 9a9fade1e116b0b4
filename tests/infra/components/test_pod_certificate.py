"""TLS in the pod from cert-manager: the issuer is checked (created by the program, or read and required Ready), the
Service's .svc names go only on a private CA's certificate, and the Deployment waits for the Certificate to be Ready."""

from __future__ import annotations

from typing import Any

import pytest

from infra.tools.synth import SynthError, Synthesis, synthesize

ACME_SPEC = {
    "acme": {"server": "https://acme-v02.api.letsencrypt.org/directory", "privateKeySecretRef": {"name": "le"}}
}
CA_SPEC = {"ca": {"secretName": "corp-root"}}


def issuer(
    spec: dict[str, Any], ready: str = "True", reason: str = "KeyPairVerified", message: str = ""
) -> dict[str, Any]:
    return {
        "spec": spec,
        "status": {"conditions": [{"type": "Ready", "status": ready, "reason": reason, "message": message}]},
    }


def certificates(s: Synthesis) -> dict[str, dict[str, Any]]:
    return {o.name: o.manifest for o in s.find("Certificate")}


def test_a_public_acme_issuer_gets_the_endpoint_hostname_alone_and_is_read_not_created() -> None:
    s = synthesize(
        "prod",
        overrides={"podTlsIssuer": "ClusterIssuer/letsencrypt"},
        existing={"ClusterIssuer/letsencrypt": issuer(ACME_SPEC)},
    )
    cert = certificates(s)["clawbot-tls"]["spec"]
    assert cert["dnsNames"] == ["chat.example.com"]  # an ACME CA would refuse clawbot.clawbot.svc
    assert cert["issuerRef"] == {"group": "cert-manager.io", "kind": "ClusterIssuer", "name": "letsencrypt"}
    assert s.find("ClusterIssuer") == [] and s.find("Issuer") == []  # the cluster's, never the program's
    (read,) = [r for r in s.resources if r.read and "cert-manager" in r.type]
    assert (read.type, read.read) == ("kubernetes:cert-manager.io/v1:ClusterIssuer", "letsencrypt")


def test_a_namespaced_issuer_is_read_in_the_apps_namespace() -> None:
    s = synthesize(
        "prod",
        overrides={"podTlsIssuer": "Issuer/corp-ca", "podTlsIssuerPrivate": True},
        existing={"Issuer/clawbot/corp-ca": issuer(CA_SPEC)},
    )
    assert certificates(s)["clawbot-tls"]["spec"]["dnsNames"] == [
        "chat.example.com",
        "clawbot.clawbot.svc",
        "clawbot.clawbot.svc.cluster.local",
    ]


@pytest.mark.parametrize(
    "existing, message",
    [
        ({}, 'clusterissuers.cert-manager.io "letsencrypt" not found'),
        (
            {"ClusterIssuer/letsencrypt": issuer(ACME_SPEC, "False", "ErrRegisterACMEAccount", "no such host")},
            "ClusterIssuer/letsencrypt, named by clawbot:podTlsIssuer, is not Ready: ErrRegisterACMEAccount: no such host",
        ),
        ({"ClusterIssuer/letsencrypt": {"spec": ACME_SPEC}}, "is not Ready (it has no Ready condition yet)"),
    ],
)
def test_preview_stops_on_an_issuer_that_is_missing_or_not_ready(existing: dict[str, Any], message: str) -> None:
    with pytest.raises(SynthError) as err:
        synthesize("prod", overrides={"podTlsIssuer": "ClusterIssuer/letsencrypt"}, existing=existing)
    assert message in str(err.value)


def test_svc_names_from_an_issuer_that_is_a_public_ca_are_refused_with_what_to_set() -> None:
    with pytest.raises(
        SynthError,
        match=r"ClusterIssuer/letsencrypt is an ACME issuer, a public CA, but "
        r"clawbot:podTlsIssuerPrivate is true",
    ):
        synthesize(
            "prod",
            overrides={"podTlsIssuer": "ClusterIssuer/letsencrypt", "podTlsIssuerPrivate": True},
            existing={"ClusterIssuer/letsencrypt": issuer(ACME_SPEC)},
        )


def test_private_ca_is_created_by_the_program_root_then_issuer_then_the_pod_certificate() -> None:
    s = synthesize("dev", overrides={"podTlsIssuer": "private-ca"})
    certs, issuers = certificates(s), {o.name: o for o in s.find("Issuer")}
    assert set(issuers) == {"clawbot-selfsigned", "clawbot-ca"} and set(certs) == {"clawbot-ca", "clawbot-tls"}
    assert issuers["clawbot-selfsigned"].manifest["spec"] == {"selfSigned": {}}
    root = certs["clawbot-ca"]["spec"]
    assert (
        root["isCA"] is True
        and root["issuerRef"]["name"] == "clawbot-selfsigned"
        and root["secretName"] == "clawbot-ca"
    )
    assert issuers["clawbot-ca"].manifest["spec"] == {"ca": {"secretName": "clawbot-ca"}}
    pod_cert = certs["clawbot-tls"]["spec"]
    assert pod_cert["issuerRef"] == {"group": "cert-manager.io", "kind": "Issuer", "name": "clawbot-ca"}
    # No endpointHostname in dev: the private CA's certificate names the Service alone.
    assert pod_cert["dnsNames"] == ["clawbot.clawbot-dev.svc", "clawbot.clawbot-dev.svc.cluster.local"]
    by_name = {o.resource_name: o for o in s.objects}
    assert "chat-certificate-selfsigned" in by_name["chat-certificate-ca"].depends_on
    assert "chat-certificate-ca" in by_name["chat-certificate-ca-issuer"].depends_on
    assert "chat-certificate-ca-issuer" in by_name["chat-certificate"].depends_on
    assert not [r for r in s.resources if r.read and "cert-manager" in r.type]  # nothing to read: the program made it


@pytest.mark.parametrize("overrides", [{"podTlsIssuer": "private-ca"}, {"podTlsIssuer": "ClusterIssuer/letsencrypt"}])
def test_pulumi_waits_for_every_certificate_and_issuer_to_be_ready_and_the_deployment_for_the_certificate(
    overrides: dict[str, str],
) -> None:
    s = synthesize("prod", overrides=overrides)
    for obj in s.find("Certificate") + s.find("Issuer"):
        assert obj.manifest["metadata"]["annotations"]["pulumi.com/waitFor"] == "condition=Ready", obj.name
        assert obj.options.custom_timeouts == {"create": "15m", "update": "15m"}
    assert "chat-certificate" in s.one("Deployment", "clawbot").depends_on
    volumes = {v["name"]: v for v in s.one("Deployment", "clawbot").manifest["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == certificates(s)["clawbot-tls"]["spec"]["secretName"]
