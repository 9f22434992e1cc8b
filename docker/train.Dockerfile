# syntax=docker/dockerfile:1
# bnfold train image: torch, training/ and export/, for the one-shot `train` and `export` jobs.

FROM python:3.11.14-slim-bookworm AS build
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY docker/requirements-train.txt /tmp/requirements-train.txt
RUN pip install --requirement /tmp/requirements-train.txt
COPY pyproject.toml README.md /src/
COPY contracts /src/contracts
COPY training /src/training
COPY export /src/export
COPY service /src/service
RUN pip install --no-deps /src

FROM python:3.11.14-slim-bookworm AS train
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH MPLCONFIGDIR=/tmp/matplotlib
COPY --from=build /opt/venv /opt/venv
COPY docker/entrypoints/train.sh docker/entrypoints/export.sh /usr/local/bin/
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin bnfold \
 && mkdir -p /data /models && chown 10001 /data /models
USER 10001
WORKDIR /data
CMD ["train.sh"]
