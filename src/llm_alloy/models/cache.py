"""A sqlite response cache that sits in front of any backend (a decorator, not a backend feature).

The key holds the backend identity, the model, the full request (messages and sampling parameters)
and the sample index, so sampled outputs are cached too and a resumed run never repeats a finished
call. Each response is written as soon as it arrives, so a killed run keeps everything it was given.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from llm_alloy.models.base import Backend
from llm_alloy.models.types import (
    Completion,
    Conversation,
    GenerationParams,
    OnResult,
    SampleIndex,
    ScoredText,
    sample_indices,
)


class ResponseCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS responses ("
                "key TEXT PRIMARY KEY, backend TEXT, model TEXT, response TEXT, created REAL)"
            )
        except sqlite3.DatabaseError as error:
            raise ValueError(f"{self.path}: not a usable response cache ({error})") from None

    @staticmethod
    def key(identity: str, model_id: str, request: dict[str, Any], sample_index: int) -> str:
        payload = json.dumps(
            {"backend": identity, "model": model_id, "request": request, "sample": sample_index},
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, identity: str, model_id: str, response: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                (key, identity, model_id, json.dumps(response, ensure_ascii=False), time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CachedBackend(Backend):
    """Answers from the cache where it can and asks the wrapped backend only for the rest."""

    def __init__(self, inner: Backend, cache: ResponseCache) -> None:
        self.inner = inner
        self.cache = cache
        self.name = inner.name
        self.model_id = inner.model_id
        self.computes_in_process = inner.computes_in_process
        self.hits = 0
        self.misses = 0

    @property
    def identity(self) -> str:
        return self.inner.identity

    def _plan(self, conversations: list[Conversation], params: GenerationParams, sample_index: SampleIndex):
        """Cache keys, the completions found, and the positions still to ask the wrapped backend for."""
        indices = sample_indices(sample_index, len(conversations))
        settings = params.model_dump(mode="json")
        keys = [
            self.cache.key(self.identity, self.model_id, {"kind": "chat", "input": c, "params": settings}, i)
            for c, i in zip(conversations, indices)
        ]
        found: dict[int, Completion] = {}
        for position, key in enumerate(keys):
            cached = self.cache.get(key)
            if cached is not None:
                found[position] = Completion.from_dict(cached, cached=True)
        self.hits += len(found)
        self.misses += len(keys) - len(found)
        missing = [p for p in range(len(keys)) if p not in found]
        request = ([conversations[p] for p in missing], params, [indices[p] for p in missing])
        return keys, found, missing, request

    def _storer(self, keys: list[str], missing: list[int], on_result: OnResult | None) -> OnResult:
        def store(position: int, completion: Completion) -> None:
            index = missing[position]
            self.cache.put(keys[index], self.identity, self.model_id, completion.to_dict())
            if on_result:
                on_result(index, completion)

        return store

    def generate(
        self,
        conversations: list[Conversation],
        params: GenerationParams,
        sample_index: SampleIndex = 0,
        on_result: OnResult | None = None,
    ) -> list[Completion]:
        keys, found, missing, request = self._plan(conversations, params, sample_index)
        if missing:
            found.update(zip(missing, self.inner.generate(*request, self._storer(keys, missing, on_result))))
        return [found[i] for i in range(len(conversations))]

    async def agenerate(
        self,
        conversations: list[Conversation],
        params: GenerationParams,
        sample_index: SampleIndex = 0,
        on_result: OnResult | None = None,
    ) -> list[Completion]:
        keys, found, missing, request = self._plan(conversations, params, sample_index)
        if missing:
            found.update(zip(missing, await self.inner.agenerate(*request, self._storer(keys, missing, on_result))))
        return [found[i] for i in range(len(conversations))]

    def score(self, prompts: list[str], continuations: list[str], top_logprobs: int = 0) -> list[ScoredText]:
        return self.inner.score(prompts, continuations, top_logprobs)

    def close(self) -> None:
        self.inner.close()
