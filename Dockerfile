# The serving image: the mlprod API for one model bundle, run by gunicorn (Cloud Run sets PORT).
#   docker build -t mlprod-api .
#   docker run -p 8080:8080 -e MLPROD_BUNDLE=/bundle -e MLPROD_JWT_SECRET=... -v "$PWD/my.bundle:/bundle:ro" mlprod-api
# BASE can be any Debian-based image; Python 3.11 comes from apt when the base has none.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
SHELL ["/bin/sh", "-eu", "-c"]
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
      && rm -rf /var/lib/apt/lists/*; fi
# PIP_CERT: a CA bundle path for builds behind a TLS proxy; empty (the default) changes nothing.
ARG PIP_CERT=
WORKDIR /src
COPY settings.ini setup.py README.md constraints.txt ./
COPY mlprod ./mlprod
# Only the serving dependencies (no extras): the scikit-learn API starts fast and the image stays small.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir ${PIP_CERT:+--cert "$PIP_CERT"} -c constraints.txt .

FROM ${BASE}
SHELL ["/bin/sh", "-eu", "-c"]
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 \
      && rm -rf /var/lib/apt/lists/*; fi \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin mlprod
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PORT=8080 MLPROD_BUNDLE=/bundle
USER 10001
EXPOSE 8080
# The container binds every interface on $PORT; `mlprod serve` checks the bundle before gunicorn starts.
CMD ["sh", "-c", "exec mlprod serve \"$MLPROD_BUNDLE\" --host 0.0.0.0 --port \"$PORT\""]
