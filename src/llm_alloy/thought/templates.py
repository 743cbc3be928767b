"""Thought templates: abstract reasoning guides distilled from the best responses to training queries.

Build: per training query, the top responses (logs.select) go to a summariser model that writes a
1-5 sentence template without seeing the ground truth. Templates are appended to `templates.jsonl` as
they are made and every summariser call goes through the response cache, so a killed build resumes
without asking anything twice. Queries of the validation and test splits are never summarised: a
template built from a test query would hand its reasoning to the very query it is evaluated on.

Apply: the stored templates most similar to a new query (same task first, then cosine; task-agnostic
when the task is unknown) are put before it, and the answer is asked for in the question's own format.
"""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from string import Template
from typing import Callable, Collection, Iterable, Iterator, Sequence

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

from llm_alloy.files import write_atomic
from llm_alloy.logs.embeddings import embed_texts, unit_rows
from llm_alloy.logs.matrix import split_of
from llm_alloy.logs.schema import LogRecord
from llm_alloy.logs.select import Criterion, group_by_query, normalised_text, top_responses
from llm_alloy.models.base import Backend
from llm_alloy.models.cache import CachedBackend, ResponseCache
from llm_alloy.models.types import Conversation, GenerationParams

Embed = Callable[[list[str]], np.ndarray]
"""Texts -> (N, D) float32 vectors (L2-normalised or not: the store normalises)."""

TEMPLATES_FILE = "templates.jsonl"
EMBEDDINGS_FILE = "embeddings.safetensors"
CACHE_FILE = "cache.sqlite"
REPORT_FILE = "build.json"
PROMPT_VERSION = 1
SOLUTION_CHARS = 1000
"""Each solution shown to the summariser is cut here (FusionFactory's limit), bounding the prompt."""
MIN_TEMPLATE_CHARS = 20
COPIED_SHARE = 0.8
"""A template mostly made of verbatim runs of one solution is an excerpt, not a summary."""
SUMMARY_PARAMS = GenerationParams(max_new_tokens=256, temperature=0.2)
"""Sampled, so the one retry of a degenerate template (another sample index) can come out different."""
_GENERIC_ANSWERS = {"true", "false", "yes", "no"}


class TemplateStoreError(ValueError):
    """A template store directory that cannot be used; the message names the file and the problem."""


class ThoughtTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query_id: str = Field(min_length=1)
    task: str = Field(min_length=1)
    task_description: str = ""
    query: str = Field(description="the base query the template was distilled from")
    template: str = Field(min_length=1)
    sources: list[str] = Field(default_factory=list, description="arms whose responses were summarised")


@dataclass
class Retrieved:
    template: ThoughtTemplate
    similarity: float


# -- the store ------------------------------------------------------------------------------------


