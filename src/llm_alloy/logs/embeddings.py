"""Query embeddings: a float32 table keyed by query id, stored apart from the log rows.

LLMFusionBench kept its embeddings as stringified tensors on the first row of each 40-row block; here
they are a (Q, D) safetensors array with the ids, the encoder name and its pooling in a JSON side file,
so a router can check that it is fed the embedding space it was trained in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from llm_alloy.files import write_atomic

TENSORS_FILE = "embeddings.safetensors"
META_FILE = "embeddings.json"


class EmbeddingError(ValueError):
    """An embedding table that cannot be built, read or looked up; the message says which id or file."""


@lru_cache(maxsize=2)
def _encoder(model: str):
    from sentence_transformers import SentenceTransformer

    from llm_alloy.models.registry import resolve_model_path

    return SentenceTransformer(str(resolve_model_path(model)), device="cpu")


def encoder_pooling(model: str = "minilm-l6") -> str:
    """The pooling the sentence-transformers pipeline applies (e.g. 'mean'), recorded with the table."""
    for module in _encoder(model):
        mode = getattr(module, "pooling_mode", None)
        if mode is None and hasattr(module, "get_pooling_mode_str"):  # sentence-transformers < 6
            mode = module.get_pooling_mode_str()
        if mode is not None:
            return str(mode)
    return "unknown"


def embed_texts(
    texts: Sequence[str], model: str = "minilm-l6", batch_size: int = 256, progress: bool = False
) -> np.ndarray:
    """(len(texts), D) float32, each row L2-normalised, so a dot product is a cosine similarity."""
    encoder = _encoder(model)
    if len(texts) == 0:
        dimension = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
        return np.zeros((0, dimension()), dtype=np.float32)
    vectors = encoder.encode(
        list(texts),
        batch_size=batch_size,
        show_progress_bar=progress,
        normalize_embeddings=True,
        convert_to_numpy=True,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1, as contiguous float32, so a dot product is a cosine similarity. Rows
    already of length 1 are left as they are (a saved store loads back bit for bit); zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.ascontiguousarray(vectors / np.where((norms > 0) & (np.abs(norms - 1) > 1e-6), norms, 1.0))


@dataclass
class EmbeddingTable:
    ids: list[str]
    vectors: np.ndarray  # (len(ids), D) float32
    encoder: str
    pooling: str

    def __post_init__(self) -> None:
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.ids):
            raise EmbeddingError(
                f"embedding table: {len(self.ids)} ids but vectors of shape {self.vectors.shape}"
            )
        self._row = {query_id: i for i, query_id in enumerate(self.ids)}
        if len(self._row) != len(self.ids):
            duplicate = next(q for i, q in enumerate(self.ids) if self._row[q] != i)
            raise EmbeddingError(f"embedding table: duplicate id '{duplicate}'")

    @classmethod
    def build(
        cls, ids: Sequence[str], texts: Sequence[str], model: str = "minilm-l6", batch_size: int = 256,
        progress: bool = False,
    ) -> "EmbeddingTable":
        if len(ids) != len(texts):
            raise EmbeddingError(f"embedding table: {len(ids)} ids but {len(texts)} texts")
        vectors = embed_texts(texts, model=model, batch_size=batch_size, progress=progress)
        return cls(list(ids), vectors, encoder=model, pooling=encoder_pooling(model))

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, query_id: object) -> bool:
        return query_id in self._row

    def lookup(self, ids: Sequence[str]) -> np.ndarray:
        """The vectors of `ids`, in that order."""
        missing = [q for q in ids if q not in self._row]
        if missing:
            shown = ", ".join(f"'{q}'" for q in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise EmbeddingError(f"embedding table ({self.encoder}) has no vector for query id {shown}")
        return self.vectors[[self._row[q] for q in ids]]

    def save(self, directory: str | Path) -> Path:
        from safetensors.numpy import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"vectors": self.vectors}, str(directory / TENSORS_FILE))
        meta = {"encoder": self.encoder, "pooling": self.pooling, "dim": self.dim, "ids": self.ids}
        write_atomic(directory / META_FILE, json.dumps(meta))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "EmbeddingTable":
        from safetensors.numpy import load_file

        directory = Path(directory)
        for name in (META_FILE, TENSORS_FILE):
            if not (directory / name).is_file():
                raise EmbeddingError(f"{directory}: not an embedding table (missing {name})")
        try:
            meta = json.loads((directory / META_FILE).read_text())
            vectors = load_file(str(directory / TENSORS_FILE))["vectors"]
            return cls(meta["ids"], vectors, encoder=meta["encoder"], pooling=meta["pooling"])
        except (json.JSONDecodeError, KeyError) as error:
            raise EmbeddingError(f"{directory}: unreadable embedding table ({error!r})") from None
