"""From a declared model to a ready backend, behind the response cache when one is given."""

from __future__ import annotations

from llm_alloy.models.base import Backend
from llm_alloy.models.cache import CachedBackend, ResponseCache
from llm_alloy.models.spec import ModelSpec


def build_backend(spec: ModelSpec, cache: ResponseCache | None = None) -> Backend:
    backend: Backend
    if spec.backend == "local":
        from llm_alloy.models.local import LocalBackend

        backend = LocalBackend(spec.name, spec.path or spec.name, spec.device, spec.dtype, spec.batch_size)
    else:
        from llm_alloy.models.openai_backend import OpenAIBackend, RetryPolicy

        backend = OpenAIBackend(
            spec.name,
            spec.base_url or "",
            spec.model or spec.name,
            spec.api_key_env,
            spec.max_concurrency,
            spec.timeout_s,
            RetryPolicy(max_retries=spec.max_retries, backoff_base_s=spec.backoff_base_s),
        )
    return backend if cache is None else CachedBackend(backend, cache)
