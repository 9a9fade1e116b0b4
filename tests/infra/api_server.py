"""A stand-in Kubernetes API server for the scripts the pods run against it (the snapshot job, the key init step).

No API server runs here, so these scripts talk HTTPS to this one: a real TLS listener on a loopback port, a CA the
client must verify, a ServiceAccount token it must present, and a handler the test supplies. The directory
`account_dir` is laid out as the kubelet mounts a ServiceAccount (token, ca.crt, namespace).
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from tests.e2e.test_tls import issue, make_ca

Handle = Callable[[str, str, "dict[str, Any] | None"], "tuple[int, dict[str, Any]]"]


@contextmanager
def stand_in_api_server(handle: Handle, directory: Path, *, token: str, namespace: str) -> Iterator[dict[str, str]]:
    """Serve `handle(method, path_and_query, body) -> (status, json)` over TLS; yields the env a pod would have
    (KUBERNETES_SERVICE_HOST/PORT) plus SERVICE_ACCOUNT_DIR, the mounted account's directory."""

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            if self.headers.get("Authorization") != f"Bearer {token}":
                self._answer(401, {"reason": "Unauthorized"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            self._answer(*handle(self.command, self.path, body))

        def _answer(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:
            pass

    ca = make_ca()
    cert, key, _ = issue(ca, directory, "apiserver")
    account = directory / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(token)
    (account / "namespace").write_text(namespace)
    (account / "ca.crt").write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(server.server_address[1]),
            "SERVICE_ACCOUNT_DIR": str(account),
        }
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def allowed(role: dict[str, Any], verb: str, group: str, resource: str, name: str | None) -> bool:
    """Whether a Role's rules grant one request (verb on a resource of an API group, by name where given)."""
    return any(
        group in r["apiGroups"]
        and resource in r["resources"]
        and verb in r["verbs"]
        and ("resourceNames" not in r or name in r["resourceNames"])
        for r in role["rules"]
    )
