"""`alloy route serve`: an OpenAI-compatible endpoint that forwards each request to the routed arm.

A request for the model "router" is routed: the last user message is embedded, the router picks an
arm (a model and a prompt style), the style is rendered onto that message, and the arm's model
answers through its backend. The reply names the arm in its `model` field and in the `x-alloy-arm`
header. A request naming an arm itself skips routing, so clients can compare against a fixed arm.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse

from llm_alloy.config import ConfigError, parse_config
from llm_alloy.logs.schema import parse_arm, render_prompt
from llm_alloy.models.base import Backend
from llm_alloy.models.server import ChatRequest, chat_completion_body, openai_error
from llm_alloy.models.spec import ModelsSection
from llm_alloy.models.types import ModelError

Embed = Callable[[Sequence[str]], np.ndarray]


class RoutingModel(Protocol):
    """What the proxy needs of a router (`llm_alloy.route.base.Router` provides it)."""

    arms: list[str]

    def route(self, X: np.ndarray) -> np.ndarray: ...


class RouterProxyError(ValueError):
    """A proxy that cannot be built (an arm whose model has no backend, a bad models config)."""


def create_router_app(
    router: RoutingModel,
    backends: dict[str, Backend],
    embed: Embed,
    served_name: str = "router",
    default_max_tokens: int = 512,
) -> FastAPI:
    """`backends` maps model names (the model part of each arm) to their backends."""
    missing = sorted({parse_arm(arm)[0] for arm in router.arms} - set(backends))
    if missing:
        raise RouterProxyError(f"no backend for the model(s) {', '.join(missing)} of the router's arms")
    if served_name in router.arms:
        raise RouterProxyError(f"the served name '{served_name}' is also an arm's name")
    app = FastAPI(title=f"llm-alloy router over {len(router.arms)} arms")

    app.add_exception_handler(HTTPException, openai_error)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": 0, "owned_by": "llm-alloy"} for name in [served_name, *router.arms]],
        }

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: ChatRequest) -> JSONResponse:
        if request.model != served_name and request.model not in router.arms:
            raise HTTPException(404, f"model '{request.model}' is not served here (serving '{served_name}' and its arms)")
        if request.logprobs:
            raise HTTPException(400, "logprobs are not supported through the router")
        last_user = next((i for i in range(len(request.messages) - 1, -1, -1) if request.messages[i].role == "user"), None)
        if last_user is None:
            raise HTTPException(400, "the conversation has no user message to route on")
        query = request.messages[last_user].content or ""
        arm = request.model if request.model in router.arms else await asyncio.to_thread(route_one, router, embed, query)
        model, style = parse_arm(arm)
        conversation = [{"role": m.role, "content": m.content or ""} for m in request.messages]
        conversation[last_user]["content"] = render_prompt(query, style)
        if request.max_completion_tokens is not None:
            request.max_tokens = request.max_completion_tokens
        try:
            (completion,) = await backends[model].agenerate([conversation], request.params(default_max_tokens, 0))
        except ModelError as error:
            raise HTTPException(502, f"arm '{arm}': {error}") from None
        body = chat_completion_body(arm, completion)
        return JSONResponse(body, headers={"x-alloy-arm": arm, "x-alloy-model": model})

    return app


def route_one(router: RoutingModel, embed: Embed, query: str) -> str:
    """The arm the router picks for one query."""
    return router.arms[int(router.route(embed([query]))[0])]


def router_app_from_dir(router_dir: str | Path, models: ModelsSection | str | Path, served_name: str = "router") -> FastAPI:
    """The proxy for a saved router: its arms' models are built from `models` (a `ModelsSection`, or a
    YAML file with a `models:` list, such as the collect config the logs came from); queries are
    embedded with the encoder the router was trained on."""
    from llm_alloy.logs.embeddings import embed_texts
    from llm_alloy.models.factory import build_backend
    from llm_alloy.route.base import load_router

    router = load_router(router_dir)
    source = "models" if isinstance(models, ModelsSection) else str(models)
    section = models if isinstance(models, ModelsSection) else _models_section(Path(models))
    try:
        specs = [section.model(name) for name in sorted({parse_arm(arm)[0] for arm in router.arms})]
    except ValueError as error:
        raise RouterProxyError(f"{source}: the router's arms need {error}") from None
    backends = {spec.name: build_backend(spec) for spec in specs}
    for backend in backends.values():
        load = getattr(backend, "load", None)
        if load is not None:
            load()  # in-process weights load before the first request, not during it
    return create_router_app(router, backends, lambda texts: embed_texts(texts, model=router.embedding_model), served_name)


def _models_section(path: Path) -> ModelsSection:
    """The `models:` list of any method config (the other settings are not the proxy's business)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(data, dict) or "models" not in data:
        raise ConfigError(f"{path}: expected a mapping with a 'models:' list")
    return parse_config({"models": data["models"]}, ModelsSection, str(path))


def serve_router(router_dir: str | Path, config: ModelsSection | str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(router_app_from_dir(router_dir, config), host=host, port=port, log_level="info")
