# context-store: feature server, MCP over HTTP and stream workers in one image.
#   docker build -t context-store:local .          (compose.yaml builds it for you)
# Embeddings (torch, sentence-transformers) are large: add them with --build-arg EXTRAS=redis,server,mcp,embeddings
FROM python:3.11-slim

ARG EXTRAS=redis,server,mcp
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CONTEXT_STORE_DATA_DIR=/data

WORKDIR /src
COPY pyproject.toml README.md ./
COPY context_store ./context_store
# context_store/tools and context_store/embedders are symlinks to these two folders (installed as subpackages).
COPY tools ./tools
COPY embedders ./embedders
RUN pip install ".[${EXTRAS}]"

# Unprivileged user; /data holds the registry, API keys and the offline store (a volume in compose).
RUN useradd --create-home --uid 10001 cs && mkdir -p /data /repo && chown cs:cs /data /repo
USER cs
WORKDIR /repo
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]

# Binding 0.0.0.0 requires API keys: create one with `context-store keys create --repo /repo --scope read`.
CMD ["context-store", "serve", "--repo", "/repo", "--host", "0.0.0.0", "--port", "8000"]
