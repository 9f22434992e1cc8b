# syntax=docker/dockerfile:1
# bnfold serve image: service/ + ONNX Runtime, no torch, no compiler, non-root.
# The CUDA/cuDNN runtime base matches onnxruntime-gpu 1.31.1 (CUDA 13, cuDNN 9); without a GPU the same
# image runs on the CPU execution provider.

FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 AS base
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# DL3008: the distribution packages follow the pinned base image's Ubuntu release and its security updates
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

FROM base AS build
RUN python3 -m venv /opt/venv
COPY docker/requirements-serve.txt /tmp/requirements-serve.txt
RUN pip install --requirement /tmp/requirements-serve.txt

FROM base AS serve
COPY --from=build /opt/venv /opt/venv
# only the service package and the contracts it shares: the serving image never holds training code or torch
COPY service /opt/bnfold/service
COPY contracts /opt/bnfold/contracts
COPY docker/entrypoints/healthcheck.py /opt/bnfold/healthcheck.py
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin bnfold
USER 10001
ENV PYTHONPATH=/opt/bnfold BNFOLD_HOST=0.0.0.0 BNFOLD_PORT=8000 BNFOLD_GRPC_PORT=8001 BNFOLD_REPOSITORY=/models
EXPOSE 8000 8001
VOLUME ["/models"]
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python3", "/opt/bnfold/healthcheck.py"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["python3", "-m", "service"]
