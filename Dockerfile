# expertbridge worker image: CPU torch by default; pass --build-arg TORCH_INDEX=... for CUDA builds.
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
RUN pip install --index-url "$TORCH_INDEX" "torch==2.14.1" "torchvision==0.29.1"
COPY pyproject.toml README.md ./
COPY agents ./agents
COPY errors ./errors
COPY experts ./experts
COPY bridges ./bridges
COPY cache ./cache
COPY workflows ./workflows
RUN pip install .

# Weights are mounted, never baked in: see docker-compose.yml (./weights → /weights).
VOLUME ["/weights", "/data"]
RUN useradd --create-home app && mkdir -p /store && chown app /store
USER app
CMD ["expertbridge", "worker", "--experts", "timm"]
