"""Reading the KEK from a Secret in another namespace, for the chat pods' init step in the `namespace` key mode.

In that (weaker) mode the KEK is a Secret in a namespace of its own, which only the chat pods' ServiceAccount may
read (one Role: `get` on that one Secret). The init container alone mounts a token for it; it unwraps the key file's
data key with the KEK and leaves only the data key, in memory, for the chat container, which has no token at all.

Standard library only: the API server's address comes from the kubelet (KUBERNETES_SERVICE_HOST/PORT), the token,
CA and namespace from the ServiceAccount mount.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from app.access.keyfile import KeySourceError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TIMEOUT_S = 30


def read_secret_key(reference: str, *, account_dir: Path | None = None) -> str:
    """The value of `NAMESPACE/NAME/KEY` (a Secret's data key), read with the pod's ServiceAccount token (from
    `account_dir`, else SERVICE_ACCOUNT_DIR in the environment, else where the kubelet mounts it)."""
    account_dir = account_dir or Path(os.environ.get("SERVICE_ACCOUNT_DIR") or SERVICE_ACCOUNT_DIR)
    parts = reference.split("/")
    if len(parts) != 3 or not all(parts):
        raise KeySourceError(f"--kek-secret must be NAMESPACE/NAME/KEY, got {reference!r}")
    namespace, name, key = parts
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST", ""), os.environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise KeySourceError(
            "KUBERNETES_SERVICE_HOST/PORT are not set: --kek-secret reads the Secret from inside the cluster"
        )
    try:
        token = (account_dir / "token").read_text().strip()
        tls = ssl.create_default_context(cafile=str(account_dir / "ca.crt"))
    except (OSError, ssl.SSLError) as exc:
        raise KeySourceError(f"the ServiceAccount token or CA under {account_dir} cannot be read: {exc}") from None
    url = f"https://{f'[{host}]' if ':' in host else host}:{port}/api/v1/namespaces/{namespace}/secrets/{name}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, context=tls, timeout=TIMEOUT_S) as response:
            secret = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        hint = (
            " (the chat pods' ServiceAccount needs `get` on it: the Role in that namespace)"
            if exc.code in (401, 403)
            else ""
        )
        raise KeySourceError(f"reading Secret {namespace}/{name} answered {exc.code}{hint}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise KeySourceError(f"reading Secret {namespace}/{name} failed: {exc}") from None
    value = (secret.get("data") or {}).get(key)
    if not value:
        raise KeySourceError(f"Secret {namespace}/{name} has no key {key!r}")
    try:
        return base64.b64decode(value, validate=True).decode().strip()
    except (binascii.Error, UnicodeDecodeError):
        raise KeySourceError(f"Secret {namespace}/{name} key {key!r} is not base64 text") from None
