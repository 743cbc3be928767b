"""Importing LLMFusionBench (FusionFactory's multi-LLM log set) into typed, id-keyed log records.

The published rows have no ids: each query is a positional block of one row per arm (model-direct,
model_think, ...), the query column holds the prompt as sent (so direct and think rows differ), the
query embedding is a stringified tensor on the block's first row only, code rows keep a stringified
dict such as "{'pass@1': np.float64(1.0)}" as their performance, and cost is in micro-dollars
(tokens x USD-per-million-tokens). This importer finds the blocks by content, not by counting rows,
checks every block, and returns:

- one `LogRecord` per row: `query_id` a stable hash of task + base query, `arm` = the `llm` column,
  `query` the base (direct) prompt, `prompt` the text as sent, `performance` a float with the metric's
  dict in `score_details`, `cost` in **US dollars** (the file's value x 1e-6), `llm_judge` None where
  the file has NaN or nothing. Token counts are the file's GPT-2 counts (not provider usage; see
  `extra["token_counter"]`); prices, the arm description and the file's own (per-split, leaky)
  normalised columns are kept in `extra`.
- an `EmbeddingTable` of the query embeddings (Longformer CLS, 768-d, as published; not normalised).

Task-description embeddings are dropped: the description is a fixed text per task, cheaper to
re-embed than to parse 256k times.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from pydantic import ValidationError

from llm_alloy.config import describe_validation_error
from llm_alloy.files import load_dataset_dir
from llm_alloy.logs.embeddings import EmbeddingTable
from llm_alloy.logs.schema import LogRecord, parse_arm

FUSIONBENCH_ENCODER = "allenai/longformer-base-4096 CLS (LLMFusionBench)"
FUSIONBENCH_POOLING = "cls"
FILE_COST_UNITS_PER_USD = 1_000_000
"""The file's cost is tokens x price-per-million-tokens, i.e. micro-dollars."""

REQUIRED_COLUMNS = ("task_name", "query", "query_embedding", "ground_truth", "metric", "llm", "performance", "cost", "response")

METRICS = {"cem": "substring", "em_mc": "choice", "GSM8K": "numeric", "MATH": "math", "code_eval": "code"}
"""LLMFusionBench metric ids -> ours (unknown ones, e.g. f1_score, pass through); the original id
stays in `extra["source_metric"]`. Note GSM8K ground truths are full solutions ("... #### 18")."""

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_SCORE_ENTRY = re.compile(rf"""['"]([^'"]+)['"]\s*:\s*(?:np\.\w+\(\s*)?({_NUMBER})""")
_THINK_PHRASE = re.compile(r"let['’]s\s+think\s+step\s+by\s+step\.?", re.IGNORECASE)
_MISSING_TEXT = {"", "nan", "none", "null"}


class FusionBenchFormatError(ValueError):
    """The file is not in the LLMFusionBench layout or a block is broken; one line naming the row."""


@dataclass
class _Row:
    index: int
    data: Mapping[str, Any]
    task: str
    arm: str
    model: str
    style: str
    key: str  # whitespace-normalised base query: what direct and think rows of one query share


@dataclass
class _Block:
    rows: list[_Row] = field(default_factory=list)

    @property
    def start(self) -> int:
        return self.rows[0].index

    @property
    def arms(self) -> list[str]:
        return [row.arm for row in self.rows]


