"""The OpenAI-compatible backend against `alloy serve`'s app, a real HTTP server on 127.0.0.1."""

import asyncio

import pytest

from llm_alloy.models.cache import CachedBackend, ResponseCache
from llm_alloy.models.ledger import Ledger
from llm_alloy.models.openai_backend import OpenAIBackend, RetryPolicy
from llm_alloy.models.server import create_app, free_port, serve_in_thread
from llm_alloy.models.spec import Price
from llm_alloy.models.types import GenerationParams, ModelError

CHATS = [[{"role": "user", "content": f"Question number {i}: what comes after {i}?"}] for i in range(12)]
FAST_RETRY = RetryPolicy(max_retries=6, backoff_base_s=0.01, backoff_max_s=0.05)


class Traffic:
    """Counts requests and in-flight concurrency; can fail or stall scheduled requests."""

    def __init__(self, app, delay_s=0.0, faults=()):
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.faults = list(faults)  # per arriving request: None, 429, 500 or "stall"

        @app.middleware("http")
        async def watch(request, call_next):
            from fastapi.responses import JSONResponse

            self.requests += 1
            fault = self.faults.pop(0) if self.faults else None
            if fault == "stall":
                await asyncio.sleep(3)
            elif fault is not None:
                return JSONResponse({"error": {"message": "injected"}}, status_code=fault)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if delay_s:
                    await asyncio.sleep(delay_s)
                return await call_next(request)
            finally:
                self.in_flight -= 1


@pytest.fixture(scope="module")
def served(tiny_backend):
    app = create_app(tiny_backend, served_name="tiny")
    traffic = Traffic(app)
    with serve_in_thread(app) as url:
        yield url, traffic


def test_models_endpoint_and_generation_agree_with_local(served, tiny_backend):
    url, _ = served
    import openai

    listed = openai.OpenAI(base_url=url, api_key="x").models.list()
    assert [m.id for m in listed.data] == ["tiny"]
    remote = OpenAIBackend("tiny", url, "tiny")
    params = GenerationParams(max_new_tokens=8, top_logprobs=3)
    over_http = remote.generate([CHATS[0]], params)[0]
    in_process = tiny_backend.generate([CHATS[0]], params)[0]
    assert over_http.text == in_process.text
    assert over_http.usage == in_process.usage
    assert len(over_http.logprobs) == len(in_process.logprobs)
    for a, b in zip(over_http.logprobs, in_process.logprobs):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert [t for t, _ in a.top] == [t for t, _ in b.top]
        assert [lp for _, lp in a.top] == pytest.approx([lp for _, lp in b.top], abs=1e-4)


def test_scoring_through_echo_agrees_with_local(served, tiny_backend):
    url, _ = served
    remote = OpenAIBackend("tiny", url, "tiny")
    prompts, continuations = ["The capital of France is", "1, 2, 3,"], [" Paris.", " 4, 5"]
    over_http = remote.score(prompts, continuations, top_logprobs=2)
    in_process = tiny_backend.score(prompts, continuations, top_logprobs=2)
    for a, b in zip(over_http, in_process):
        assert [t.logprob for t in a.tokens] == pytest.approx([t.logprob for t in b.tokens], abs=1e-4)
        assert [len(t.top) for t in a.tokens] == [2] * len(b.tokens)


def test_concurrency_bound_is_honoured(tiny_backend):
    app = create_app(tiny_backend, served_name="tiny")
    traffic = Traffic(app, delay_s=0.1)
    with serve_in_thread(app) as url:
        remote = OpenAIBackend("tiny", url, "tiny", max_concurrency=3)
        completions = remote.generate(CHATS, GenerationParams(max_new_tokens=4))
    assert len(completions) == len(CHATS)
    assert traffic.requests == len(CHATS)
    assert traffic.max_in_flight == 3


