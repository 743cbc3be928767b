"""`alloy templates build|apply`: the config of a build and the batch form of retrieval + injection."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, model_validator

from llm_alloy.logs.select import Criterion
from llm_alloy.models.spec import ModelsSection
from llm_alloy.models.types import GenerationParams
from llm_alloy.thought.templates import (
    SUMMARY_PARAMS,
    BuildReport,
    Embed,
    TemplateStore,
    build_templates,
    inject,
    retrieve_many,
)


class TemplatesConfig(ModelsSection):
    logs: Path = Field(description="log file or directory (.jsonl, .parquet, saved HF dataset)")
    summariser: str = Field(description="the declared model that writes the templates")
    criterion: Criterion = "hybrid"
    k: int = Field(3, ge=1, description="top responses summarised per query")
    pool: list[str] | None = Field(None, description="only these arms' responses (e.g. the small models)")
    validation: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.2, ge=0, lt=1)
    salt: str = ""
    encoder: str = Field("minilm-l6", description="sentence-embedding model of the template queries")
    generation: GenerationParams = SUMMARY_PARAMS
    batch_size: int = Field(8, ge=1, description="summaries per model call (progress and resume granularity)")

    @model_validator(mode="after")
    def _references(self) -> "TemplatesConfig":
        self.check_references(summariser=self.summariser)
        if self.validation + self.test >= 1:
            raise ValueError(f"validation ({self.validation}) + test ({self.test}) leaves no training queries")
        return self


def build_from_config(config: TemplatesConfig, out_dir: str | Path, progress: bool = True) -> tuple[TemplateStore, BuildReport]:
    from llm_alloy.logs.io import read_logs
    from llm_alloy.models.factory import build_backend

    records = read_logs(config.logs)
    summariser = build_backend(config.model(config.summariser))
    try:
        return build_templates(
            records, summariser, out_dir,
            criterion=config.criterion, k=config.k, pool=config.pool,
            validation=config.validation, test=config.test, salt=config.salt,
            encoder=config.encoder, params=config.generation, batch_size=config.batch_size, progress=progress,
        )
    finally:
        summariser.close()


def read_queries(path: Path) -> list[dict]:
    """JSONL, one {"query": ..., "task": ... (optional)} a line."""
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            items.append({"query": str(item["query"]), "task": item.get("task")})
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError(f"{path}:{number}: expected a JSON object with 'query' (and optionally 'task')") from None
    return items


def apply_templates(store: TemplateStore, items: list[dict], k: int = 3, embed: Embed | None = None) -> list[dict]:
    """Per {"query", "task"} item, the prompt with its retrieved templates injected. Each output has a
    "prompt" key, so the file feeds `alloy generate --input` as it is."""
    found = retrieve_many(store, [i["query"] for i in items], [i.get("task") for i in items], k, embed)
    return [
        {
            "query": item["query"],
            "task": item.get("task"),
            "prompt": inject(item["query"], retrieved),
            "templates": [{"query_id": r.template.query_id, "task": r.template.task, "similarity": round(r.similarity, 4)} for r in retrieved],
        }
        for item, retrieved in zip(items, found)
    ]