def import_fusionbench(
    path_or_rows: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
    arms_per_query: int | None = None,
    allow_missing_arms: bool = False,
    progress: bool = True,
) -> tuple[list[LogRecord], EmbeddingTable]:
    """Records and query embeddings from LLMFusionBench rows: a .csv, .jsonl or .parquet file, a
    `datasets.save_to_disk` directory, or any iterable of row mappings (e.g. a loaded `datasets.Dataset`).

    Every block must start with an embedding, name each arm once, and have the same arm set as the
    other blocks (the most common set; `arms_per_query`, if given, is its required size). With
    `allow_missing_arms`, blocks may lack arms (failed calls that were dropped). Rows are numbered
    from 0 in file order in error messages.
    """
    from tqdm.auto import tqdm

    source, rows = _load_rows(path_or_rows)
    if not rows:
        raise FusionBenchFormatError(f"{source}: no rows")
    missing = [c for c in REQUIRED_COLUMNS if c not in rows[0]]
    if missing:
        raise FusionBenchFormatError(f"{source}: not the LLMFusionBench layout (missing columns: {', '.join(missing)})")
    blocks = _split_blocks(rows, source)
    expected = _expected_arms(blocks, arms_per_query, allow_missing_arms, source)
    for block in blocks:
        _check_block(block, expected, allow_missing_arms, source)

    records: list[LogRecord] = []
    ids: list[str] = []
    vectors: list[np.ndarray] = []
    samples: Counter[str] = Counter()
    for block in tqdm(blocks, desc="import LLMFusionBench", unit="query", disable=not progress):
        query_id = _query_id(block.rows[0].task, block.rows[0].key)
        sample_index = samples[query_id]
        samples[query_id] += 1
        if sample_index == 0:
            where = f"{source}: row {block.start}: query_embedding"
            vector = _parse_embedding(block.rows[0].data["query_embedding"], where)
            if vectors and vector.shape != vectors[0].shape:
                raise FusionBenchFormatError(f"{where}: {vector.size} values, but earlier embeddings have {vectors[0].size}")
            ids.append(query_id)
            vectors.append(vector)
        base_query = _base_query(block)
        records.extend(_record(row, query_id, base_query, sample_index, source) for row in block.rows)
    table = EmbeddingTable(ids, np.stack(vectors), encoder=FUSIONBENCH_ENCODER, pooling=FUSIONBENCH_POOLING)
    return records, table


# --- reading rows ---


def _load_rows(source: str | os.PathLike[str] | Iterable[Mapping[str, Any]]) -> tuple[str, list[Mapping[str, Any]]]:
    if not isinstance(source, (str, os.PathLike)):
        return "rows", list(source)
    path = Path(source)
    if not path.exists():
        raise FusionBenchFormatError(f"{path}: no such file or directory")
    suffix = path.suffix.lower()
    if path.is_dir():
        return str(path), _read_saved_dataset(path)
    if suffix == ".csv":
        return str(path), _read_csv(path)
    if suffix == ".jsonl":
        return str(path), _read_jsonl(path)
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return str(path), pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as error:
            raise FusionBenchFormatError(f"{path}: not a readable Parquet file ({error})") from None
    raise FusionBenchFormatError(f"{path}: unsupported format '{suffix}' (use .csv, .jsonl, .parquet or a `datasets` directory)")


def _read_csv(path: Path) -> list[dict[str, str]]:
    # Stringified 768-d embeddings and long prompts exceed the csv module's default 128 KiB cell limit.
    csv.field_size_limit(max(csv.field_size_limit(), min(sys.maxsize, 2**31 - 1)))
    # data_combine.py wrote with pandas' `escapechar='\\'`, which doubles every backslash in a cell.
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, escapechar="\\"))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise FusionBenchFormatError(f"{path}: line {number}: not valid JSON ({error.msg})") from None
    return rows


def _read_saved_dataset(path: Path) -> list[dict[str, Any]]:
    return load_dataset_dir(path, FusionBenchFormatError).to_list()


# --- blocks ---


def _split_blocks(rows: list[Mapping[str, Any]], source: str) -> list[_Block]:
    """A block is the run of rows of one task and one base query. A row carrying an embedding starts a
    new block even for the same query: the dataset asked that question again (a second sample)."""
    blocks: list[_Block] = []
    for index, data in enumerate(rows):
        task, arm, prompt = (_text(data.get(name)) for name in ("task_name", "llm", "query"))
        for name, value in (("task_name", task), ("llm", arm), ("query", prompt)):
            if not value:
                raise FusionBenchFormatError(f"{source}: row {index}: {name} is empty")
        model, style = parse_arm(arm)
        row = _Row(index, data, task, arm, model, style, _base_key(prompt, style))
        current = blocks[-1].rows[0] if blocks else None
        starts_block = (
            current is None or row.task != current.task or row.key != current.key
            or not _is_missing(data.get("query_embedding"))
        )
        if starts_block:
            blocks.append(_Block())
        blocks[-1].rows.append(row)
    return blocks


