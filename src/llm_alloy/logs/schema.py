"""The log record: one response of one arm (a model with a prompt style) to one query.

Rows are keyed by explicit ids (`query_id`, `arm`), never by their position in a file: a failed or
dropped call leaves a hole, not a shifted block. Scores are typed floats in [0, 1] with `None` for
"not scored" (a failed judge call is missing, not wrong); structured details sit beside them.
Embeddings live in their own table keyed by query id (`logs.embeddings`), not in the rows.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

PROMPT_STYLES: dict[str, str] = {
    "direct": "{query}",
    "think": "{query}\n\nLet's think step by step.",
}
"""How each prompt style wraps a base query (LLMFusionBench's LLM-direct and LLM-think)."""


def render_prompt(query: str, prompt_style: str) -> str:
    if prompt_style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style '{prompt_style}' (known: {', '.join(PROMPT_STYLES)})")
    return PROMPT_STYLES[prompt_style].format(query=query)


def arm_name(model: str, prompt_style: str) -> str:
    """Arms are named as in LLMFusionBench: the model name, with `_think` for the reasoning prompt."""
    return model if prompt_style == "direct" else f"{model}_{prompt_style}"


def parse_arm(arm: str) -> tuple[str, str]:
    """(model, prompt style) of an arm name; the inverse of `arm_name`."""
    for style in PROMPT_STYLES:
        if style != "direct" and arm.endswith(f"_{style}"):
            return arm[: -len(style) - 1], style
    return arm, "direct"


class LogRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query_id: str = Field(min_length=1, description="stable id of the base query (same for all its arms)")
    arm: str = Field(min_length=1, description="model + prompt style, e.g. 'qwen2-7b' or 'qwen2-7b_think'")
    model: str = Field(min_length=1, description="the model's configured name")
    prompt_style: str = Field("direct", description="'direct', 'think', ...")
    task: str = Field(min_length=1)
    task_description: str = ""
    query: str = Field(description="the base query, without any prompt-style wrapping")
    prompt: str = Field("", description="the prompt exactly as sent")
    ground_truth: str = ""
    metric: str = Field("", description="task metric id: substring, exact, choice, numeric, code, math")
    response: str = ""
    performance: float | None = Field(None, ge=0, le=1, description="task metric score; None = not scored")
    score_details: dict[str, Any] = Field(default_factory=dict)
    llm_judge: float | None = Field(None, ge=0, le=1, description="judge score; None = not judged or judge failed")
    judge_model: str | None = None
    input_tokens: int = Field(0, ge=0, description="provider-reported prompt tokens")
    output_tokens: int = Field(0, ge=0, description="provider-reported completion tokens")
    cost: float = Field(0.0, ge=0, description="US dollars")
    latency_s: float | None = Field(None, ge=0)
    finish_reason: str | None = None
    served_model: str | None = Field(None, description="the model id the server echoed back")
    sample_index: int = 0
    task_id: str | None = Field(None, description="the dataset's own id of the item (e.g. HumanEval/3)")
    extra: dict[str, Any] = Field(default_factory=dict, description="test-only or dataset-specific fields")
