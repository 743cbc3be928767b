"""Model-level fusion: SFT data from the top-K logged responses per training query (FusionFactory §4).

Each training query gives up to K examples (the arm's prompt as sent -> the arm's response), chosen by
performance, judge or hybrid (logs.select: scoreless responses and near-duplicates never count), and
optionally one label example (the base query -> the ground-truth answer in the task's answer format).
Nothing only the evaluation may see goes into the data: no validation or test query, no `extra`
field, and no code ground truth (those are test asserts, which a model must not learn to emit).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Collection, Iterable

from pydantic import BaseModel, ConfigDict, Field

from llm_alloy.distill.sft import SFTResult, SFTSettings, train_sft
from llm_alloy.files import write_atomic
from llm_alloy.evaluate.verifiers import last_boxed
from llm_alloy.logs.matrix import split_of
from llm_alloy.logs.schema import LogRecord, render_prompt
from llm_alloy.logs.select import Criterion, group_by_query, top_responses

LABEL_SOURCE = "label"
DATA_FILE = "sft_data.jsonl"
SUMMARY_FILE = "sft_data.json"


@dataclass(frozen=True)
class SFTExample:
    query_id: str
    task: str
    source: str
    """The arm whose response this is, or "label" for a ground-truth example."""
    prompt: str
    response: str


def label_answer(metric: str, ground_truth: str) -> str | None:
    """The ground truth as the answer a model should write, or None where it is not an answer.

    Code ground truths are test asserts (never a target); GSM8K/MATH references are cut to the final
    answer, so the label teaches the answer format, not a reference write-up in another style."""
    truth = ground_truth.strip()
    if metric == "code" or not truth:
        return None
    if metric == "choice":
        return f"({truth.upper()})" if len(truth) == 1 and truth.isalpha() else truth
    if metric == "numeric":
        return truth.rsplit("####", 1)[-1].strip() if "####" in truth else truth
    if metric == "math":
        return f"\\boxed{{{last_boxed(truth) or truth}}}"
    return truth


@dataclass
class DataSummary:
    train_queries: int = 0
    refused_queries: int = 0
    """Validation and test queries in the logs: never used."""
    queries_without_examples: int = 0
    response_examples: int = 0
    label_examples: int = 0
    per_arm: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {**asdict(self), "per_arm": dict(self.per_arm.most_common())}


def build_sft_pairs(
    records: Iterable[LogRecord],
    criterion: Criterion,
    k: int,
    include_label: bool = False,
    validation: float = 0.1,
    test: float = 0.2,
    salt: str = "",
    pool: Collection[str] | None = None,
    summary: DataSummary | None = None,
) -> list[SFTExample]:
    """SFT examples from the training queries of the logs (split fractions and salt as everywhere
    else, so exactly the routers' training queries are used). `summary`, when given, is filled in."""
    summary = summary if summary is not None else DataSummary()
    examples: list[SFTExample] = []
    for query_id, rows in group_by_query(records).items():
        if split_of(query_id, validation, test, salt) != "train":
            summary.refused_queries += 1
            continue
        summary.train_queries += 1
        made = [
            SFTExample(query_id, r.task, r.arm, r.prompt or render_prompt(r.query, r.prompt_style), r.response)
            for r in top_responses(rows, criterion, k, pool)
        ]
        summary.response_examples += len(made)
        summary.per_arm.update(e.source for e in made)
        label = label_answer(rows[0].metric, rows[0].ground_truth) if include_label else None
        if label is not None:
            made.append(SFTExample(query_id, rows[0].task, LABEL_SOURCE, rows[0].query, label))
            summary.label_examples += 1
        summary.queries_without_examples += not made
        examples.extend(made)
    return examples


def write_sft_data(pairs: Iterable[SFTExample], path: str | Path) -> Path:
    """JSONL, one {query_id, task, source, prompt, response} a line; only these fields, by design."""
    path = Path(path)
    write_atomic(path, "".join(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in pairs))
    return path


class DistillSFTConfig(BaseModel):
    """`alloy distill sft`: which logs, which responses, which target, how to train."""

    model_config = ConfigDict(extra="forbid")
    logs: Path = Field(description="log file or directory (.jsonl, .parquet, saved HF dataset)")
    target: str = Field(min_length=1, description="the model to train: packaged name, local folder or hub id")
    criterion: Criterion = "judge"
    k: int = Field(5, ge=1, description="top responses per query")
    include_label: bool = Field(False, description="add a ground-truth answer example per query (never for code)")
    pool: list[str] | None = Field(None, description="only these arms' responses (e.g. the small models)")
    validation: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.2, ge=0, lt=1)
    salt: str = ""
    sft: SFTSettings = SFTSettings()
    seed: int = 0
    device: str = "cpu"


@dataclass
class DistillResult:
    data_path: Path
    summary: DataSummary
    training: SFTResult


def distill_sft(config: DistillSFTConfig, out_dir: str | Path) -> DistillResult:
    """Build the SFT data from the logs into OUT/sft_data.jsonl and train the target on it (OUT/adapter,
    OUT/model), with the SFT code every distillation in this package uses."""
    from llm_alloy.logs.io import read_logs

    out_dir = Path(out_dir)
    if config.validation + config.test >= 1:
        raise ValueError(f"validation ({config.validation}) + test ({config.test}) leaves no training queries")
    summary = DataSummary()
    pairs = build_sft_pairs(
        read_logs(config.logs), config.criterion, config.k, config.include_label,
        config.validation, config.test, config.salt, config.pool, summary,
    )
    if not pairs:
        raise ValueError(f"{config.logs}: no SFT examples (no training query has a response that scored above 0)")
    data_path = write_sft_data(pairs, out_dir / DATA_FILE)
    write_atomic(out_dir / SUMMARY_FILE, json.dumps(summary.to_dict(), indent=1))
    training = train_sft(config.target, [(p.prompt, p.response) for p in pairs], out_dir, config.sft, config.seed, config.device)
    return DistillResult(data_path, summary, training)
