"""HTTPS on the API port: the real server with a generated certificate, the CA pinned, renewal picked up live."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.settings import SettingsError, load_settings
from bench.waiting import exited, wait_until
from tests.e2e.server import Server, start_server

Key = ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca() -> tuple[x509.Certificate, Key]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("clawbot test CA"))
        .issuer_name(_name("clawbot test CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(ca: tuple[x509.Certificate, Key], directory: Path, stem: str) -> tuple[Path, Path, int]:
    """A server certificate for 127.0.0.1 and localhost signed by `ca`, written as PEM files; returns its serial."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    serial = x509.random_serial_number()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("clawbot"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path, serial


def served_serial(port: int, ca_file: Path) -> int:
    """The serial of the certificate a fresh handshake with the server presents (verified against the pinned CA)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def https_url(server: Server) -> str:
    return f"https://127.0.0.1:{server.port}"


def wait_ready_https(server: Server, ca_file: Path, timeout: float = 300) -> None:
    verify = ssl.create_default_context(cafile=str(ca_file))
    wait_until(
        "the server to be ready over HTTPS",
        lambda: httpx.get(https_url(server) + "/readyz", verify=verify, timeout=2).status_code == 200,
        timeout,
        poll_s=0.25,
        ignoring=(httpx.HTTPError,),
        give_up=exited(server.proc, "the server"),
        detail=lambda: server.log()[-4000:],
    )


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Server, Path, tuple[x509.Certificate, Key], Path]]:
    certs = tmp_path_factory.mktemp("certs")
    ca = make_ca()
    ca_file = certs / "ca.crt"
    ca_file.write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    cert, key, _ = issue(ca, certs, "first")
    # The server reads fixed paths, as in the pod (a Secret volume): renewal replaces the files behind them.
    live_cert, live_key = certs / "tls.crt", certs / "tls.key"
    os.replace(cert, live_cert)
    os.replace(key, live_key)
    srv = start_server(
        Path(tmp_path_factory.mktemp("tls-data")),
        TLS_CERT_FILE=str(live_cert),
        TLS_KEY_FILE=str(live_key),
        TLS_RELOAD_SECONDS="1",
    )
    try:
        wait_ready_https(srv, ca_file)
        yield srv, ca_file, ca, certs
    finally:
        srv.stop()


def test_api_answers_over_https_with_the_ca_pinned(
    tls_server: tuple[Server, Path, tuple[x509.Certificate, Key], Path],
) -> None:
    srv, ca_file, _, _ = tls_server
    verify = ssl.create_default_context(cafile=str(ca_file))
    with httpx.Client(base_url=https_url(srv), verify=verify, timeout=120) as client:
        assert client.get("/readyz").status_code == 200
        r = client.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {srv.api_key}"},
            json={"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8, "temperature": 0},
        )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"


def test_plain_http_and_unpinned_clients_get_nothing(
    tls_server: tuple[Server, Path, tuple[x509.Certificate, Key], Path],
) -> None:
    srv, _, _, _ = tls_server
    with pytest.raises(httpx.HTTPError):  # the listener speaks only TLS
        httpx.get(srv.url + "/readyz", timeout=5)
    with pytest.raises(httpx.ConnectError):  # a client that trusts only the public CAs refuses the certificate
        httpx.get(https_url(srv) + "/readyz", timeout=5)


def test_metrics_port_stays_plain_http_inside_the_cluster(
    tls_server: tuple[Server, Path, tuple[x509.Certificate, Key], Path],
) -> None:
    srv, _, _, _ = tls_server
    assert "clawbot_model_ready" in srv.metrics()


def test_a_renewed_certificate_is_served_without_a_restart(
    tls_server: tuple[Server, Path, tuple[x509.Certificate, Key], Path],
) -> None:
    srv, ca_file, ca, certs = tls_server
    before = served_serial(srv.port, ca_file)
    cert, key, renewed = issue(ca, certs, "renewed")
    assert renewed != before
    os.replace(key, certs / "tls.key")
    os.replace(cert, certs / "tls.crt")
    wait_until(
        f"the renewed certificate to be served instead of serial {before}",
        lambda: served_serial(srv.port, ca_file) == renewed,
        60,
        detail=lambda: srv.log()[-2000:],
    )
    assert srv.proc.poll() is None


def test_tls_settings_come_in_pairs_of_existing_files(tmp_path: Path) -> None:
    cert, key, _ = issue(make_ca(), tmp_path, "x")
    base = {"APP_ENV": "development"}
    s = load_settings({**base, "TLS_CERT_FILE": str(cert), "TLS_KEY_FILE": str(key)})
    assert s.tls_cert_file == cert and s.tls_key_file == key
    with pytest.raises(SettingsError, match="TLS_CERT_FILE is set but TLS_KEY_FILE is not"):
        load_settings({**base, "TLS_CERT_FILE": str(cert)})
    with pytest.raises(SettingsError, match="TLS_KEY_FILE is set but TLS_CERT_FILE is not"):
        load_settings({**base, "TLS_KEY_FILE": str(key)})
    with pytest.raises(SettingsError, match="TLS_KEY_FILE must name a readable PEM file"):
        load_settings({**base, "TLS_CERT_FILE": str(cert), "TLS_KEY_FILE": str(tmp_path / "missing.key")})
