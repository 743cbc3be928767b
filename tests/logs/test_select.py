"""Top-response selection: the choice both thought templates and distillation are built on."""

from __future__ import annotations

import pytest

from llm_alloy.logs.schema import LogRecord
from llm_alloy.logs.select import SelectionError, group_by_query, top_responses


def row(arm, performance, judge=None, cost=1.0, response=None, query_id="q1"):
    return LogRecord(
        query_id=query_id, arm=arm, model=arm.removesuffix("_think"),
        prompt_style="think" if arm.endswith("_think") else "direct", task="gsm8k", query="What is 6 x 7?",
        response=response if response is not None else f"{arm} works it out: 6 x 7 = 42.",
        performance=performance, llm_judge=judge, cost=cost,
    )


def arms(selected):
    return [r.arm for r in selected]


def test_all_zero_or_unscored_responses_give_nothing():
    rows = [row("a", 0.0, judge=1.0), row("b", None, judge=0.9), row("c", 0.0)]
    for criterion in ("perf", "judge", "hybrid"):
        assert top_responses(rows, criterion, 3) == []


def test_zero_scored_responses_are_skipped_even_when_the_judge_likes_them():
    rows = [row("wrong", 0.0, judge=1.0), row("right", 1.0, judge=0.2)]
    assert arms(top_responses(rows, "judge", 2)) == ["right"]


def test_perf_ranks_by_performance_then_cheaper_first():
    rows = [row("pricey", 1.0, cost=3.0), row("half", 0.5, cost=0.1), row("cheap", 1.0, cost=1.0)]
    assert arms(top_responses(rows, "perf", 3)) == ["cheap", "pricey", "half"]


def test_full_ties_break_by_arm_name_whatever_the_input_order():
    rows = [row("m2", 1.0), row("m1", 1.0), row("m3", 1.0)]
    assert arms(top_responses(rows, "perf", 2)) == ["m1", "m2"]
    assert arms(top_responses(list(reversed(rows)), "perf", 2)) == ["m1", "m2"]


def test_judge_puts_unjudged_responses_after_judged_ones():
    rows = [row("unjudged", 1.0, judge=None, cost=0.0), row("low", 1.0, judge=0.3), row("high", 0.5, judge=0.9)]
    assert arms(top_responses(rows, "judge", 3)) == ["high", "low", "unjudged"]


def test_k_larger_than_available_returns_all_that_qualify():
    rows = [row("a", 1.0), row("b", 0.5), row("c", 0.0)]
    assert arms(top_responses(rows, "perf", 10)) == ["a", "b"]


def test_pool_keeps_only_the_named_arms():
    rows = [row("big", 1.0, cost=0.1), row("small", 0.5), row("small_think", 1.0, cost=2.0)]
    assert arms(top_responses(rows, "perf", 3, pool={"small", "small_think"})) == ["small_think", "small"]


def test_hybrid_reranks_the_top_five_by_performance_with_the_judge():
    # The judge's favourite is 6th by performance, so hybrid never sees it; pure judge picks it first.
    rows = [row(f"p{i}", 1.0 - i * 0.1, judge=0.1 * i) for i in range(5)]
    rows.append(row("p5_judged_best", 0.3, judge=1.0))
    assert arms(top_responses(rows, "hybrid", 3)) == ["p4", "p3", "p2"]
    assert arms(top_responses(rows, "judge", 1)) == ["p5_judged_best"]
    assert arms(top_responses(rows, "perf", 1)) == ["p0"]


def test_near_identical_responses_count_once_the_better_ranked_kept():
    same = "The product is 42."
    rows = [
        row("m", 1.0, cost=2.0, response=same),
        row("m_think", 1.0, cost=1.0, response="  the PRODUCT is\n42. "),
        row("other", 1.0, cost=3.0),
    ]
    assert arms(top_responses(rows, "perf", 3)) == ["m_think", "other"]


def test_blank_responses_are_never_selected():
    assert top_responses([row("a", 1.0, response="   ")], "perf", 1) == []


def test_bad_requests_are_one_line_errors():
    rows = [row("a", 1.0), row("b", 1.0, query_id="q2")]
    with pytest.raises(SelectionError, match="one query"):
        top_responses(rows, "perf", 1)
    with pytest.raises(SelectionError, match="unknown criterion 'best'"):
        top_responses(rows[:1], "best", 1)
    with pytest.raises(SelectionError, match="k must be at least 1"):
        top_responses(rows[:1], "perf", 0)


def test_grouping_is_by_id_not_position():
    rows = [row("a", 1.0, query_id="q1"), row("a", 1.0, query_id="q2"), row("b", 1.0, query_id="q1")]
    groups = group_by_query(rows)
    assert list(groups) == ["q1", "q2"] and arms(groups["q1"]) == ["a", "b"]
