"""The router proxy over real HTTP: client -> proxy -> the routed arm's model behind `alloy serve`."""

import numpy as np
import openai
import pytest
from fastapi import Request

from llm_alloy.models.openai_backend import OpenAIBackend, RetryPolicy
from llm_alloy.models.server import create_app, free_port, serve_in_thread
from llm_alloy.models.types import GenerationParams
from llm_alloy.route.serve import RouterProxyError, create_router_app, route_one

ARMS = ["tiny-a", "tiny-b_think"]


def keyword_embed(texts):
    """A one-feature 'embedding': does the text ask for code?"""
    return np.array([[1.0 if "python" in t.lower() else 0.0] for t in texts], dtype=np.float32)


class KeywordRouter:
    """Routes code questions to the second arm and everything else to the first, from the embedding."""

    arms = ARMS

    def __init__(self):
        self.seen = []

    def route(self, X):
        self.seen.append(np.array(X))
        return (X[:, 0] > 0.5).astype(int)


def recording(app):
    """Keeps the body of every chat request the app receives."""
    bodies = []

    @app.middleware("http")
    async def record(request: Request, call_next):
        if request.url.path.endswith("/chat/completions"):
            bodies.append(await request.json())
        return await call_next(request)

    return bodies


@pytest.fixture(scope="module")
def proxy(tiny_backend):
    models = {"tiny-a": create_app(tiny_backend, served_name="tiny-a"), "tiny-b": create_app(tiny_backend, served_name="tiny-b")}
    received = {name: recording(app) for name, app in models.items()}
    with serve_in_thread(models["tiny-a"]) as url_a, serve_in_thread(models["tiny-b"]) as url_b:
        backends = {"tiny-a": OpenAIBackend("tiny-a", url_a, "tiny-a"), "tiny-b": OpenAIBackend("tiny-b", url_b, "tiny-b")}
        router = KeywordRouter()
        with serve_in_thread(create_router_app(router, backends, keyword_embed)) as url:
            yield url, received, router, backends


def ask(url, model, content, **extra):
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}], max_tokens=6, temperature=0, **extra
    )


def test_models_lists_router_and_arms(proxy):
    url, *_ = proxy
    listed = openai.OpenAI(base_url=url, api_key="none").models.list()
    assert [m.id for m in listed.data] == ["router", "tiny-a", "tiny-b_think"]


def test_requests_reach_the_routed_arm(proxy):
    url, received, router, backends = proxy
    before = {name: len(bodies) for name, bodies in received.items()}

    raw = ask(url, "router", "Write a Python function that adds two numbers.")
    reply = raw.parse()
    assert raw.headers["x-alloy-arm"] == "tiny-b_think" and raw.headers["x-alloy-model"] == "tiny-b"
    assert reply.model == "tiny-b_think"
    assert len(received["tiny-b"]) == before["tiny-b"] + 1 and len(received["tiny-a"]) == before["tiny-a"]
    sent = received["tiny-b"][-1]
    assert sent["model"] == "tiny-b" and sent["max_tokens"] == 6
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["messages"][-1]["content"] == "Write a Python function that adds two numbers.\n\nLet's think step by step."
    # The router saw the embedding of the user's text (not of the rendered prompt).
    assert router.seen[-1].tolist() == [[1.0]]
    # The answer is the routed model's own: the same as asking it directly.
    direct = backends["tiny-b"].generate([sent["messages"]], GenerationParams(max_new_tokens=6))[0]
    assert reply.choices[0].message.content == direct.text
    assert reply.usage.prompt_tokens == direct.usage.prompt_tokens and reply.usage.completion_tokens > 0
    assert reply.choices[0].finish_reason in ("stop", "length")

    raw = ask(url, "router", "What is the capital of France?")
    assert raw.headers["x-alloy-arm"] == "tiny-a" and raw.parse().model == "tiny-a"
    assert received["tiny-a"][-1]["messages"][-1]["content"] == "What is the capital of France?"
    # One proxied request each, plus the direct comparison call to tiny-b.
    assert len(received["tiny-a"]) == before["tiny-a"] + 1 and len(received["tiny-b"]) == before["tiny-b"] + 2


