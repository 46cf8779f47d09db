# Every API service's image: gunicorn + gevent + Flask, no TensorFlow. SERVICE names the service
# (its folder here, its entry in the roster). Build context is the repository root (compose.yaml),
# because the shared libraries live in libs/:
#   docker build -f services/api.Dockerfile --build-arg SERVICE=text-api .
# The base image is a build argument so that a test can point it elsewhere; users build on the
# official image.
ARG PYTHON_IMAGE=python:3.11-slim

# gunicorn's C HTTP parser (gunicorn_h1c) is published as source only: it is compiled here, and
# the image below gets its wheel, not the compiler.
FROM ${PYTHON_IMAGE} AS c-extensions
# The compiler of the base image's Debian, whatever its version: it builds one wheel and is not shipped.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY services/api-requirements.txt /tmp/
RUN grep -i '^gunicorn.h1c==' /tmp/api-requirements.txt > /tmp/c-extensions.txt \
    && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels -r /tmp/c-extensions.txt

FROM ${PYTHON_IMAGE}
ARG SERVICE

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Requirements first: this layer is rebuilt only when they change. The service's own file starts
# with `-r ../api-requirements.txt`, so both keep their places.
COPY services/api-requirements.txt /tmp/services/
COPY services/${SERVICE}/requirements.txt /tmp/services/${SERVICE}/
COPY --from=c-extensions /wheels /tmp/wheels
RUN pip install --no-cache-dir --find-links /tmp/wheels --only-binary gunicorn-h1c \
        -r /tmp/services/${SERVICE}/requirements.txt \
    && rm -rf /tmp/services /tmp/wheels

# The project's shared libraries (their dependencies are pinned in requirements.txt above).
COPY libs/ /tmp/libs/
RUN pip install --no-cache-dir --no-deps /tmp/libs/tfserving_client /tmp/libs/service_kit \
        /tmp/libs/model_preprocessing /tmp/libs/service_roster /tmp/libs/model_rollout \
    && rm -rf /tmp/libs

RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin app
WORKDIR /app
COPY services/${SERVICE}/ ./
USER 10001
# The roster's preload once now, so caches it writes (jieba's dictionary) are in the image.
RUN python -m service_roster.preload service.toml
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# The same config local mode uses; it finds the service in ./service.toml. API_BIND defaults to 0.0.0.0:8000.
CMD ["gunicorn", "-c", "python:service_kit.http.gunicorn_config"]
