# syntax=docker/dockerfile:1
# Steward's production image: one image for every service, chosen by command (`steward serve vault|gateway`).
#
#   docker build -t registry.example.com/steward:$(git describe --always) \
#     --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#
# The install steps live in deploy/image/install.sh, which tests/integration/deploy/test_image.py also runs (as a
# non-root user, into a temporary directory) and then starts a service from: no container daemon runs in CI.
# `make image-check` lints this file with hadolint.
#
# Base image: pin by digest before a release, e.g.
#   FROM python:3.11-slim-bookworm@sha256:<digest>  (docker buildx imagetools inspect python:3.11-slim-bookworm)
# and keep both stages on the same digest: the virtualenv links to the base image's /usr/local/bin/python3.

FROM python:3.11-slim-bookworm AS builder

# uv is the same version as the Makefile's (UV_VERSION); it stays in this stage.
ARG UV_VERSION=0.13.9
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_NO_CACHE=1
RUN pip install --no-cache-dir "uv==${UV_VERSION}"

WORKDIR /src
# Dependencies first (their layer is reused until the lock changes), then the project itself.
COPY requirements-runtime.lock ./
COPY deploy/image/install.sh deploy/image/install.sh
RUN PYTHON=python3 UV=uv deploy/image/install.sh deps /src /opt/steward

# .dockerignore keeps services/devstack (and everything not listed there) out of the context.
COPY pyproject.toml README.md ./
COPY gen/steward gen/steward
COPY services services
RUN PYTHON=python3 UV=uv deploy/image/install.sh project /src /opt/steward


FROM python:3.11-slim-bookworm

ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="steward" \
      org.opencontainers.image.description="Steward: the data-processor platform that keeps a B2B CRM's privacy promises (vault, gateway)." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/example/steward" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm" \
      org.opencontainers.image.licenses="Proprietary"

# No build tools at run time: uv stayed in the builder; pip and setuptools of the base image go too.
RUN python -m pip uninstall --yes --no-cache-dir pip setuptools wheel

COPY --from=builder /opt/steward /opt/steward

# The root filesystem is read-only in Kubernetes (only /tmp is writable): bytecode was compiled at install.
ENV PATH="/opt/steward/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Any non-root UID works (the manifests set 10001 too); nothing in the image is writable by it.
USER 10001:10001
# The services drain on SIGTERM: health turns NOT_SERVING, in-flight calls finish within GRPC__SHUTDOWN_GRACE_S.
STOPSIGNAL SIGTERM
ENTRYPOINT ["steward"]
CMD ["--help"]
