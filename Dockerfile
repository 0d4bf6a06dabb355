# A Burrow node: `burrow node` runs one worker process per GPU (or CPU slot), each restarted alone on a crash.
#
#   docker build -t burrow-node .
#   docker run --gpus all -e AMQP_URL=amqps://... -e BURROW_STORAGE_URL=s3://bucket ... burrow-node
#
# GPUs: the NVIDIA container toolkit injects the driver; PyTorch's and JAX's CUDA wheels carry the CUDA runtime
# themselves, so this slim Python base serves GPU nodes too. An actor that needs the CUDA toolkit (nvcc, cuDNN
# headers) builds FROM a CUDA image with Python 3.11 instead: --build-arg BASE=<that image>.
# Configuration is the environment only (README, "Configuration"); secrets come from the platform's secret
# store, never from this file.
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BURROW_STATE_DIR=/var/lib/burrow \
    BURROW_GRACE_S=25

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin burrow \
    && mkdir -p /var/lib/burrow \
    && chown burrow:burrow /var/lib/burrow

WORKDIR /app
COPY pyproject.toml README.md ./
COPY node ./node
COPY actors ./actors
COPY cloud ./cloud
COPY observability ./observability
# The project pins what it must (Dramatiq, pika) in pyproject.toml; the image installs exactly that project.
# hadolint ignore=DL3013
RUN pip install --no-compile .

USER 10001
# Preemption: the platform sends SIGTERM, then kills after its grace period. `burrow node` forwards one SIGTERM
# to each worker, whose jobs checkpoint and hand back within BURROW_GRACE_S: give the container at least
# BURROW_GRACE_S + 5 s (docker stop -t 30, Compose stop_grace_period: 30s, Kubernetes
# terminationGracePeriodSeconds: 30; on SaladCloud keep BURROW_GRACE_S under the time the platform allows).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["burrow", "health"]
CMD ["burrow", "node"]