def test_naming_an_arm_skips_routing(proxy):
    url, received, router, _ = proxy
    routed = len(router.seen)
    raw = ask(url, "tiny-b_think", "What is the capital of France?")
    assert raw.headers["x-alloy-arm"] == "tiny-b_think" and len(router.seen) == routed
    assert received["tiny-b"][-1]["messages"][-1]["content"].endswith("Let's think step by step.")


def test_bad_requests_get_openai_errors(proxy):
    url, *_ = proxy
    with pytest.raises(openai.NotFoundError, match="'gpt-4' is not served here"):
        ask(url, "gpt-4", "hi")
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="no user message"):
        client.chat.completions.create(model="router", messages=[{"role": "system", "content": "x"}])


def test_unreachable_arm_is_a_502(tiny_backend):
    dead = OpenAIBackend("tiny-a", f"http://127.0.0.1:{free_port()}/v1", "tiny-a", retry=RetryPolicy(max_retries=0))
    alive = create_app(tiny_backend, served_name="tiny-b")
    with serve_in_thread(alive) as url_b:
        backends = {"tiny-a": dead, "tiny-b": OpenAIBackend("tiny-b", url_b, "tiny-b")}
        with serve_in_thread(create_router_app(KeywordRouter(), backends, keyword_embed)) as url:
            with pytest.raises(openai.APIStatusError, match="arm 'tiny-a': tiny-a: .* failed after 1 attempts") as error:
                ask(url, "router", "capital of France?")
            assert error.value.status_code == 502
            assert ask(url, "router", "python please").headers["x-alloy-arm"] == "tiny-b_think"


def test_every_arm_needs_a_backend(tiny_backend):
    with pytest.raises(RouterProxyError, match="no backend for the model\\(s\\) tiny-b"):
        create_router_app(KeywordRouter(), {"tiny-a": OpenAIBackend("tiny-a", "http://127.0.0.1:1/v1", "tiny-a")}, keyword_embed)


def test_route_one():
    assert route_one(KeywordRouter(), keyword_embed, "python?") == "tiny-b_think"
    assert route_one(KeywordRouter(), keyword_embed, "hello") == "tiny-a"


def test_saved_router_served_from_its_directory(proxy, tmp_path):
    """A real kNN router on MiniLM embeddings, saved and served by `router_app_from_dir`."""
    from llm_alloy.logs.embeddings import embed_texts
    from llm_alloy.route.base import make_router
    from llm_alloy.route.serve import router_app_from_dir

    _, received, _, backends = proxy
    coding = ["Write a Python function that reverses a list.", "Implement binary search in Python.", "Write Python code to parse a CSV file."]
    trivia = ["What is the capital of Italy?", "Who painted the Mona Lisa?", "How tall is Mount Everest?"]
    rewards = np.array([[0.0, 1.0]] * 3 + [[1.0, 0.0]] * 3)
    router = make_router("knn", ARMS, {"k": 2})
    router.fit(embed_texts(coding + trivia), rewards)
    router.save(tmp_path / "router")
    (tmp_path / "models.yaml").write_text(
        "models:\n"
        + "".join(f"  - {{name: {name}, backend: openai, base_url: '{b.base_url}'}}\n" for name, b in backends.items())
        + "queries: ignored.jsonl\n"  # a collect config works: only its models are read
    )
    app = router_app_from_dir(tmp_path / "router", tmp_path / "models.yaml")
    with serve_in_thread(app) as url:
        before = len(received["tiny-b"])
        assert ask(url, "router", "Write a Python function that sorts a dictionary by value.").headers["x-alloy-arm"] == "tiny-b_think"
        assert len(received["tiny-b"]) == before + 1
        assert ask(url, "router", "What is the capital of Spain?").headers["x-alloy-arm"] == "tiny-a"
    (tmp_path / "few.yaml").write_text("models:\n  - {name: tiny-a, backend: openai, base_url: 'http://127.0.0.1:1/v1'}\n")
    with pytest.raises(RouterProxyError, match="few.yaml: the router's arms need unknown model 'tiny-b'"):
        router_app_from_dir(tmp_path / "router", tmp_path / "few.yaml")