def _expected_arms(blocks: list[_Block], arms_per_query: int | None, allow_missing: bool, source: str) -> list[str]:
    """The arm set blocks should have: the most common one (ties: the earliest), so one broken block is
    reported as broken instead of making every other block look wrong. With missing arms allowed, the
    union of all arms."""
    if allow_missing:
        expected = list(dict.fromkeys(arm for block in blocks for arm in block.arms))
    else:
        counts = Counter(frozenset(block.arms) for block in blocks)
        most_common = counts.most_common(1)[0][0]
        expected = next(list(dict.fromkeys(b.arms)) for b in blocks if frozenset(b.arms) == most_common)
    if arms_per_query is not None and len(expected) != arms_per_query:
        raise FusionBenchFormatError(
            f"{source}: expected {arms_per_query} arms per query, but the blocks have {len(expected)} "
            f"({', '.join(expected)})"
        )
    return expected


def _check_block(block: _Block, expected: list[str], allow_missing: bool, source: str) -> None:
    first = block.rows[0]
    where = f"{source}: row {block.start} (task {first.task}, query {_preview(first.key)})"
    if _is_missing(first.data.get("query_embedding")):
        raise FusionBenchFormatError(f"{where}: the block's first row has no query_embedding")
    seen: set[str] = set()
    for row in block.rows:
        if row.arm in seen:
            raise FusionBenchFormatError(f"{source}: row {row.index}: arm '{row.arm}' appears twice in the block starting at row {block.start}")
        seen.add(row.arm)
    unexpected = [arm for arm in block.arms if arm not in expected]
    if unexpected:
        raise FusionBenchFormatError(f"{where}: arms not in the other blocks: {', '.join(unexpected)}")
    absent = [arm for arm in expected if arm not in seen]
    if absent and not allow_missing:
        raise FusionBenchFormatError(
            f"{where}: block has {len(block.rows)} of {len(expected)} arms, missing {', '.join(absent)} "
            "(cut or failed rows; allow_missing_arms / --allow-missing-arms accepts them)"
        )


def _base_key(prompt: str, style: str) -> str:
    """The think prompt is the direct one plus "Let's think step by step" (at the end, or before a
    closing line, with template-dependent whitespace), so drop the phrase and normalise whitespace."""
    if style == "think":
        matches = list(_THINK_PHRASE.finditer(prompt))
        if matches:
            last = matches[-1]
            prompt = prompt[: last.start()] + " " + prompt[last.end():]
    return " ".join(prompt.split())


def _base_query(block: _Block) -> str:
    """The direct prompt as sent: the text every prompt style wraps. Without a direct row, the think
    prompt minus its phrase, whitespace-normalised."""
    for row in block.rows:
        if row.style == "direct":
            return _text(row.data["query"])
    return block.rows[0].key


def _query_id(task: str, key: str) -> str:
    digest = hashlib.sha256(f"{task}\x00{key}".encode()).hexdigest()
    return f"{task}-{digest[:16]}"


# --- cells ---


