# A Burrow node: one worker process per GPU (or CPU slot), supervised by `burrow node`.
# For GPU nodes, build FROM a CUDA runtime image with Python 3.11 and install the `gpu` extra.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY node ./node
COPY actors ./actors
COPY cloud ./cloud
COPY observability ./observability
RUN pip install '.[gpu]'

# Configuration comes from the environment: AMQP_URL, BURROW_STORAGE_URL, BURROW_S3_ENDPOINT_URL,
# AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, BURROW_NODE_ID, BURROW_SUBCLOUD, ... (see README).
# SaladCloud sends SIGTERM before it reclaims a node: `burrow node` drains within BURROW_GRACE_S.
STOPSIGNAL SIGTERM
CMD ["burrow", "node"]
