"""`alloy logs collect`: send a query set to every arm (model x prompt style) and log scored responses.

Every call goes through the model layer (`build_backend` behind one `CachedBackend` on
`OUT/cache.sqlite`), so a rerun answers finished calls from the cache, and each row is appended to
`OUT/logs.jsonl` as soon as it is scored: a killed run keeps every row it finished, and a rerun skips
the (query_id, arm, sample_index) cells already logged, making no model call for them.

Token counts are the provider-reported usage; cost is priced with the model's declared `Price` (US
dollars); latency is the wall time the caller waited (for an in-process model that runs a batch at a
time, the batch's); the finish reason tells truncated answers apart. Remote models are called
concurrently (each up to its `max_concurrency`); in-process models run one batch at a time, since
two of them would only fight over the same cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llm_alloy.config import describe_validation_error, load_config
from llm_alloy.evaluate.task_metrics import MetricError, check_metric, score_response
from llm_alloy.logs.io import append_logs, iter_logs
from llm_alloy.logs.schema import PROMPT_STYLES, LogRecord, arm_name, parse_arm, render_prompt
from llm_alloy.models.base import Backend
from llm_alloy.models.ledger import Ledger
from llm_alloy.models.spec import ModelsSection
from llm_alloy.models.types import Completion, GenerationParams, ModelError

LOGS_FILE = "logs.jsonl"
CACHE_FILE = "cache.sqlite"
LEDGER_FILE = "ledger.json"


class QueryFileError(ValueError):
    """A query set that cannot be used; the message names the file and the line (or row)."""


class QueryItem(BaseModel):
    """One line of a query set."""

    model_config = ConfigDict(extra="forbid")

    query_id: str = Field(min_length=1)
    task: str = Field(min_length=1)
    task_description: str = ""
    query: str = Field(min_length=1, description="the base query; prompt styles wrap it")
    ground_truth: str = ""
    metric: str
    tests: str | list[str] | None = Field(None, description="code: test statements run after the program")
    choices: str | None = Field(None, description="choice: the valid letters, e.g. 'ABCD'")
    task_id: str | None = None

    @field_validator("ground_truth", "task_id", mode="before")
    @classmethod
    def _numbers_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _scorable(self) -> "QueryItem":
        check_metric(self.metric)
        if self.metric == "code":
            tests = "\n".join(self.tests) if isinstance(self.tests, list) else (self.tests or self.ground_truth)
            if not tests.strip():
                raise ValueError("a code query needs 'tests' (or the tests as its ground_truth)")
        else:
            # Scoring an empty answer checks that the metric can read this ground truth at all.
            score_response(self.metric, "", self.ground_truth, **self.metric_options())
        return self

    def metric_options(self) -> dict[str, Any]:
        if self.metric == "code":
            return {"tests": self.tests}
        if self.metric == "choice" and self.choices:
            return {"choices": self.choices}
        return {}


def read_queries(path: str | Path) -> list[QueryItem]:
    """A query set from .jsonl (one JSON object a line) or .parquet (one row a query). Errors name the
    line (1-based) or the row (0-based, as `df.iloc` finds it), like `logs.io`."""
    path = Path(path)
    if not path.exists():
        raise QueryFileError(f"{path}: query file not found")
    if path.suffix == ".jsonl":
        rows = _jsonl_rows(path)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = [(f"{path}: row {i}", row) for i, row in enumerate(pq.read_table(path).to_pylist())]
    else:
        raise QueryFileError(f"{path}: expected a .jsonl or .parquet query file")
    items: list[QueryItem] = []
    seen: dict[str, str] = {}
    for where, row in rows:
        try:
            item = QueryItem.model_validate(row)
        except ValidationError as error:
            raise QueryFileError(describe_validation_error(where, error)) from None
        except MetricError as error:
            raise QueryFileError(f"{where}: {error}") from None
        if item.query_id in seen:
            raise QueryFileError(f"{where}: query_id '{item.query_id}' already used at {seen[item.query_id]}")
        seen[item.query_id] = where
        items.append(item)
    if not items:
        raise QueryFileError(f"{path}: no queries")
    return items


def _jsonl_rows(path: Path) -> list[tuple[str, Any]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((f"{path}:{number}", json.loads(line)))
        except json.JSONDecodeError as error:
            raise QueryFileError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    return rows


# -- config ----------------------------------------------------------------------------------------
JUDGE_RUBRICS: dict[str, str] = {
    "correctness": (
        "Decide whether the response answers the question correctly, judged against the reference answer "
        "(for code, the tests the program must pass). Ignore style and length. "
        "1 = correct, 0 = incorrect, values in between only for partly correct answers."
    ),
    "quality": (
        "Rate the reasoning and presentation of the response as an example to learn from, whether or not "
        "its final answer is right: 0 = no reasoning or incoherent, 0.3 = a bare answer with minimal "
        "reasoning, 0.6 = some sound reasoning, 0.8 = clear, complete reasoning, 1 = excellent, clear, "
        "complete and well structured."
    ),
}
"""Correctness and quality are separate scores: FusionBench's single blended rubric mixed them."""