def _record(row: _Row, query_id: str, base_query: str, sample_index: int, source: str) -> LogRecord:
    data, where = row.data, f"{source}: row {row.index}"
    performance, details = _parse_performance(data.get("performance"), f"{where}: performance")
    source_metric = _text(data.get("metric"))
    extra: dict[str, Any] = {
        "source": "LLMFusionBench",
        "source_row": row.index,
        "source_metric": source_metric,
        "token_counter": "gpt2",
        "input_price_per_mtok": _number(data.get("input_price"), f"{where}: input_price"),
        "output_price_per_mtok": _number(data.get("output_price"), f"{where}: output_price"),
        "llm_description": _text(data.get("llm_description")),
    }
    for name in ("normalized_performance", "normalized_cost"):
        if name in data:
            extra[name] = _number(data[name], f"{where}: {name}")
    cost = _number(data.get("cost"), f"{where}: cost")
    fields = dict(
        query_id=query_id,
        arm=row.arm,
        model=row.model,
        prompt_style=row.style,
        task=row.task,
        task_description=_text(data.get("task_description")),
        query=base_query,
        prompt=_text(data.get("query")),
        ground_truth=_text(data.get("ground_truth")),
        metric=METRICS.get(source_metric, source_metric),
        response=_text(data.get("response")),
        performance=performance,
        score_details=details,
        llm_judge=_number(data.get("llm_judge"), f"{where}: llm_judge"),
        input_tokens=_count(data.get("input_tokens_num"), f"{where}: input_tokens_num"),
        output_tokens=_count(data.get("output_tokens_num"), f"{where}: output_tokens_num"),
        cost=0.0 if cost is None else cost / FILE_COST_UNITS_PER_USD,
        sample_index=sample_index,
        task_id=_task_id(data.get("task_id")),
        extra=extra,
    )
    try:
        return LogRecord(**fields)
    except ValidationError as error:
        raise FusionBenchFormatError(describe_validation_error(where, error)) from None


def _parse_performance(value: Any, where: str) -> tuple[float | None, dict[str, float]]:
    """A float, or a metric dict (code rows: "{'pass@1': np.float64(1.0)}"), read with a regex: the
    text comes from a file, so it is never evaluated."""
    if _is_missing(value):
        return None, {}
    if isinstance(value, Mapping):
        scores = {str(k): float(v) for k, v in value.items()}
    elif isinstance(value, str) and value.strip().startswith("{") and value.strip().endswith("}"):
        scores = {name: float(number) for name, number in _SCORE_ENTRY.findall(value)}
    else:
        return _number(value, where), {}
    if "pass@1" in scores:
        return scores["pass@1"], scores
    if len(scores) == 1:
        return next(iter(scores.values())), scores
    raise FusionBenchFormatError(f"{where}: cannot read a score from {_preview(value)}")


def _parse_embedding(value: Any, where: str) -> np.ndarray:
    """"tensor([[0.1, ...]])", "[0.1, ...]", "[0.1 0.2]" (numpy) or a list of numbers -> float32 (D,)."""
    if isinstance(value, str):
        if "..." in value:
            raise FusionBenchFormatError(f"{where}: abbreviated when it was printed ('...'); the values are lost")
        start, end = value.find("["), value.rfind("]")
        if start < 0 or end < start:
            raise FusionBenchFormatError(f"{where}: not a stringified vector: {_preview(value)}")
        # Only between the brackets: "device='cuda:0'" or "dtype=..." after them are not values.
        numbers_found = re.findall(_NUMBER, value[start : end + 1])
        vector = np.array(numbers_found, dtype=np.float64).astype(np.float32)
    else:
        try:
            vector = np.asarray(value, dtype=np.float32).ravel()
        except (TypeError, ValueError):
            raise FusionBenchFormatError(f"{where}: not a vector: {_preview(value)}") from None
    if vector.size == 0:
        raise FusionBenchFormatError(f"{where}: empty vector")
    return vector


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, str):
        return value.strip().lower() in _MISSING_TEXT
    return False


def _text(value: Any) -> str:
    if _is_missing(value):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _number(value: Any, where: str) -> float | None:
    if _is_missing(value):
        return None
    try:
        number = float(value) if isinstance(value, (int, float, np.number)) else float(str(value).strip())
    except ValueError:
        raise FusionBenchFormatError(f"{where}: not a number: {_preview(value)}") from None
    return None if math.isnan(number) else number


def _count(value: Any, where: str) -> int:
    number = _number(value, where)
    if number is None:
        return 0
    if not number.is_integer():
        raise FusionBenchFormatError(f"{where}: not a whole number: {_preview(value)}")
    return int(number)


def _task_id(value: Any) -> str | None:
    """MBPP ids pass through a float column in pandas ("601.0"); the dataset's id is "601"."""
    text = _text(value).strip()
    if re.fullmatch(r"\d+\.0", text):
        text = text[:-2]
    return text or None


def _preview(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
