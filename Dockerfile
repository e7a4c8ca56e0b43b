# One image for every entry point: `inference-autoscaler optimize|simulate|controller|metrics-adapter|webhook`.
# Every package is pinned with its hash (requirements.lock, build-requirements.lock: pip refuses
# anything else). The base image is pinned to an exact Python patch release and Debian version;
# pin it by digest too where your registry mirror tells you it (FROM python:...@sha256:...).
FROM python:3.11.14-slim-bookworm AS build
WORKDIR /src
COPY requirements.lock build-requirements.lock ./
# the runtime packages into a virtual environment that the final stage copies whole
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock
# the build tools (setuptools, grpcio-tools) pinned too, so the wheel is built without fetching
# unpinned ones: --no-build-isolation
RUN pip install --no-cache-dir --require-hashes --no-deps -r build-requirements.lock
COPY pyproject.toml setup.py README.md ./
COPY autoscaler ./autoscaler
COPY metrics_adapter ./metrics_adapter
COPY webhook ./webhook
# the wheel build generates the gRPC code from autoscaler/proto/*.proto (see setup.py)
RUN pip wheel --no-cache-dir --no-build-isolation --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/*.whl \
    && /opt/venv/bin/pip check

FROM python:3.11.14-slim-bookworm
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin autoscaler
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
USER 10001
ENTRYPOINT ["inference-autoscaler"]
CMD ["simulate"]
