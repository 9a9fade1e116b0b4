"""What infra/ and app/ agree on: port, probe paths, mount paths, file names and the chat pods' labels."""

from __future__ import annotations

from app.access.kek_secret import SERVICE_ACCOUNT_DIR as KEK_READER_ACCOUNT_DIR
from app.settings import METRICS_PORT as APP_METRICS_PORT
from app.settings import SERVICE_PORT

PORT = SERVICE_PORT
PORT_NAME = "http"
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
# /metrics has its own port: the LoadBalancer Service carries PORT only, a ClusterIP Service carries this one.
METRICS_PORT = APP_METRICS_PORT
METRICS_PORT_NAME = "metrics"

DATA_DIR = "/app/data"
TMP_DIR = "/tmp"
KEK_DIR = "/var/run/clawbot/kek"
KEK_FILE = "kek"
KEYS_DIR = "/var/run/clawbot/keys"
KEYS_FILE = "keys.json"
KEK_PATH = f"{KEK_DIR}/{KEK_FILE}"
API_KEY_PATH = f"{KEYS_DIR}/{KEYS_FILE}"
# keyEncryption namespace: the data key the init step unwrapped, in a memory volume the chat container reads.
DATA_KEY_DIR = "/var/run/clawbot/data-key"
DATA_KEY_PATH = f"{DATA_KEY_DIR}/dek"
# Where the init step (alone) mounts the token that may read the KEK Secret; app.access.kek_secret reads it there.
SERVICE_ACCOUNT_DIR = str(KEK_READER_ACCOUNT_DIR)
# A kubernetes.io/tls Secret (cert-manager writes one) mounted whole, so renewals reach the pod and the app reloads.
TLS_DIR = "/var/run/clawbot/tls"
TLS_CERT_PATH = f"{TLS_DIR}/tls.crt"
TLS_KEY_PATH = f"{TLS_DIR}/tls.key"

# The API server as pods reach it: the `kubernetes` Service's port, and the endpoints' port on most clusters.
API_SERVER_PORTS = (443, 6443)
# IRSA: the IAM role a ServiceAccount's pods assume (EKS's pod identity webhook injects its credentials).
IRSA_ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"

CONTAINER_NAME = "chat"
APP_UID = 10001
REDIS_PORT = 6379

APP_NAME = "clawbot"
CHAT_LABELS = {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/component": "chat"}
METRICS_SERVICE_LABELS = {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/component": "metrics"}
REDIS_LABELS = {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/component": "redis"}
# The Job that fetches a hub model into the data volume: the one pod of the app that may reach the internet.
MODEL_DOWNLOAD_LABELS = {"app.kubernetes.io/name": APP_NAME, "app.kubernetes.io/component": "model-download"}
COMMON_LABELS = {"app.kubernetes.io/part-of": APP_NAME, "app.kubernetes.io/managed-by": "pulumi"}
# Which release a chat pod runs: the stable set or the canary beside it. Both sit behind the one Service (it selects
# CHAT_LABELS); each Deployment selects its own track. Prometheus copies both labels onto every scraped series.
TRACK_LABEL = "track"
STABLE, CANARY = "stable", "canary"
VERSION_LABEL = "app.kubernetes.io/version"
RELEASE_LABELS = (TRACK_LABEL, VERSION_LABEL)
# The weight an operator asked for, on the canary Deployment: the policy pack holds it to a ceiling per stack.
CANARY_WEIGHT_ANNOTATION = "clawbot.dev/canary-weight-percent"
# The conversation database URL reaches the container from this Secret key, never through the ConfigMap.
DATABASE_URL_ENV = "CONVERSATION_DATABASE_URL"
DATABASE_SECRET_KEY = "url"
# huggingface_hub's own switch, which app/inference/loader.py reads too: the chat pods load the model the download Job
# left on the data volume and never try the network (a missing copy fails at once, naming the path).
HUB_OFFLINE_ENV = "HF_HUB_OFFLINE"
# Objects of the app that belong to no one component (the key Secrets, the monitoring objects).
APP_LABELS = {"app.kubernetes.io/name": APP_NAME, **COMMON_LABELS}
