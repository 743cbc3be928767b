"""The one interface every model role (source, judge, target) is reached through."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod

from llm_alloy.models.types import Completion, Conversation, GenerationParams, OnResult, SampleIndex, ScoredText


class Backend(ABC):
    """A model that generates chat completions and scores text.

    `identity` names everything that changes outputs apart from the request itself (the backend kind,
    the weights or endpoint, the dtype); the response cache keys on it.
    """

    name: str
    model_id: str
    computes_in_process: bool = False
    """True for backends that run the model on this machine's CPU/GPU: running two of them at once
    only makes them fight over the same cores, so callers run them one after another."""

    @property
    @abstractmethod
    def identity(self) -> str: ...

    @abstractmethod
    def generate(
        self,
        conversations: list[Conversation],
        params: GenerationParams,
        sample_index: SampleIndex = 0,
        on_result: OnResult | None = None,
    ) -> list[Completion]:
        """One completion per conversation, in order. `sample_index` (one for all, or one per
        conversation) tells repeated samples of the same request apart: it is folded into the seed,
        so sampled outputs can be cached too, and k samples of one request can share a batch."""

    async def agenerate(
        self,
        conversations: list[Conversation],
        params: GenerationParams,
        sample_index: SampleIndex = 0,
        on_result: OnResult | None = None,
    ) -> list[Completion]:
        return await asyncio.to_thread(self.generate, conversations, params, sample_index, on_result)

    @abstractmethod
    def score(self, prompts: list[str], continuations: list[str], top_logprobs: int = 0) -> list[ScoredText]:
        """Log-probabilities of each continuation's tokens given its prompt (raw text, no chat template)."""

    def close(self) -> None:
        """Release resources (HTTP connections, threads); the default holds none."""