@dataclass
class TemplateStore:
    """Templates and the embeddings of their queries (row i belongs to templates[i])."""

    templates: list[ThoughtTemplate]
    embeddings: np.ndarray
    encoder: str

    def __post_init__(self) -> None:
        vectors = np.asarray(self.embeddings, dtype=np.float32)
        if vectors.size == 0 and not self.templates:
            vectors = vectors.reshape(0, vectors.shape[-1] if vectors.ndim == 2 else 0)
        if vectors.ndim != 2 or len(vectors) != len(self.templates):
            raise TemplateStoreError(f"{len(self.templates)} templates but embeddings of shape {vectors.shape}")
        self.embeddings = unit_rows(vectors)

    def save(self, directory: str | Path) -> None:
        from safetensors.numpy import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(directory / TEMPLATES_FILE, "".join(_jsonl_line(t) for t in self.templates))
        metadata = {"encoder": self.encoder, "query_ids": json.dumps([t.query_id for t in self.templates])}
        save_file({"embeddings": np.ascontiguousarray(self.embeddings)}, str(directory / EMBEDDINGS_FILE), metadata)

    @classmethod
    def load(cls, directory: str | Path) -> "TemplateStore":
        from safetensors import safe_open

        directory = Path(directory)
        templates = read_templates(directory / TEMPLATES_FILE)
        vectors_path = directory / EMBEDDINGS_FILE
        if not vectors_path.exists():
            raise TemplateStoreError(f"{vectors_path}: missing (not a template store, or its build did not finish)")
        with safe_open(str(vectors_path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            embeddings = handle.get_tensor("embeddings")
        if json.loads(metadata.get("query_ids", "[]")) != [t.query_id for t in templates]:
            raise TemplateStoreError(f"{vectors_path}: embeddings do not match {TEMPLATES_FILE} (rebuild the store)")
        return cls(templates, embeddings, metadata.get("encoder", ""))


def read_templates(path: Path) -> list[ThoughtTemplate]:
    """Templates of a jsonl file. An unterminated last line is what a killed build leaves: dropped."""
    if not path.exists():
        raise TemplateStoreError(f"{path}: missing")
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines[-1]:
        lines = lines[:-1]
    templates = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            templates.append(ThoughtTemplate.model_validate_json(line))
        except ValueError as error:
            raise TemplateStoreError(f"{path}:{number}: not a thought template ({str(error).splitlines()[0]})") from None
    return templates


def _jsonl_line(template: ThoughtTemplate) -> str:
    return json.dumps(template.model_dump(), ensure_ascii=False) + "\n"


def default_embed(encoder: str) -> Embed:
    return lambda texts: embed_texts(texts, model=encoder)


# -- the summariser prompt and its output ---------------------------------------------------------


def _prompt_file(name: str) -> str:
    return resources.files("llm_alloy.thought").joinpath("prompts", name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _summary_turns() -> tuple[dict[str, str], ...]:
    return tuple(yaml.safe_load(_prompt_file(f"summarise.v{PROMPT_VERSION}.yaml")))


def summary_conversation(query: str, task_description: str, solutions: Sequence[str]) -> Conversation:
    turns = _summary_turns()
    shown = "\n\n".join(f"Solution {i}:\n{s.strip()[:SOLUTION_CHARS]}" for i, s in enumerate(solutions, 1))
    values = {"query": query.strip(), "task_description": task_description.strip() or "(none given)", "solutions": shown}
    return [{"role": turn["role"], "content": Template(turn["content"]).substitute(values)} for turn in turns]


def parse_template(text: str, solutions: Sequence[str], ground_truth: str) -> tuple[str | None, str]:
    """(the template, "ok") or (None, why it is unusable)."""
    template = re.sub(r"^(?:here is[^:\n]*:|\**(?:thought )?template\**\s*:\**)\s*", "", text.strip(), flags=re.IGNORECASE)
    template = template.strip().strip('"').strip()
    if not template:
        return None, "empty"
    if len(template) < MIN_TEMPLATE_CHARS:
        return None, "too short"
    words = normalised_text(template).split()
    if len(words) >= 8 and len(set(words)) / len(words) < 0.25:
        return None, "repetitive"
    # Small summarisers echo the prompt's worked example as readily as the solutions.
    examples = [turn["content"] for turn in _summary_turns() if turn["role"] == "assistant"]
    if any(_copied_share(words, normalised_text(s).split()) >= COPIED_SHARE for s in [*solutions, *examples]):
        return None, "copy of a solution or the example"
    if _states_answer(" ".join(words), ground_truth):
        return None, "states the answer"
    return template, "ok"


def _copied_share(words: list[str], solution: list[str]) -> float:
    """The share of the template's words that sit in verbatim runs (4+ words) of the solution."""
    matcher = difflib.SequenceMatcher(None, words, solution, autojunk=False)
    copied = sum(block.size for block in matcher.get_matching_blocks() if block.size >= 4)
    return copied / max(len(words), 1)


def _states_answer(flat_template: str, ground_truth: str) -> bool:
    """A template that spells out its own question's short answer is about that question, not a kind
    of question. Long ground truths (solutions, test code) and generic ones (True, a letter) are not
    checked: they say nothing specific or cannot be found verbatim."""
    answer = normalised_text(ground_truth)
    if len(answer) < 2 or len(answer.split()) > 6 or answer in _GENERIC_ANSWERS:
        return False
    return re.search(rf"(?<![\w.]){re.escape(answer)}(?![\w])", flat_template) is not None


# -- building -------------------------------------------------------------------------------------


@dataclass
class BuildReport:
    train_queries: int = 0
    refused_queries: int = 0
    """Validation and test queries in the logs: never summarised."""
    without_top_responses: int = 0
    reused: int = 0
    built: int = 0
    retried: int = 0
    skipped: int = 0
    rejections: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict:
        return {**asdict(self), "rejections": dict(sorted(self.rejections.items()))}


@dataclass
class _Job:
    query_id: str
    first: LogRecord
    selected: list[LogRecord]

    def conversation(self) -> Conversation:
        return summary_conversation(self.first.query, self.first.task_description, [r.response for r in self.selected])

    def template(self, text: str) -> ThoughtTemplate:
        return ThoughtTemplate(
            query_id=self.query_id,
            task=self.first.task,
            task_description=self.first.task_description,
            query=self.first.query,
            template=text,
            sources=[r.arm for r in self.selected],
        )


def build_templates(
    records: Iterable[LogRecord],
    summariser: Backend,
    out_dir: str | Path,
    *,
    criterion: Criterion = "hybrid",
    k: int = 3,
    pool: Collection[str] | None = None,
    validation: float = 0.1,
    test: float = 0.2,
    salt: str = "",
    encoder: str = "minilm-l6",
    embed: Embed | None = None,
    params: GenerationParams = SUMMARY_PARAMS,
    batch_size: int = 8,
    progress: bool = True,
) -> tuple[TemplateStore, BuildReport]:
    """Summarise the top-k responses of every training query into a template; save the store in out_dir.

    The split fractions and salt must be the ones the routers and the evaluation use, so that exactly
    the training queries are summarised. Rerunning with the same out_dir finishes a killed build.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = BuildReport()
    groups = group_by_query(records)
    train = {q: rows for q, rows in groups.items() if split_of(q, validation, test, salt) == "train"}
    report.train_queries, report.refused_queries = len(train), len(groups) - len(train)

    path = out_dir / TEMPLATES_FILE
    made = {t.query_id: t for t in read_templates(path)} if path.exists() else {}
    made = {q: t for q, t in made.items() if q in train}
    report.reused = len(made)
    write_atomic(path, "".join(_jsonl_line(t) for t in made.values()))  # drops a torn last line

    jobs = []
    for query_id, rows in train.items():
        if query_id in made:
            continue
        selected = top_responses(rows, criterion, k, pool)
        if selected:
            jobs.append(_Job(query_id, rows[0], selected))
        else:
            report.without_top_responses += 1

    cache = None if isinstance(summariser, CachedBackend) else ResponseCache(out_dir / CACHE_FILE)
    backend = summariser if cache is None else CachedBackend(summariser, cache)
    try:
        with path.open("a", encoding="utf-8") as sink:
            for template in _summarise(jobs, backend, params, batch_size, progress, report):
                made[template.query_id] = template
                sink.write(_jsonl_line(template))
                sink.flush()
    finally:
        if cache is not None:
            cache.close()

    templates = [made[q] for q in train if q in made]
    vectors = (embed or default_embed(encoder))([t.query for t in templates]) if templates else np.zeros((0, 0), np.float32)
    store = TemplateStore(templates, vectors, encoder)
    store.save(out_dir)
    write_atomic(out_dir / REPORT_FILE, json.dumps(report.to_dict(), indent=1))
    return store, report


def _summarise(
    jobs: list[_Job], backend: Backend, params: GenerationParams, batch_size: int, progress: bool, report: BuildReport
) -> Iterator[ThoughtTemplate]:
    """Templates as they are made. A degenerate summary is asked for once more as another sample
    (a new seed, a new cache entry), then given up on."""
    from tqdm import tqdm

    with tqdm(total=len(jobs), desc="templates", disable=not progress) as bar:
        for start in range(0, len(jobs), batch_size):
            pending = jobs[start : start + batch_size]
            for attempt in (0, 1):
                if not pending:
                    break
                report.retried += len(pending) if attempt else 0
                completions = backend.generate([j.conversation() for j in pending], params, attempt)
                retry = []
                for job, completion in zip(pending, completions):
                    text, outcome = parse_template(completion.text, [r.response for r in job.selected], job.first.ground_truth)
                    if text is None:
                        report.rejections[outcome] += 1
                        retry.append(job)
                        continue
                    report.built += 1
                    bar.update()
                    yield job.template(text)
                pending = retry
            report.skipped += len(pending)
            bar.update(len(pending))


# -- retrieval and injection ----------------------------------------------------------------------


def retrieve_many(
    store: TemplateStore,
    queries: Sequence[str],
    tasks: Sequence[str | None] | None = None,
    k: int = 3,
    embed: Embed | None = None,
) -> list[list[Retrieved]]:
    """Per query, the k templates of its task most similar to it, then (if its task has fewer than k,
    or the task is None) the most similar of any task."""
    if not store.templates or not queries:
        return [[] for _ in queries]
    tasks = list(tasks) if tasks is not None else [None] * len(queries)
    vectors = unit_rows(np.asarray((embed or default_embed(store.encoder))(list(queries)), dtype=np.float32))
    similarities = vectors @ store.embeddings.T
    stored_tasks = np.array([t.task for t in store.templates])
    results = []
    for row, task in zip(similarities, tasks):
        other_task = stored_tasks != task
        order = np.lexsort((-row, other_task))[:k]  # last key first: same task, then similarity
        results.append([Retrieved(store.templates[i], float(row[i])) for i in order])
    return results


def retrieve(store: TemplateStore, query: str, task: str | None = None, k: int = 3, embed: Embed | None = None) -> list[Retrieved]:
    return retrieve_many(store, [query], [task], k, embed)[0]


def inject(query: str, retrieved: Sequence[Retrieved]) -> str:
    """The prompt with the retrieved templates before the query (FusionFactory §3.3). The answer is
    asked for in the question's own format, which is what the task metric parses."""
    if not retrieved:
        return query
    examples = "\n\n".join(
        f"Question {i}: {r.template.query.strip()[:SOLUTION_CHARS]}\nThought Template {i}: {r.template.template}"
        for i, r in enumerate(retrieved, 1)
    )
    return Template(_prompt_file(f"inject.v{PROMPT_VERSION}.txt")).substitute(examples=examples, query=query.strip()).strip()
