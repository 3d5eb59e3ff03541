# The serving image: the mlprod API for one model bundle, run by gunicorn, ready for Cloud Run.
#
#   docker build -t mlprod-api .                                    scikit-learn models, gs:// bundles
#   docker build -t mlprod-api:tf --build-arg EXTRAS=tf .           + TensorFlow (Keras models)
#   docker build -t mlprod-api:gcp --build-arg EXTRAS=gcp .         + Vertex AI SDK (remote model endpoint)
#   docker build -t my-model --target baked --build-arg BUNDLE=out/my.bundle .   the bundle baked in
#
#   docker run -p 8080:8080 -e MLPROD_BUNDLE=gs://bucket/my.bundle -e MLPROD_JWT_SECRET=... mlprod-api
#   docker run -p 8080:8080 -e MLPROD_ENV=prod -e MLPROD_CONFIG=/etc/mlprod/mlprod.yaml ... mlprod-api   (Cloud Run)
#
# BASE is any image with Python 3.11 and its venv module (Debian's python3-venv); both stages use it.
# PIP_CERT names a CA bundle mounted during a build behind a TLS proxy; empty (the default) changes nothing.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
SHELL ["/bin/sh", "-eu", "-c"]
ARG PIP_CERT=
ARG EXTRAS=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# binutils' strip, for the build stage only: image_venv.py slim strips the libraries' symbol tables (~45 MB).
RUN apt-get update && apt-get install -y --no-install-recommends binutils && rm -rf /var/lib/apt/lists/*
# 1. The dependencies, in a layer of their own that changes only with settings.ini or constraints.txt: pip installs
#    them for a placeholder package, replaced by mlprod's wheel below. With them gcsfs, so that MLPROD_BUNDLE may
#    be a gs:// URL (~55 MB; the whole `gcp` extra adds the Vertex AI SDK, ~250 MB more, so it is a variant).
COPY settings.ini setup.py README.md constraints.txt ./
COPY tools/image_venv.py /usr/local/bin/
RUN python3 -m venv /opt/venv \
    && mkdir mlprod && touch mlprod/__init__.py \
    && /opt/venv/bin/pip install ${PIP_CERT:+--cert "$PIP_CERT"} --use-pep517 --no-compile -c constraints.txt \
       ".${EXTRAS:+[$EXTRAS]}" gcsfs \
    && rm -rf mlprod build ./*.egg-info \
    && /opt/venv/bin/python /usr/local/bin/image_venv.py slim /opt/venv
# 2. mlprod's wheel, as a release would publish it, installed over the placeholder; then the modules a request
#    touches compiled, and pip removed.
COPY mlprod ./mlprod
RUN /opt/venv/bin/pip wheel ${PIP_CERT:+--cert "$PIP_CERT"} --use-pep517 --no-deps --wheel-dir /dist . \
    && /opt/venv/bin/pip install --no-deps --no-compile --force-reinstall /dist/mlprod-*.whl \
    && /opt/venv/bin/python /usr/local/bin/image_venv.py warm /opt/venv

FROM ${BASE} AS api
SHELL ["/bin/sh", "-eu", "-c"]
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin mlprod
COPY --from=build /opt/venv /opt/venv
# Cloud Run sets PORT and sends SIGTERM, then SIGKILL 10 s later. One worker process per container with
# threads is Cloud Run's advice (scale by instances); WEB_CONCURRENCY and GUNICORN_THREADS change it.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    PORT=8080 WEB_CONCURRENCY=1 GUNICORN_THREADS=8
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/v1/health' % os.environ['PORT'])"]
# Binds every interface on $PORT. What it serves comes from the environment: MLPROD_BUNDLE (a folder or gs:// URL),
# or MLPROD_ENV (an environment's live bundle, followed); `mlprod serve` checks settings and bundle before gunicorn.
CMD ["sh", "-c", "exec mlprod serve --host 0.0.0.0 --port $PORT --workers $WEB_CONCURRENCY --threads $GUNICORN_THREADS"]

# The bundle baked into the image (no storage access at start): --target baked --build-arg BUNDLE=<folder>.
FROM api AS baked
ARG BUNDLE=model.bundle
COPY --chown=10001:10001 ${BUNDLE} /bundle
ENV MLPROD_BUNDLE=/bundle

# The default target: the image without a bundle, which reads MLPROD_BUNDLE at start.
FROM api
