"""`collect_logs` against real OpenAI-compatible servers on 127.0.0.1: the packaged tiny-llama behind
`alloy serve`'s app, and scripted apps (a model that knows the answers, a judge) written here."""

import json
import re
import time
from pathlib import Path

import pytest
from fastapi import FastAPI, Request

from llm_alloy.config import ConfigError, parse_config
from llm_alloy.logs.collect import (
    CollectConfig,
    QueryFileError,
    collect_logs,
    demo_collect_config,
    load_collect_config,
    parse_judge_score,
    read_queries,
)
from llm_alloy.logs.io import read_logs
from llm_alloy.models.server import create_app, free_port, serve_in_thread
from llm_alloy.models.spec import Price
from llm_alloy.models.types import ModelError

DEMO_QUERIES = Path(demo_collect_config().queries)
PICKED = ["arith-2", "mc-1", "fact-4", "fact-1", "exact-1", "code-1"]
PRICES = {"tiny-a": Price(input_per_mtok=0.2, output_per_mtok=0.4), "tiny-b": Price(input_per_mtok=2.0, output_per_mtok=6.0)}


def counting(app: FastAPI) -> dict:
    """Counts the chat requests an app receives."""
    seen = {"chat": 0}

    @app.middleware("http")
    async def count(request: Request, call_next):
        if request.url.path.endswith("/chat/completions"):
            seen["chat"] += 1
        return await call_next(request)

    return seen


