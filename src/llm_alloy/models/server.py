"""`alloy serve`: an OpenAI-compatible HTTP server over a local transformers model.

Concurrent requests with the same sampling settings are gathered into one batched forward pass
(continuous arrivals, a short gathering window), so a server under load generates in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from llm_alloy.models.local import LocalBackend
from llm_alloy.models.types import Completion, GenerationParams, TokenLogprob


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | None = ""


class _SamplingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)
    stream: Literal[False] = False

    def params(self, default_max_tokens: int, top_logprobs: int) -> GenerationParams:
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return GenerationParams(
            max_new_tokens=max(1, self.max_tokens if self.max_tokens is not None else default_max_tokens),
            temperature=self.temperature,
            top_p=self.top_p,
            stop=tuple(stop),
            top_logprobs=top_logprobs,
            seed=self.seed or 0,
        )


class ChatRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=0)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    return_tokens_as_token_ids: bool = Field(
        False, description="vLLM's extension: tokens as 'token_id:N', since decoded strings of distinct ids can collide"
    )


@dataclass
class _Job:
    kind: str  # "chat" (conversation) or "text" (raw prompt)
    payload: Any
    params: GenerationParams
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Gathers concurrent generation requests with equal settings into batches of the backend's size."""

    def __init__(self, backend: LocalBackend, window_s: float = 0.005) -> None:
        self.backend = backend
        self.window_s = window_s
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.held: list[_Job] = []
        self.task: asyncio.Task | None = None

    async def submit(self, kind: str, payload: Any, params: GenerationParams) -> Completion:
        if self.task is None:
            self.task = asyncio.create_task(self._work())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(kind, payload, params, future))
        return await future

    async def _next_batch(self) -> list[_Job]:
        first = self.held.pop(0) if self.held else await self.queue.get()
        batch, others = [first], []
        for job in self.held:
            (batch if self._fits(first, job, batch) else others).append(job)
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.backend.batch_size:
            try:
                job = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            (batch if self._fits(first, job, batch) else others).append(job)
        self.held = others
        return batch

    def _fits(self, first: _Job, job: _Job, batch: list[_Job]) -> bool:
        return job.kind == first.kind and job.params == first.params and len(batch) < self.backend.batch_size

    async def _work(self) -> None:
        while True:
            batch = await self._next_batch()
            generate: Callable = self.backend.generate if batch[0].kind == "chat" else self.backend.generate_text
            try:
                results = await asyncio.to_thread(generate, [job.payload for job in batch], batch[0].params)
            except Exception as error:  # a failed batch fails its requests, not the server
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            for job, result in zip(batch, results):
                if not job.future.done():
                    job.future.set_result(result)


async def openai_error(_request, error: HTTPException) -> JSONResponse:
    """HTTP errors in the OpenAI error shape, which clients (the openai package) parse."""
    return JSONResponse(
        {"error": {"message": error.detail, "type": "invalid_request_error", "code": error.status_code}},
        status_code=error.status_code,
    )


def create_app(backend: LocalBackend, served_name: str | None = None, default_max_tokens: int = 256) -> FastAPI:
    served = served_name or backend.name
    app = FastAPI(title=f"llm-alloy serving {served}")
    batcher = Batcher(backend)

    def check_model(name: str) -> None:
        if name != served:
            raise HTTPException(404, f"model '{name}' is not served here (this server serves '{served}')")

    app.add_exception_handler(HTTPException, openai_error)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": served, "object": "model", "created": 0, "owned_by": "llm-alloy"}]}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        check_model(request.model)
        top = (request.top_logprobs or 1) if request.logprobs else 0
        if request.max_completion_tokens is not None:
            request.max_tokens = request.max_completion_tokens
        params = request.params(default_max_tokens, top)
        conversation = [{"role": m.role, "content": m.content or ""} for m in request.messages]
        completion = await batcher.submit("chat", conversation, params)
        logprobs = None
        if request.logprobs and completion.logprobs is not None:
            logprobs = {"content": [_chat_token(t, request.top_logprobs or 0) for t in completion.logprobs]}
        return chat_completion_body(served, completion, logprobs)

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest) -> dict[str, Any]:
        check_model(request.model)
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        # logprobs=0 still asks for the chosen token's own logprob.
        k = 0 if request.logprobs is None else max(request.logprobs, 1)
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for index, prompt in enumerate(prompts):
            generated = None
            if request.max_tokens != 0:
                generated = await batcher.submit("text", prompt, request.params(16, k))
                completion_tokens += generated.usage.completion_tokens
            echoed = None
            if request.echo:
                echoed = (await asyncio.to_thread(backend.score_text, [prompt], k))[0]
            prompt_tokens += len(echoed.offsets) if echoed else (generated.usage.prompt_tokens if generated else 0)
            choices.append(
                _completion_choice(index, prompt, echoed, generated, request.logprobs, request.return_tokens_as_token_ids)
            )
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": served,
            "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens),
        }

    return app


def chat_completion_body(model: str, completion: Completion, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """An OpenAI chat.completion response for one completion."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": completion.finish_reason,
                "logprobs": logprobs,
            }
        ],
        "usage": _usage(completion.usage.prompt_tokens, completion.usage.completion_tokens),
    }


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def _chat_token(token: TokenLogprob, k: int) -> dict[str, Any]:
    return {
        "token": token.token,
        "logprob": token.logprob,
        "bytes": list(token.token.encode()),
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in token.top[:k]],
    }


def _completion_choice(
    index: int, prompt: str, echoed, generated: Completion | None, logprobs: int | None, as_ids: bool = False
) -> dict[str, Any]:
    text = (prompt if echoed else "") + (generated.text if generated else "")
    choice: dict[str, Any] = {
        "index": index,
        "text": text,
        "finish_reason": generated.finish_reason if generated else "length",
        "logprobs": None,
    }
    if logprobs is None:
        return choice

    def alternatives(token: TokenLogprob) -> dict[str, float]:
        if as_ids and token.top_ids is not None:
            return {f"token_id:{i}": lp for i, (_, lp) in zip(token.top_ids[:logprobs], token.top[:logprobs])}
        return dict(token.top[:logprobs])

    def name(token: TokenLogprob | None, text: str) -> str:
        return f"token_id:{token.token_id}" if as_ids and token is not None and token.token_id is not None else text

    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    if echoed:
        for scored, (start, end) in zip(echoed.tokens, echoed.offsets):
            tokens.append(name(scored, prompt[start:end]))
            token_logprobs.append(None if scored is None else scored.logprob)
            top_logprobs.append(None if scored is None else alternatives(scored))
            offsets.append(start)
    position = len(prompt) if echoed else 0
    for token in (generated.logprobs or []) if generated else []:
        tokens.append(name(token, token.token))
        token_logprobs.append(token.logprob)
        top_logprobs.append(alternatives(token))
        offsets.append(position)
        position += len(token.token)
    choice["logprobs"] = {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": offsets}
    return choice


def serve(backend: LocalBackend, host: str = "127.0.0.1", port: int = 8000, served_name: str | None = None) -> None:
    import uvicorn

    backend.load()
    uvicorn.run(create_app(backend, served_name), host=host, port=port, log_level="info")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int | None = None) -> Iterator[str]:
    """Run an app with uvicorn in a background thread (tests, demos); yields its /v1 base URL."""
    import uvicorn

    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="alloy-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the server on {host}:{port} did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
