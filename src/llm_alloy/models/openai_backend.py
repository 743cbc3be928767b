"""Any OpenAI-compatible server (vLLM, SGLang, llama.cpp, TGI, hosted APIs, `alloy serve`).

Requests run on one background event loop shared by every backend of this kind, so a synchronous
caller gets async concurrency, connections are reused across calls, and several models served from
the same endpoint share that endpoint's concurrency bound.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from dataclasses import dataclass
from typing import Any, Awaitable, Coroutine, TypeVar

import openai

from llm_alloy.models.base import Backend
from llm_alloy.models.local import derive_seed
from llm_alloy.models.types import (
    Completion,
    Conversation,
    GenerationParams,
    ModelError,
    OnResult,
    SampleIndex,
    ScoredText,
    TokenLogprob,
    Usage,
    sample_indices,
)

T = TypeVar("T")

RETRYABLE = (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError, openai.APIConnectionError)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Exponential backoff with full jitter, so retrying clients do not stampede together."""
        return rng.uniform(0.5, 1.5) * min(self.backoff_max_s, self.backoff_base_s * 2**attempt)


class LoopThread:
    """One daemon thread running the asyncio loop all OpenAI-compatible requests use."""

    _instance: "LoopThread | None" = None
    _guard = threading.Lock()

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="llm-alloy-http", daemon=True)
        self.thread.start()
        self.semaphores: dict[str, asyncio.Semaphore] = {}

    @classmethod
    def get(cls) -> "LoopThread":
        with cls._guard:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def run(self, coroutine: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    async def arun(self, coroutine: Awaitable[T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    def semaphore(self, endpoint: str, limit: int) -> asyncio.Semaphore:
        # Called on the loop thread only, so no lock is needed.
        if endpoint not in self.semaphores:
            self.semaphores[endpoint] = asyncio.Semaphore(limit)
        return self.semaphores[endpoint]


class OpenAIBackend(Backend):
    def __init__(
        self,
        name: str,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout_s: float = 120.0,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        self.name = name
        self.model_id = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.retry = retry
        self.requests_sent = 0
        self.retries = 0
        self._client: openai.AsyncOpenAI | None = None
        self._rng = random.Random()

    @property
    def identity(self) -> str:
        return f"openai:{self.base_url}"

    def _get_client(self) -> openai.AsyncOpenAI:
        # Created lazily on the loop thread: an async HTTP client belongs to the loop it was made on.
        if self._client is None:
            # The key is read here and kept only inside the client: never logged, never stored.
            api_key = (os.environ.get(self.api_key_env) if self.api_key_env else None) or "none"
            self._client = openai.AsyncOpenAI(
                base_url=self.base_url, api_key=api_key, timeout=self.timeout_s, max_retries=0
            )
        return self._client

    async def call(self, make_request) -> Any:
        """One request (`make_request(client)`) under the endpoint's concurrency bound, with retries;
        other request kinds (completions with echo, embeddings) reuse it."""
        loop_thread = LoopThread.get()
        semaphore = loop_thread.semaphore(self.base_url, self.max_concurrency)
        client = self._get_client()
        for attempt in range(self.retry.max_retries + 1):
            try:
                async with semaphore:
                    self.requests_sent += 1
                    return await make_request(client)
            except RETRYABLE as error:
                if attempt == self.retry.max_retries:
                    raise ModelError(f"{self.name}: {self.base_url} failed after {attempt + 1} attempts: {_describe(error)}") from None
                self.retries += 1
                await asyncio.sleep(self.retry.delay(attempt, self._rng))
            except openai.APIStatusError as error:
                raise ModelError(f"{self.name}: {self.base_url} refused the request: {_describe(error)}") from None
        raise AssertionError("unreachable")

    # -- generation ------------------------------------------------------------------------------
    def generate(
        self,
        conversations: list[Conversation],
        params: GenerationParams,
        sample_index: SampleIndex = 0,
        on_result: OnResult | None = None,
    ) -> list[Completion]:
        return LoopThread.get().run(self._generate_all(conversations, params, sample_index, on_result))

    async def agenerate(
        self,
        conversations: list[Conversation],
        params: GenerationParams,
        sample_index: SampleIndex = 0,
        on_result: OnResult | None = None,
    ) -> list[Completion]:
        return await LoopThread.get().arun(self._generate_all(conversations, params, sample_index, on_result))

    async def _generate_all(self, conversations, params, sample_index, on_result) -> list[Completion]:
        indices = sample_indices(sample_index, len(conversations))

        async def one(index: int, conversation: Conversation) -> Completion:
            completion = await self._chat(conversation, params, indices[index])
            if on_result:
                on_result(index, completion)
            return completion

        return await gather_or_cancel([one(i, c) for i, c in enumerate(conversations)])

    async def _chat(self, conversation: Conversation, params: GenerationParams, sample_index: int) -> Completion:
        request: dict[str, Any] = {
            "model": self.model_id,
            "messages": conversation,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": derive_seed(params.seed, sample_index),
        }
        if params.stop:
            request["stop"] = list(params.stop)
        if params.top_logprobs:
            request.update(logprobs=True, top_logprobs=params.top_logprobs)
        response = await self.call(lambda client: client.chat.completions.create(**request))
        if not response.choices:
            raise ModelError(f"{self.name}: {self.base_url} answered with no choices")
        choice = response.choices[0]
        logprobs = None
        if params.top_logprobs and choice.logprobs and choice.logprobs.content is not None:
            logprobs = [
                TokenLogprob(t.token, t.logprob, [(a.token, a.logprob) for a in t.top_logprobs])
                for t in choice.logprobs.content
            ]
        return Completion(
            text=choice.message.content or "",
            finish_reason="length" if choice.finish_reason == "length" else "stop",
            usage=_usage(response.usage),
            logprobs=logprobs,
            served_model=response.model or None,
        )

    # -- scoring ---------------------------------------------------------------------------------
    def score(self, prompts: list[str], continuations: list[str], top_logprobs: int = 0) -> list[ScoredText]:
        async def all_scores() -> list[ScoredText]:
            return list(await asyncio.gather(*(self._score(p, c, top_logprobs) for p, c in zip(prompts, continuations))))

        return LoopThread.get().run(all_scores())

    async def _score(self, prompt: str, continuation: str, top_logprobs: int) -> ScoredText:
        """Echo the text through the completions endpoint: the server returns each prompt token's logprob."""
        text = prompt + continuation
        response = await self.call(
            lambda client: client.completions.create(
                model=self.model_id, prompt=text, max_tokens=1, echo=True, logprobs=max(top_logprobs, 1), temperature=0.0
            )
        )
        lp = response.choices[0].logprobs
        if lp is None or lp.text_offset is None:
            raise ModelError(f"{self.name}: {self.base_url} does not return echoed logprobs")
        tokens = []
        offsets = list(lp.text_offset)
        for i, (token, logprob, start) in enumerate(zip(lp.tokens, lp.token_logprobs, offsets)):
            end = offsets[i + 1] if i + 1 < len(offsets) else len(text)
            # Echoed prompt tokens only (the one generated token starts at len(text)), past the prompt.
            if start >= len(text) or end <= len(prompt) or logprob is None:
                continue
            top = sorted((lp.top_logprobs[i] or {}).items(), key=lambda kv: -kv[1])[:top_logprobs] if top_logprobs else []
            tokens.append(TokenLogprob(token, logprob, top))
        return ScoredText(tokens=tokens, usage=_usage(response.usage))

    def close(self) -> None:
        if self._client is not None:
            LoopThread.get().run(self._client.close())
            self._client = None


def _usage(usage: Any) -> Usage:
    if usage is None:
        return Usage()
    return Usage(prompt_tokens=usage.prompt_tokens or 0, completion_tokens=usage.completion_tokens or 0)


def _describe(error: Exception) -> str:
    status = getattr(error, "status_code", None)
    kind = type(error).__name__
    detail = str(error).splitlines()[0] if str(error) else kind
    return f"{kind} (HTTP {status}): {detail}" if status else f"{kind}: {detail}"


async def gather_or_cancel(coroutines: list[Coroutine[Any, Any, T]]) -> list[T]:
    """All results in order; on the first failure the other requests are cancelled, not left running
    on the shared loop after their caller has given up."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
