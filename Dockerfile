# One image for every entry point: `inference-autoscaler optimize|simulate|metrics-adapter|webhook`.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY autoscaler ./autoscaler
COPY metrics_adapter ./metrics_adapter
COPY webhook ./webhook
# the wheel build generates the gRPC code from autoscaler/proto/*.proto (see setup.py)
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin autoscaler
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
ENTRYPOINT ["inference-autoscaler"]
CMD ["simulate"]