def test_rate_limits_errors_and_stalls_are_retried(tiny_backend):
    app = create_app(tiny_backend, served_name="tiny")
    traffic = Traffic(app, faults=[429, 500, "stall", 503, 429])
    with serve_in_thread(app) as url:
        remote = OpenAIBackend("tiny", url, "tiny", max_concurrency=1, timeout_s=1.0, retry=FAST_RETRY)
        completions = remote.generate(CHATS[:3], GenerationParams(max_new_tokens=4))
    assert all(c.text for c in completions)
    assert remote.retries == 5
    assert traffic.requests == 3 + 5


def test_a_server_that_is_down_gives_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}/v1"
    remote = OpenAIBackend("down", url, "tiny", retry=RetryPolicy(max_retries=2, backoff_base_s=0.01))
    with pytest.raises(ModelError) as error:
        remote.generate(CHATS[:2], GenerationParams(max_new_tokens=4))
    message = str(error.value)
    assert "\n" not in message
    assert url in message and "3 attempts" in message and "APIConnectionError" in message


def test_a_refused_request_is_not_retried(served):
    url, traffic = served
    remote = OpenAIBackend("tiny", url, "no-such-model", retry=FAST_RETRY)
    before = traffic.requests
    with pytest.raises(ModelError, match="refused the request.*404.*not served here"):
        remote.generate(CHATS[:1], GenerationParams(max_new_tokens=4))
    assert traffic.requests == before + 1


def test_second_identical_run_makes_no_request_and_costs_nothing(served, tmp_path):
    url, traffic = served
    price = Price(input_per_mtok=1000.0, output_per_mtok=2000.0)

    def run(ledger):
        cache = ResponseCache(tmp_path / "cache.sqlite")
        backend = CachedBackend(OpenAIBackend("tiny", url, "tiny"), cache)
        params = GenerationParams(max_new_tokens=6, temperature=0.9, seed=3)
        stored = []
        completions = backend.generate(CHATS[:5], params, sample_index=0, on_result=lambda i, c: stored.append(i))
        completions += backend.generate(CHATS[:5], params, sample_index=1)
        ledger.record("tiny", "source", completions, price)
        cache.close()
        return completions, stored

    first_ledger, second_ledger = Ledger(), Ledger()
    before = traffic.requests
    first, stored = run(first_ledger)
    assert traffic.requests - before == 10  # two sample indices are two distinct requests each
    assert sorted(stored) == list(range(5))
    after_first = traffic.requests
    second, stored_again = run(second_ledger)
    assert traffic.requests == after_first
    assert stored_again == []
    assert [c.text for c in first] == [c.text for c in second]
    assert all(c.cached for c in second) and not any(c.cached for c in first)

    entry = first_ledger.rows()[0]
    assert entry.calls == 10 and entry.cached_calls == 0
    assert entry.prompt_tokens == sum(c.usage.prompt_tokens for c in first) > 0
    assert entry.cost_usd == pytest.approx((entry.prompt_tokens * 1000 + entry.completion_tokens * 2000) / 1e6)
    cached_entry = second_ledger.rows()[0]
    assert cached_entry.calls == 0 and cached_entry.cached_calls == 10 and cached_entry.cost_usd == 0


def test_agenerate_runs_inside_a_running_event_loop(served):
    url, _ = served
    remote = OpenAIBackend("tiny", url, "tiny")

    async def main():
        return await remote.agenerate(CHATS[:3], GenerationParams(max_new_tokens=4))

    assert len(asyncio.run(main())) == 3


@pytest.mark.slow
def test_smollm_behind_the_server_matches_local(smollm_backend):
    app = create_app(smollm_backend, served_name="smollm2")
    with serve_in_thread(app) as url:
        remote = OpenAIBackend("smollm2", url, "smollm2")
        params = GenerationParams(max_new_tokens=12, top_logprobs=5)
        chat = [[{"role": "user", "content": "What is the capital of France?"}]]
        over_http = remote.generate(chat, params)[0]
    in_process = smollm_backend.generate(chat, params)[0]
    assert over_http.text == in_process.text and "Paris" in over_http.text
    for a, b in zip(over_http.logprobs, in_process.logprobs):
        assert [lp for _, lp in a.top] == pytest.approx([lp for _, lp in b.top], abs=1e-3)
