# Fogline operator image: kopf and the Kubernetes client, nothing to train or serve.
# Build from the repository root: docker build -f images/operator.Dockerfile -t fogline-operator .
ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install "fogline[operator] @ file://$(ls /wheels/fogline-*.whl)" && rm -rf /wheels
# A numeric non-root user, so that runAsNonRoot can verify it without a passwd lookup.
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["fogline"]
CMD ["run", "--all-namespaces"]