JUDGE_TEMPLATE = """You are grading a response to a question.

{rubric}

Question:
{query}

Reference answer:
{reference}

Response:
{response}

Reply with one number between 0 and 1 inside answer tags, for example <answer>0.5</answer>."""


class JudgeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="a declared model")
    rubric: Literal["correctness", "quality"] = "correctness"
    generation: GenerationParams = GenerationParams(max_new_tokens=256, temperature=0.0)


class CollectConfig(ModelsSection):
    """What to collect: the models (with prices), the arms, the query set, generation and judging."""

    arms: list[str] | None = Field(None, description="arm names (model or model_think); default every model x prompt_styles")
    prompt_styles: list[str] = Field(default_factory=lambda: ["direct", "think"], min_length=1)
    queries: Path = Field(description=".jsonl or .parquet query set; relative to the config file")
    generation: GenerationParams = Field(
        GenerationParams(max_new_tokens=512, temperature=0.0),
        description="for every model; fields set in a model's own `generation` override these (per-model budgets)",
    )
    samples: int = Field(1, ge=1, description="responses per (query, arm); each sample gets its own seed")
    judge: JudgeSettings | None = None

    @model_validator(mode="after")
    def _references(self) -> "CollectConfig":
        for style in self.prompt_styles:
            if style not in PROMPT_STYLES:
                raise ValueError(f"prompt_styles: unknown style '{style}' (known: {', '.join(PROMPT_STYLES)})")
        declared = {m.name for m in self.models}
        for arm in self.arms or []:
            model, _ = parse_arm(arm)
            if model not in declared:
                raise ValueError(f"arms: '{arm}' names no declared model (declared: {', '.join(sorted(declared))})")
        if self.arms is not None and len(set(self.arms)) != len(self.arms):
            raise ValueError("arms: an arm is listed twice")
        if self.judge:
            self.check_references(**{"judge.model": self.judge.model})
        return self

    def arm_list(self) -> list[str]:
        if self.arms is not None:
            return list(self.arms)
        return [arm_name(m.name, style) for m in self.models for style in self.prompt_styles]

    def params_for(self, model: str) -> GenerationParams:
        spec = self.model(model).generation
        return self.generation.merged(**{name: getattr(spec, name) for name in spec.model_fields_set})


def load_collect_config(path: str | Path) -> CollectConfig:
    """The config from YAML; a relative `queries` path is taken relative to the config file."""
    config = load_config(path, CollectConfig)
    if not config.queries.is_absolute():
        config.queries = Path(path).parent / config.queries
    return config


def demo_collect_config() -> CollectConfig:
    """The shipped demo: the packaged tiny-llama and SmolLM2 on the shipped query set, offline on CPU."""
    from importlib import resources

    return load_collect_config(Path(str(resources.files("llm_alloy.logs").joinpath("collect_demo.yaml"))))


# -- collection ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    query: QueryItem
    arm: str
    model: str
    prompt_style: str
    sample_index: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.query.query_id, self.arm, self.sample_index)


@dataclass
class ArmStats:
    rows: int = 0
    mean_performance: float | None = None
    mean_judge: float | None = None
    cost_usd: float = 0.0
    truncated: int = 0


@dataclass
class CollectSummary:
    logs_path: Path
    cells: int
    already_logged: int
    written: int
    model_calls: int
    cached_calls: int
    judge_failures: int
    cost_usd: float
    """Spent by this run (generation and judging), from the ledger; cached calls cost nothing."""
    arms: dict[str, ArmStats] = field(default_factory=dict)
    """Over every row of the log file, this run's and earlier ones."""


OnRecord = Callable[[LogRecord], None]


