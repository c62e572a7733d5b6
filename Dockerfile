# The scoring service on the committed default models.
# The install steps of `make install` (with pip here): the pinned requirements, then the project.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    OMP_NUM_THREADS=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    RISK_DECISION_LOG_PATH=/var/lib/risk/decisions.sqlite \
    RISK_HASH_KEY_FILE=/var/lib/risk/hash.key

RUN groupadd --system --gid 10001 risk \
    && useradd --system --uid 10001 --gid risk --home-dir /app risk \
    && mkdir -p /app /var/lib/risk && chown risk:risk /var/lib/risk

WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN pip install -r requirements.lock
COPY risk_service risk_service
COPY training training
COPY models models
# A C compiler for the project's one extension (risk_service/features/_rolling.c), removed in
# the same step so the image keeps none. Debian's current packages: their versions are the
# base image's release, not pins of this project.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-deps . \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

USER 10001
EXPOSE 8000
VOLUME ["/var/lib/risk"]
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=1)"]

# One worker on the embedded in-memory state (it is per process); with RISK_STATE_URL (Redis)
# pass --workers N, as docker-compose.yml does. Off loopback, API keys are required
# (RISK_API_KEYS_FILE). The decision-log spool lives under /var/lib/risk.
CMD ["risk", "serve", "--host", "0.0.0.0", "--port", "8000", "--models", "/app/models"]
