"""SFT data from the top logged responses: training queries only, nothing test-only, and a real run."""

from __future__ import annotations

import json

import pytest

from llm_alloy.config import ConfigError, load_config
from llm_alloy.distill.sft import SFTSettings
from llm_alloy.distill.top_responses import (
    DataSummary,
    DistillSFTConfig,
    build_sft_pairs,
    distill_sft,
    label_answer,
    write_sft_data,
)
from llm_alloy.logs.matrix import split_of
from llm_alloy.logs.schema import LogRecord, render_prompt

SECRETS = ("SECRET-ASSERT", "SECRET-EXTRA-TEST", "SECRET-EXTRA-FIELD", "SECRET-TEST-QUERY", "SECRET-VALIDATION-QUERY")


def ids_in(split: str, n: int) -> list[str]:
    return [f"q{i}" for i in range(500) if split_of(f"q{i}") == split][:n]


def rows(query_id, task, metric, query, truth, scores, responses=None, extra=None):
    arms = [("small", "direct"), ("small", "think"), ("big", "direct")]
    responses = responses or [f"{m}/{s}: my answer to {query_id}" for m, s in arms]
    return [
        LogRecord(
            query_id=query_id, arm=model if style == "direct" else f"{model}_{style}", model=model, prompt_style=style,
            task=task, query=query, prompt=render_prompt(query, style), ground_truth=truth, metric=metric,
            response=response, performance=score, llm_judge=score, cost=1.0 if model == "small" else 5.0,
            extra=extra or {},
        )
        for (model, style), score, response in zip(arms, scores, responses)
    ]


@pytest.fixture()
def logs():
    """Training queries of three kinds (one code task whose tests are the ground truth), a query
    nobody answered, and validation/test queries whose text must never reach the data."""
    (code, num, choice, unsolved), (test,), (validation,) = ids_in("train", 4), ids_in("test", 1), ids_in("validation", 1)
    code_extra = {"tests": ["assert reverse([4]) == 'SECRET-EXTRA-TEST'"], "hidden": "SECRET-EXTRA-FIELD"}
    return [
        *rows(code, "mbpp", "code", "Write reverse(xs) returning xs reversed.", "assert reverse([1, 2]) == [2, 1]  # SECRET-ASSERT",
              [1.0, 0.0, 1.0], ["[BEGIN]def reverse(xs): return xs[::-1][DONE]", "wrong", "[BEGIN]def reverse(xs):\n    return list(reversed(xs))[DONE]"],
              extra=code_extra),
        *rows(num, "gsm8k", "numeric", "Tom has 3 apples and buys 4. How many now?", "3 + 4 = 7\n#### 7", [1.0, 1.0, 0.0]),
        *rows(choice, "arc", "choice", "Sky colour?\n(A) green\n(B) blue", "b", [0.0, 1.0, 1.0]),
        *rows(unsolved, "gsm8k", "numeric", "Unsolved question?", "5", [0.0, 0.0, 0.0]),
        *rows(test, "gsm8k", "numeric", "SECRET-TEST-QUERY: 2 + 2?", "4", [1.0, 1.0, 1.0]),
        *rows(validation, "arc", "choice", "SECRET-VALIDATION-QUERY?\n(A) x\n(B) y", "A", [1.0, 1.0, 1.0]),
    ], (code, num, choice, unsolved)


def test_examples_are_the_top_responses_with_their_prompts_as_sent(logs):
    records, (code, num, choice, unsolved) = logs
    summary = DataSummary()
    pairs = build_sft_pairs(records, "perf", k=5, summary=summary)
    by_query = {q: [(p.source, p.prompt, p.response) for p in pairs if p.query_id == q] for q in (code, num, choice)}
    assert [s for s, _, _ in by_query[code]] == ["small", "big"]  # the failed think response is skipped
    assert [s for s, _, _ in by_query[num]] == ["small", "small_think"]
    assert by_query[num][1][1].endswith("Let's think step by step.")  # the think prompt, as sent
    assert [s for s, _, _ in by_query[choice]] == ["small_think", "big"]
    assert not [p for p in pairs if p.query_id == unsolved]
    assert summary.train_queries == 4 and summary.refused_queries == 2 and summary.queries_without_examples == 1
    assert summary.response_examples == len(pairs) == 6 and summary.label_examples == 0
    assert summary.per_arm == {"small": 2, "big": 2, "small_think": 2}


