"""Near-duplicate domain names by sentence-embedding cosine similarity (Sprout's optional dedup)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from llm_alloy.logs.embeddings import embed_texts


class EmbeddingSimilarity:
    def __init__(self, model: str = "minilm-l6", threshold: float = 0.85) -> None:
        embed_texts([], model)  # loads the encoder now, so a missing model fails at start, not mid-run
        self.model = model
        self.threshold = threshold
        self.embed = lru_cache(maxsize=4096)(self._embed)

    def _embed(self, text: str) -> np.ndarray:
        return embed_texts([text], self.model)[0]

    def similarity(self, a: str, b: str) -> float:
        return float(np.dot(self.embed(a), self.embed(b)))

    def __call__(self, a: str, b: str) -> bool:
        return self.similarity(a, b) >= self.threshold