def collect_logs(
    config: CollectConfig, out_dir: str | Path, progress: bool = True, on_record: OnRecord | None = None
) -> CollectSummary:
    """Collect every missing (query, arm, sample) cell into OUT/logs.jsonl; rerun to resume.

    `on_record` sees each row right after it is written (an exception from it stops the run; the rows
    written so far stay)."""
    from llm_alloy.models.cache import ResponseCache
    from llm_alloy.models.factory import build_backend

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logs_path = out / LOGS_FILE
    queries = read_queries(config.queries)
    done = logged_cells(logs_path)
    cells = [
        Cell(query, arm, *parse_arm(arm), sample)
        for query in queries
        for arm in config.arm_list()
        for sample in range(config.samples)
    ]
    pending = [cell for cell in cells if cell.key not in done]
    ledger = Ledger.load(out / LEDGER_FILE)
    spent_before = ledger.total_cost
    cache = ResponseCache(out / CACHE_FILE)
    needed = sorted({c.model for c in pending} | ({config.judge.model} if config.judge and pending else set()))
    backends = {name: build_backend(config.model(name), cache) for name in needed}
    run = _Collection(config, backends, ledger, logs_path, on_record)
    try:
        asyncio.run(run.collect(pending, progress))
    except ModelError as error:
        raise ModelError(f"{error}; {run.written} new rows kept in {logs_path}, rerun to resume") from None
    finally:
        ledger.save(out / LEDGER_FILE)
        for backend in backends.values():
            backend.close()
        cache.close()
    return CollectSummary(
        logs_path=logs_path,
        cells=len(cells),
        already_logged=len(cells) - len(pending),
        written=run.written,
        model_calls=run.model_calls,
        cached_calls=run.cached_calls,
        judge_failures=run.judge_failures,
        cost_usd=ledger.total_cost - spent_before,
        arms=arm_stats(logs_path),
    )


class _Collection:
    """One run: workers per model pull batches of cells, generate, score, judge and append rows."""

    def __init__(self, config: CollectConfig, backends: dict[str, Backend], ledger: Ledger, logs_path: Path, on_record: OnRecord | None) -> None:
        self.config = config
        self.backends = backends
        self.ledger = ledger
        self.logs_path = logs_path
        self.on_record = on_record
        self.written = self.model_calls = self.cached_calls = self.judge_failures = 0

    async def collect(self, pending: list[Cell], progress: bool) -> None:
        from tqdm import tqdm

        if not pending:
            return
        self.in_process = asyncio.Lock()
        self.bar = tqdm(total=len(pending), desc="collect", unit="row", disable=not progress)
        by_model: dict[str, list[Cell]] = {}
        for cell in pending:
            by_model.setdefault(cell.model, []).append(cell)
        workers = []
        with self.bar:
            for model, model_cells in by_model.items():
                backend = self.backends[model]
                size = self.config.model(model).batch_size if backend.computes_in_process else 1
                queue: asyncio.Queue[list[Cell]] = asyncio.Queue()
                for start in range(0, len(model_cells), size):
                    queue.put_nowait(model_cells[start : start + size])
                count = 1 if backend.computes_in_process else self.config.model(model).max_concurrency
                workers += [asyncio.create_task(self._worker(backend, queue)) for _ in range(count)]
            try:
                await asyncio.gather(*workers)
            finally:
                for worker in workers:
                    worker.cancel()
                await asyncio.gather(*workers, return_exceptions=True)

    async def _worker(self, backend: Backend, queue: asyncio.Queue[list[Cell]]) -> None:
        while not queue.empty():
            await self._run_batch(backend, queue.get_nowait())

    async def _generate(self, backend: Backend, role: str, conversations, params, samples) -> tuple[list[Completion], float]:
        """Completions and the wall time waited for them; in-process models take turns."""
        async with self.in_process if backend.computes_in_process else contextlib.nullcontext():
            load = getattr(getattr(backend, "inner", backend), "load", None)
            if load is not None:
                # Loading the weights is not answering: keep it out of the first batch's latency.
                await asyncio.to_thread(load)
            started = time.perf_counter()
            completions = await backend.agenerate(conversations, params, sample_index=samples)
            elapsed = time.perf_counter() - started
        self.ledger.record(backend.name, role, completions, self.config.model(backend.name).price)
        return completions, elapsed

    async def _run_batch(self, backend: Backend, cells: list[Cell]) -> None:
        params = self.config.params_for(backend.name)
        prompts = [render_prompt(c.query.query, c.prompt_style) for c in cells]
        completions, elapsed = await self._generate(
            backend, "collect", [[{"role": "user", "content": p}] for p in prompts], params, [c.sample_index for c in cells]
        )
        self.model_calls += sum(not c.cached for c in completions)
        self.cached_calls += sum(c.cached for c in completions)
        scores = await asyncio.to_thread(
            lambda: [score_response(c.query.metric, k.text, c.query.ground_truth, **c.query.metric_options()) for c, k in zip(cells, completions)]
        )
        judged = await self._judge(cells, completions) if self.config.judge else [(None, {})] * len(cells)
        price = self.config.model(backend.name).price
        for cell, prompt, completion, score, (judge_score, judge_details) in zip(cells, prompts, completions, scores, judged):
            record = LogRecord(
                query_id=cell.query.query_id,
                arm=cell.arm,
                model=cell.model,
                prompt_style=cell.prompt_style,
                task=cell.query.task,
                task_description=cell.query.task_description,
                query=cell.query.query,
                prompt=prompt,
                ground_truth=cell.query.ground_truth,
                metric=cell.query.metric,
                response=completion.text,
                performance=score.value,
                score_details={**score.details, **judge_details},
                llm_judge=judge_score,
                judge_model=self.config.judge.model if self.config.judge else None,
                input_tokens=completion.usage.prompt_tokens,
                output_tokens=completion.usage.completion_tokens,
                cost=price.cost(completion.usage.prompt_tokens, completion.usage.completion_tokens),
                latency_s=None if completion.cached else elapsed,
                finish_reason=completion.finish_reason,
                served_model=_served_model(backend, completion),
                sample_index=cell.sample_index,
                task_id=cell.query.task_id,
                extra=_provenance(cell, backend, params, price),
            )
            self._append(record)

    async def _judge(self, cells: list[Cell], completions: list[Completion]) -> list[tuple[float | None, dict[str, Any]]]:
        settings = self.config.judge
        assert settings is not None
        judge = self.backends[settings.model]
        conversations = [
            [{"role": "user", "content": judge_prompt(settings.rubric, c.query, k.text)}] for c, k in zip(cells, completions)
        ]
        details: dict[str, Any] = {"judge_rubric": settings.rubric}
        try:
            verdicts, _ = await self._generate(judge, "judge", conversations, settings.generation, [c.sample_index for c in cells])
        except ModelError as error:
            # A failed judge call is a missing score, not a wrong answer: the row is kept, unjudged.
            self.judge_failures += len(cells)
            return [(None, {**details, "judge_error": str(error)})] * len(cells)
        results = []
        for verdict in verdicts:
            value = parse_judge_score(verdict.text)
            if value is None:
                self.judge_failures += 1
                results.append((None, {**details, "judge_error": f"unparsable verdict: {verdict.text[:80]!r}"}))
            else:
                results.append((value, details))
        return results

    def _append(self, record: LogRecord) -> None:
        append_logs([record], self.logs_path)
        self.written += 1
        self.bar.update()
        if self.on_record:
            self.on_record(record)