def test_k_and_the_pool_limit_the_examples(logs):
    records, (code, num, choice, _) = logs
    assert [p.source for p in build_sft_pairs(records, "judge", k=1)] == ["small", "small", "small_think"]
    pool_pairs = build_sft_pairs(records, "hybrid", k=5, pool={"big"})
    assert {p.source for p in pool_pairs} == {"big"} and {p.query_id for p in pool_pairs} == {code, choice}


def test_label_examples_answer_in_the_task_format_and_never_for_code(logs):
    records, (code, num, choice, unsolved) = logs
    labels = {p.query_id: (p.prompt, p.response) for p in build_sft_pairs(records, "perf", 2, include_label=True) if p.source == "label"}
    assert labels == {
        num: ("Tom has 3 apples and buys 4. How many now?", "7"),
        choice: ("Sky colour?\n(A) green\n(B) blue", "(B)"),
        unsolved: ("Unsolved question?", "5"),
    }


@pytest.mark.parametrize(
    ("metric", "truth", "label"),
    [
        ("code", "assert f(1) == 2", None),
        ("numeric", "", None),
        ("numeric", "48 / 2 = 24\n#### 72", "72"),
        ("math", "so $x = \\boxed{\\frac{1}{2}}$.", "\\boxed{\\frac{1}{2}}"),
        ("math", "3/4", "\\boxed{3/4}"),
        ("choice", "c", "(C)"),
        ("substring", " Paris ", "Paris"),
    ],
)
def test_label_answer(metric, truth, label):
    assert label_answer(metric, truth) == label


def test_the_written_data_holds_no_test_only_field(logs, tmp_path):
    records, _ = logs
    path = write_sft_data(build_sft_pairs(records, "hybrid", 5, include_label=True), tmp_path / "sft.jsonl")
    text = path.read_text()
    for secret in SECRETS:
        assert secret not in text, secret
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines and all(set(line) == {"query_id", "task", "source", "prompt", "response"} for line in lines)
    assert any("def reverse" in line["response"] for line in lines)  # code solutions do train


def test_distill_sft_builds_the_data_and_trains_an_adapter(logs, tmp_path):
    from llm_alloy.logs.io import write_logs

    records, _ = logs
    write_logs(records, tmp_path / "logs.jsonl")
    (tmp_path / "distill.yaml").write_text(
        f"logs: {tmp_path / 'logs.jsonl'}\ntarget: tiny-llama\ncriterion: hybrid\nk: 3\ninclude_label: true\n"
        "sft: {batch_size: 4, max_length: 64, learning_rate: 0.01}\n"
    )
    config = load_config(tmp_path / "distill.yaml", DistillSFTConfig)
    result = distill_sft(config, tmp_path / "out")
    examples = (tmp_path / "out" / "sft_data.jsonl").read_text().splitlines()
    assert len(examples) == result.summary.response_examples + result.summary.label_examples == 9
    assert result.training.steps == 3 and len(result.training.losses) == 3
    assert (result.training.adapter_dir / "adapter_model.safetensors").exists()
    assert (result.training.model_dir / "model.safetensors").exists()
    assert json.loads((tmp_path / "out" / "sft_data.json").read_text())["train_queries"] == 4


def test_bad_configs_and_empty_data_are_one_line_errors(tmp_path, logs):
    from llm_alloy.logs.io import write_logs

    (tmp_path / "bad.yaml").write_text("logs: x.jsonl\ntarget: tiny-llama\ncriterion: best\n")
    with pytest.raises(ConfigError, match="bad.yaml: criterion"):
        load_config(tmp_path / "bad.yaml", DistillSFTConfig)
    records, _ = logs
    write_logs([r.model_copy(update={"performance": 0.0}) for r in records], tmp_path / "zero.jsonl")
    config = DistillSFTConfig(logs=tmp_path / "zero.jsonl", target="tiny-llama", sft=SFTSettings())
    with pytest.raises(ValueError, match="no SFT examples"):
        distill_sft(config, tmp_path / "out")