def scripted_app(served: str, reply) -> FastAPI:
    """An OpenAI-compatible chat endpoint whose answer is `reply(prompt)`."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(body: dict) -> dict:
        prompt = body["messages"][-1]["content"]
        text = reply(prompt)
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": served,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()), "total_tokens": 0},
        }

    return app


def write_queries(path: Path, ids=PICKED) -> Path:
    lines = [line for line in DEMO_QUERIES.read_text().splitlines() if json.loads(line)["query_id"] in ids]
    assert len(lines) == len(ids)
    path.write_text("\n".join(lines) + "\n")
    return path


def model(name: str, url: str, **extra) -> dict:
    return {"name": name, "backend": "openai", "base_url": url, "max_retries": 0, "timeout_s": 60, **extra}


@pytest.fixture(scope="module")
def tiny_servers(tiny_backend):
    """Two served models (the same packaged weights under two names and prices), each counted."""
    apps = {name: create_app(tiny_backend, served_name=name) for name in PRICES}
    counts = {name: counting(app) for name, app in apps.items()}
    with serve_in_thread(apps["tiny-a"]) as url_a, serve_in_thread(apps["tiny-b"]) as url_b:
        yield {"tiny-a": url_a, "tiny-b": url_b}, counts


def tiny_config(urls: dict, queries: Path, **overrides) -> CollectConfig:
    data = {
        "models": [model(name, url, price=PRICES[name].model_dump()) for name, url in urls.items()],
        "queries": str(queries),
        "generation": {"max_new_tokens": 12},
        **overrides,
    }
    return parse_config(data, CollectConfig)


def requests(counts: dict) -> int:
    return sum(c["chat"] for c in counts.values())


def test_collect_two_models_two_styles_then_rerun_is_free(tiny_servers, tmp_path):
    urls, counts = tiny_servers
    config = tiny_config(urls, write_queries(tmp_path / "queries.jsonl"))
    before = requests(counts)
    summary = collect_logs(config, tmp_path / "out", progress=False)
    records = read_logs(tmp_path / "out" / "logs.jsonl")

    arms = {"tiny-a", "tiny-a_think", "tiny-b", "tiny-b_think"}
    assert {(r.query_id, r.arm) for r in records} == {(q, a) for q in PICKED for a in arms}
    assert len(records) == 24 and summary.written == 24 and summary.model_calls == 24
    assert requests(counts) - before == 24
    for r in records:
        assert r.input_tokens > 0 and r.output_tokens > 0
        assert r.latency_s is not None and r.latency_s > 0
        assert r.finish_reason in ("stop", "length")
        assert r.cost == pytest.approx(PRICES[r.model].cost(r.input_tokens, r.output_tokens))
        assert r.cost > 0
        # A random 1M-parameter model answers garbage: scored, and wrong.
        assert r.performance == 0.0
        assert r.prompt.startswith(r.query) and (r.prompt != r.query) == (r.prompt_style == "think")
        assert r.extra["price"] == PRICES[r.model].model_dump()
        assert r.served_model == r.model
    code_rows = [r for r in records if r.metric == "code"]
    assert code_rows and all(r.extra["tests"] and r.score_details["reason"] == "no code" for r in code_rows)
    assert summary.cost_usd == pytest.approx(sum(r.cost for r in records))
    assert summary.arms["tiny-b"].rows == 6 and summary.arms["tiny-b"].mean_performance == 0.0
    ledger = {(row["model"], row["role"]): row for row in json.loads((tmp_path / "out" / "ledger.json").read_text())}
    assert ledger[("tiny-a", "collect")]["calls"] == 12
    assert ledger[("tiny-b", "collect")]["completion_tokens"] == sum(r.output_tokens for r in records if r.model == "tiny-b")

    # A rerun finds every cell logged: no request, no new row.
    again = collect_logs(config, tmp_path / "out", progress=False)
    assert requests(counts) - before == 24
    assert again.written == 0 and again.already_logged == 24 and again.cost_usd == 0
    assert len(read_logs(tmp_path / "out" / "logs.jsonl")) == 24

    # With the log gone, the cache still answers every call: the same rows, no request.
    (tmp_path / "out" / "logs.jsonl").unlink()
    rebuilt = collect_logs(config, tmp_path / "out", progress=False)
    assert requests(counts) - before == 24 and rebuilt.cached_calls == 24 and rebuilt.model_calls == 0
    replayed = read_logs(tmp_path / "out" / "logs.jsonl")
    original = {(r.query_id, r.arm): r for r in records}
    for r in replayed:
        assert r.response == original[(r.query_id, r.arm)].response
        assert r.cost == original[(r.query_id, r.arm)].cost
        assert r.latency_s is None  # not measured: nothing was waited for


def test_killed_run_resumes_to_the_same_set(tiny_servers, tmp_path):
    urls, counts = tiny_servers
    config = tiny_config(urls, write_queries(tmp_path / "queries.jsonl"), samples=2)
    logs = tmp_path / "out" / "logs.jsonl"

    def crash_after_five(record):
        if len(read_logs(logs)) >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect_logs(config, tmp_path / "out", progress=False, on_record=crash_after_five)
    kept = read_logs(logs)
    assert 5 <= len(kept) < 48
    before = requests(counts)
    summary = collect_logs(config, tmp_path / "out", progress=False)
    assert summary.already_logged == len(kept) and summary.written == 48 - len(kept)
    assert requests(counts) - before <= 48 - len(kept)
    final = read_logs(logs)
    keys = [(r.query_id, r.arm, r.sample_index) for r in final]
    assert len(keys) == len(set(keys)) == 48
    assert set(keys) == {(q, a, s) for q in PICKED for a in ("tiny-a", "tiny-a_think", "tiny-b", "tiny-b_think") for s in (0, 1)}
    assert [r.response for r in final[: len(kept)]] == [r.response for r in kept]


ANSWERS = {"arith-2": "Answer: 24.75", "mc-1": "Mars, so the answer is (B).", "fact-4": "True", "fact-1": "Lyon"}


def oracle_reply(prompt: str) -> str:
    """Answers from the table by the query text it recognises; wrong on fact-1."""
    for line in DEMO_QUERIES.read_text().splitlines():
        item = json.loads(line)
        if item["query"] in prompt and item["query_id"] in ANSWERS:
            return ANSWERS[item["query_id"]]
    return "no idea"


def judge_reply(prompt: str) -> str:
    """A judge that grades 0.8, except it rambles without tags about anything mentioning Mars."""
    response = prompt.split("Response:\n", 1)[1]
    return "It is a fine answer overall." if "Mars" in response else "Well reasoned. <answer>0.8</answer>"


@pytest.fixture(scope="module")
def scripted_servers():
    oracle, judge = scripted_app("oracle-v2", oracle_reply), scripted_app("judge-v1", judge_reply)
    counts = {"oracle": counting(oracle), "judge": counting(judge)}
    with serve_in_thread(oracle) as oracle_url, serve_in_thread(judge) as judge_url:
        yield {"oracle": oracle_url, "judge": judge_url}, counts


def scripted_config(urls, queries, judge_url=None, **overrides) -> CollectConfig:
    return parse_config(
        {
            "models": [model("oracle", urls["oracle"], model="oracle-v2"), model("judge", judge_url or urls["judge"])],
            "queries": str(queries),
            "arms": ["oracle"],
            "judge": {"model": "judge", "rubric": "correctness"},
            **overrides,
        },
        CollectConfig,
    )


def test_scores_and_judge_verdicts(scripted_servers, tmp_path):
    urls, counts = scripted_servers
    queries = write_queries(tmp_path / "q.jsonl", list(ANSWERS))
    summary = collect_logs(scripted_config(urls, queries), tmp_path / "out", progress=False)
    rows = {r.query_id: r for r in read_logs(tmp_path / "out" / "logs.jsonl")}
    assert {q: r.performance for q, r in rows.items()} == {"arith-2": 1.0, "mc-1": 1.0, "fact-4": 1.0, "fact-1": 0.0}
    assert rows["mc-1"].score_details["chosen"] == "B"
    for q in ("arith-2", "fact-4", "fact-1"):
        assert rows[q].llm_judge == 0.8 and rows[q].judge_model == "judge"
        assert rows[q].score_details["judge_rubric"] == "correctness"
    # An unparsable verdict is a missing score, never a zero.
    assert rows["mc-1"].llm_judge is None
    assert "unparsable verdict" in rows["mc-1"].score_details["judge_error"]
    assert summary.judge_failures == 1 and counts["judge"]["chat"] == 4
    assert summary.arms["oracle"].mean_judge == pytest.approx(0.8)
    ledger = {(row["model"], row["role"]): row for row in json.loads((tmp_path / "out" / "ledger.json").read_text())}
    assert ledger[("judge", "judge")]["calls"] == 4


def test_unreachable_judge_leaves_scores_missing(scripted_servers, tmp_path):
    urls, _ = scripted_servers
    queries = write_queries(tmp_path / "q.jsonl", ["fact-4"])
    dead = f"http://127.0.0.1:{free_port()}/v1"
    summary = collect_logs(scripted_config(urls, queries, judge_url=dead), tmp_path / "out", progress=False)
    (row,) = read_logs(tmp_path / "out" / "logs.jsonl")
    assert row.performance == 1.0 and row.llm_judge is None and "judge_error" in row.score_details
    assert summary.judge_failures == 1


def test_unreachable_model_is_a_clear_error_and_keeps_finished_rows(scripted_servers, tmp_path):
    urls, _ = scripted_servers
    queries = write_queries(tmp_path / "q.jsonl", list(ANSWERS))
    dead = f"http://127.0.0.1:{free_port()}/v1"
    config = parse_config(
        {
            "models": [model("oracle", urls["oracle"], model="oracle-v2"), model("gone", dead)],
            "queries": str(queries),
            "prompt_styles": ["direct"],
        },
        CollectConfig,
    )
    with pytest.raises(ModelError, match=r"gone: .* failed after 1 attempts.*; (\d+) new rows kept in .*logs.jsonl, rerun to resume") as error:
        collect_logs(config, tmp_path / "out", progress=False)
    kept = int(re.search(r"(\d+) new rows kept", str(error.value)).group(1))
    assert "\n" not in str(error.value)
    logs = tmp_path / "out" / "logs.jsonl"
    assert len(read_logs(logs) if logs.exists() else []) == kept
    # Without the dead model the run completes, keeping what it had.
    config.arms = ["oracle"]
    summary = collect_logs(config, tmp_path / "out", progress=False)
    assert summary.already_logged == kept and len(read_logs(logs)) == 4


def test_judge_score_parsing():
    assert parse_judge_score("<answer>0.8</answer>") == 0.8
    assert parse_judge_score("first <answer>0.2</answer> then <ANSWER> 1 </ANSWER>") == 1.0
    assert parse_judge_score("<answer>.5</answer>") == 0.5
    assert parse_judge_score("<answer>8</answer>") is None  # another scale: not clipped to 1
    assert parse_judge_score("<answer>good</answer>") is None
    assert parse_judge_score("0.8") is None


# -- query files and config ------------------------------------------------------------------------
def test_shipped_query_set_reads():
    queries = read_queries(DEMO_QUERIES)
    assert len(queries) >= 24 and len({q.query_id for q in queries}) == len(queries)
    assert {q.metric for q in queries} >= {"numeric", "choice", "substring", "exact", "code"}
    assert all(q.tests for q in queries if q.metric == "code")


GOOD = {"query_id": "q1", "task": "t", "query": "2+2?", "ground_truth": 4, "metric": "numeric"}


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", r"q\.jsonl:3: not valid JSON"),
        (json.dumps({**GOOD, "query_id": "q3", "metric": "bleu"}), r"q\.jsonl:3: .*unknown metric 'bleu'"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "query"} | {"query_id": "q3"}), r"q\.jsonl:3: query: required field is missing"),
        (json.dumps({**GOOD, "query_id": "q3", "metric": "choice", "ground_truth": "Paris"}), r"q\.jsonl:3: .*not one of the letters"),
        (json.dumps({**GOOD, "query_id": "q3", "metric": "code", "ground_truth": ""}), r"q\.jsonl:3: .*needs 'tests'"),
        (json.dumps(GOOD), r"q\.jsonl:3: query_id 'q1' already used at .*q\.jsonl:1"),
        (json.dumps({**GOOD, "query_id": "q3", "colour": "red"}), r"q\.jsonl:3: colour: unknown field"),
    ],
)
def test_bad_query_file_names_the_line(tmp_path, line, message):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "query_id": "q2"}) + "\n" + line + "\n")
    with pytest.raises(QueryFileError, match=message):
        read_queries(path)


def test_parquet_queries(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [GOOD | {"ground_truth": "4", "tests": None}, {**GOOD, "query_id": "q2", "metric": "code", "ground_truth": "", "tests": ["assert True"]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "q.parquet")
    assert [q.query_id for q in read_queries(tmp_path / "q.parquet")] == ["q1", "q2"]
    pq.write_table(pa.Table.from_pylist([GOOD | {"ground_truth": "4"}, {**GOOD, "ground_truth": "x"}]), tmp_path / "bad.parquet")
    with pytest.raises(QueryFileError, match=r"bad\.parquet: row 1: .*holds no number"):
        read_queries(tmp_path / "bad.parquet")
    (tmp_path / "q.csv").write_text("query_id,query\n")
    with pytest.raises(QueryFileError, match="expected a .jsonl or .parquet"):
        read_queries(tmp_path / "q.csv")
    with pytest.raises(QueryFileError, match="missing.jsonl: query file not found"):
        read_queries(tmp_path / "missing.jsonl")


def test_config_arms_budgets_and_paths(tmp_path):
    (tmp_path / "sets").mkdir()
    write_queries(tmp_path / "sets" / "q.jsonl")
    (tmp_path / "collect.yaml").write_text(
        "models:\n"
        "  - {name: a, backend: openai, base_url: 'http://127.0.0.1:1/v1', generation: {max_new_tokens: 900}}\n"
        "  - {name: b, backend: openai, base_url: 'http://127.0.0.1:1/v1'}\n"
        "queries: sets/q.jsonl\n"
        "generation: {max_new_tokens: 64, temperature: 0.0}\n"
    )
    config = load_collect_config(tmp_path / "collect.yaml")
    assert config.arm_list() == ["a", "a_think", "b", "b_think"]
    assert config.queries == tmp_path / "sets" / "q.jsonl" and len(read_queries(config.queries)) == 6
    assert config.params_for("a").max_new_tokens == 900 and config.params_for("b").max_new_tokens == 64
    (tmp_path / "bad.yaml").write_text((tmp_path / "collect.yaml").read_text() + "arms: [a, c_think]\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: .*arms: 'c_think' names no declared model"):
        load_collect_config(tmp_path / "bad.yaml")
    (tmp_path / "bad2.yaml").write_text((tmp_path / "collect.yaml").read_text() + "judge: {model: zed}\n")
    with pytest.raises(ConfigError, match=r"judge\.model: unknown model 'zed'"):
        load_collect_config(tmp_path / "bad2.yaml")
    (tmp_path / "bad3.yaml").write_text((tmp_path / "collect.yaml").read_text() + "prompt_styles: [direct, shout]\n")
    with pytest.raises(ConfigError, match="unknown style 'shout'"):
        load_collect_config(tmp_path / "bad3.yaml")


@pytest.mark.slow
def test_collect_tiny_llama_and_smollm2_over_http(tiny_backend, smollm_backend, tmp_path):
    """The two packaged models of different families behind `alloy serve`, as the issue asks."""
    apps = {"tiny-llama": create_app(tiny_backend, served_name="tiny-llama"), "smollm2": create_app(smollm_backend, served_name="smollm2")}
    counts = {name: counting(app) for name, app in apps.items()}
    with serve_in_thread(apps["tiny-llama"]) as tiny_url, serve_in_thread(apps["smollm2"]) as smol_url:
        config = parse_config(
            {
                "models": [
                    model("tiny-llama", tiny_url, price={"input_per_mtok": 0.1, "output_per_mtok": 0.1}),
                    model("smollm2", smol_url, price={"input_per_mtok": 0.5, "output_per_mtok": 1.5}, generation={"max_new_tokens": 48}),
                ],
                "queries": str(write_queries(tmp_path / "q.jsonl")),
                "generation": {"max_new_tokens": 16},
            },
            CollectConfig,
        )
        summary = collect_logs(config, tmp_path / "out", progress=False)
        records = read_logs(tmp_path / "out" / "logs.jsonl")
        assert len(records) == 24 and requests(counts) == 24
        smol = [r for r in records if r.model == "smollm2"]
        assert all(r.output_tokens <= 48 and r.input_tokens > 0 and r.finish_reason for r in smol)
        assert any(r.output_tokens > 16 for r in smol)  # its own budget, not the shared 16
        assert sum(r.cost for r in smol) == pytest.approx(summary.arms["smollm2"].cost_usd + summary.arms["smollm2_think"].cost_usd)
        again = collect_logs(config, tmp_path / "out", progress=False)
        assert again.written == 0 and requests(counts) == 24