def _served_model(backend: Backend, completion: Completion) -> str | None:
    """The model id the server echoed back; an in-process model is the weights it loaded."""
    return completion.served_model or (backend.model_id if backend.computes_in_process else None)


def _provenance(cell: Cell, backend: Backend, params: GenerationParams, price) -> dict[str, Any]:
    """Test-only fields and what the call ran under (endpoint, sampling, price snapshot)."""
    extra: dict[str, Any] = {
        "backend": backend.identity,
        "generation": params.model_dump(mode="json", include={"max_new_tokens", "temperature", "top_p", "seed"}),
        "price": price.model_dump(),
    }
    if cell.query.tests is not None:
        extra["tests"] = cell.query.tests
    if cell.query.choices:
        extra["choices"] = cell.query.choices
    return extra


# -- judging ---------------------------------------------------------------------------------------
def judge_prompt(rubric: str, query: QueryItem, response: str) -> str:
    reference = query.ground_truth
    if query.metric == "code" and query.tests:
        reference = "\n".join(query.tests) if isinstance(query.tests, list) else query.tests
    return JUDGE_TEMPLATE.format(rubric=JUDGE_RUBRICS[rubric], query=query.query, reference=reference or "(none)", response=response)


_JUDGE_ANSWER = re.compile(r"<answer>\s*([-+]?\d*\.?\d+)\s*</answer>", re.IGNORECASE)


def parse_judge_score(text: str) -> float | None:
    """The number in the last `<answer>` tag; None when missing or outside [0, 1] (a judge grading on
    another scale is misbehaving, and clipping would turn its 8/10 into a perfect score)."""
    found = _JUDGE_ANSWER.findall(text)
    if not found:
        return None
    value = float(found[-1])
    return value if 0.0 <= value <= 1.0 else None


# -- reading back ----------------------------------------------------------------------------------
def logged_cells(path: Path) -> set[tuple[str, str, int]]:
    """The (query_id, arm, sample_index) cells already in a log file (a torn last line is skipped)."""
    if not path.exists():
        return set()
    return {(r.query_id, r.arm, r.sample_index) for r in iter_logs(path)}


def arm_stats(path: Path) -> dict[str, ArmStats]:
    rows: dict[str, list[LogRecord]] = {}
    for record in iter_logs(path):
        rows.setdefault(record.arm, []).append(record)
    stats = {}
    for arm, records in rows.items():
        performance = [r.performance for r in records if r.performance is not None]
        judge = [r.llm_judge for r in records if r.llm_judge is not None]
        stats[arm] = ArmStats(
            rows=len(records),
            mean_performance=sum(performance) / len(performance) if performance else None,
            mean_judge=sum(judge) / len(judge) if judge else None,
            cost_usd=sum(r.cost for r in records),
            truncated=sum(r.finish_reason == "length" for r in records),
        )
    return stats
