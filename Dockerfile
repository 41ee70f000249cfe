# syntax=docker/dockerfile:1
# ServeLab, CPU image: `servelab serve` on ONNX Runtime, plus the load generators (locust,
# `servelab bench --target`) that k8s/overlays/loadtest runs. Non-root (uid 10001), and
# fit for a read-only root file system: the model exports are baked in at build time.
#
#   docker build -t servelab:0.1.0 .
#   docker run --rm -p 8000-8002:8000-8002 servelab:0.1.0
#
# Not built on the machines this project is developed on (they have no container engine):
# hadolint and checkov lint this file, and tests/test_docker.py checks it against the code.
FROM python:3.11-slim-bookworm AS build
# PyTorch's CPU wheels (an unpinned index would bring the multi-GB CUDA build); the version
# is the one constraints/cpu.txt pins, read from that file.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY constraints/cpu.txt constraints/cpu.txt
COPY lab/ lab/
RUN python -m venv /opt/venv \
    && torch_pin="$(grep '^torch==' constraints/cpu.txt)" \
    && /opt/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" "${torch_pin}" \
    && /opt/venv/bin/pip install --constraint constraints/cpu.txt ".[load]"

FROM python:3.11-slim-bookworm
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY models/ models/
COPY benchmarks/locustfile.py benchmarks/locustfile.py
# The exports (ONNX, weights, references) are made here, once, so that pods start without
# PyTorch exporting anything and with nothing to write outside /tmp.
RUN servelab export encoder \
    && servelab export ranker \
    && groupadd --system --gid 10001 servelab \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --home-dir /tmp servelab
USER 10001:10001
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/live', timeout=2)"]
ENTRYPOINT ["servelab"]
CMD ["serve", "--host", "0.0.0.0", "--no-export"]
