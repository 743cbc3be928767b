"""Near-duplicate domain names by sentence-embedding cosine similarity (Sprout's optional dedup)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from llm_alloy.models.registry import resolve_model_path


class EmbeddingSimilarity:
    def __init__(self, model: str = "minilm-l6", threshold: float = 0.85) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(resolve_model_path(model), device="cpu")
        self.threshold = threshold
        self.embed = lru_cache(maxsize=4096)(self._embed)

    def _embed(self, text: str) -> np.ndarray:
        return self.model.encode([text], normalize_embeddings=True)[0]

    def similarity(self, a: str, b: str) -> float:
        return float(np.dot(self.embed(a), self.embed(b)))

    def __call__(self, a: str, b: str) -> bool:
        return self.similarity(a, b) >= self.threshold
