"""Reading and writing log records as JSONL, Parquet or a Hugging Face `datasets` directory.

The format follows the path: `*.jsonl`, `*.parquet`, or a directory (existing, or a new path without a
suffix) for `datasets.save_to_disk`. JSONL is the collection format: `append_logs` adds records with a
flush per line and an fsync per call, so a crash loses at most the line being written, and a torn last
line is skipped (with a warning) on read and cut off before the next append. Parquet and `datasets`
directories are the analysis formats; the dict fields (`score_details`, `extra`) are stored there as
JSON strings, so every format round-trips a record exactly.

Error messages name the file and the place: `line N` (1-based, as an editor shows it) for JSONL,
`row N` (0-based, as `dataset[N]` / `df.iloc[N]` finds it) for Parquet and `datasets`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from pydantic import ValidationError

from llm_alloy.config import describe_validation_error
from llm_alloy.files import load_dataset_dir
from llm_alloy.logs.schema import LogRecord

Format = Literal["jsonl", "parquet", "hf"]

_BATCH_ROWS = 4096


class LogFileError(ValueError):
    """A log file that cannot be read or written; one line naming the file, the line/row and the field."""


def read_logs(path: str | os.PathLike[str]) -> list[LogRecord]:
    return list(iter_logs(path))


def iter_logs(path: str | os.PathLike[str]) -> Iterator[LogRecord]:
    """Records one at a time, in file order, without loading the whole file (JSONL, Parquet batches)."""
    path = Path(path)
    if not path.exists():
        raise LogFileError(f"{path}: no such log file or directory")
    kind = _format_of(path)
    if kind == "jsonl":
        yield from _iter_jsonl(path)
    else:
        yield from _iter_tabular(path, kind)


def write_logs(records: Iterable[LogRecord], path: str | os.PathLike[str]) -> Path:
    """Replace `path` with exactly these records. The new content appears atomically: a crash mid-write
    leaves the previous file (or directory) untouched."""
    path = Path(path)
    kind = _format_of(path)
    if kind == "hf" and path.exists() and not _is_saved_dataset(path):
        raise LogFileError(f"{path}: exists and is not a `datasets` directory; refusing to replace it")
    with _replacing(path, is_dir=kind == "hf") as tmp:
        if kind == "jsonl":
            with tmp.open("w", encoding="utf-8") as handle:
                for record in records:
                    handle.write(_jsonl_line(record))
                handle.flush()
                os.fsync(handle.fileno())
        elif kind == "parquet":
            _write_parquet(records, tmp)
        else:
            _write_hf(records, tmp)
    return path


def append_logs(records: Iterable[LogRecord], path: str | os.PathLike[str]) -> int:
    """Append records to a JSONL log (created if missing); returns how many were written.

    Each line is flushed as it is written (a killed process loses at most that line) and the call ends
    with an fsync (a power loss loses at most this call). A torn last line left by an earlier crash is
    cut off first; otherwise the next record would be glued onto it, corrupting the middle of the file.
    """
    path = Path(path)
    if _format_of(path) != "jsonl":
        raise LogFileError(f"{path}: only .jsonl logs can be appended to")
    path.parent.mkdir(parents=True, exist_ok=True)
    _cut_torn_tail(path)
    written = 0
    with path.open("a", encoding="utf-8") as handle:
        for record in records:
            handle.write(_jsonl_line(record))
            handle.flush()
            written += 1
        os.fsync(handle.fileno())
    return written


def _format_of(path: Path) -> Format:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    if path.is_dir() or not suffix:
        return "hf"
    raise LogFileError(f"{path}: unsupported log format '{suffix}' (use .jsonl, .parquet or a directory)")


# --- JSONL ---


def _jsonl_line(record: LogRecord) -> str:
    return record.model_dump_json() + "\n"


def _iter_jsonl(path: Path) -> Iterator[LogRecord]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = LogRecord.model_validate_json(line)
            except ValidationError:
                record = _read_bad_line(line, path, number)
                if record is None:
                    return
            yield record


def _read_bad_line(line: str, path: Path, number: int) -> LogRecord | None:
    """The slow path for a line the fast parser refused: a torn tail (None), bad JSON, a bad field, or
    NaN for "missing" as other tools write it."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        # Lines are written whole with their newline, so only a crash leaves one without it.
        if not line.endswith("\n"):
            warnings.warn(f"{path}: skipping the torn last line {number} (an interrupted write)", stacklevel=4)
            return None
        raise LogFileError(f"{path}: line {number}: not valid JSON ({error.msg} at column {error.colno})") from None
    return _validate(row, f"{path}: line {number}")


def _cut_torn_tail(path: Path) -> None:
    if not path.exists() or path.stat().st_size == 0:
        return
    with path.open("rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
        size = handle.seek(0, os.SEEK_END)
        position = size
        while position > 0:
            step = min(65536, position)
            handle.seek(position - step)
            chunk = handle.read(step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                position = position - step + newline + 1
                break
            position -= step
        warnings.warn(f"{path}: cutting a torn last line ({size - position} bytes) before appending", stacklevel=3)
        handle.truncate(position)
        handle.flush()
        os.fsync(handle.fileno())


# --- Parquet and `datasets` directories ---


def _column_types() -> dict[str, Any]:
    """Arrow type per LogRecord field, derived from the annotations so a new field needs no edit here.
    Dict fields become JSON strings: Arrow structs would need one fixed set of keys across rows."""
    import pyarrow as pa

    arrow = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_(), dict: pa.string()}
    columns = {}
    for name, field in LogRecord.model_fields.items():
        annotation = field.annotation
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        columns[name] = arrow[typing.get_origin(annotation) or annotation]
    return columns


_NULLABLE_FLOATS = tuple(
    name for name, field in LogRecord.model_fields.items()
    if typing.get_origin(field.annotation) in (typing.Union, types.UnionType) and float in typing.get_args(field.annotation)
)


def _json_columns() -> set[str]:
    return {name for name, field in LogRecord.model_fields.items() if typing.get_origin(field.annotation) is dict}


def _arrow_schema():
    import pyarrow as pa

    return pa.schema([pa.field(name, kind) for name, kind in _column_types().items()])


def _record_batches(records: Iterable[LogRecord]) -> Iterator[Any]:
    import pyarrow as pa

    schema, json_columns = _arrow_schema(), _json_columns()
    rows: list[dict] = []
    for record in records:
        row = record.model_dump(mode="json")
        for name in json_columns:
            row[name] = json.dumps(row[name], ensure_ascii=False)
        rows.append(row)
        if len(rows) == _BATCH_ROWS:
            yield pa.RecordBatch.from_pylist(rows, schema=schema)
            rows = []
    if rows:
        yield pa.RecordBatch.from_pylist(rows, schema=schema)


def _write_parquet(records: Iterable[LogRecord], target: Path) -> None:
    import pyarrow.parquet as pq

    with pq.ParquetWriter(target, _arrow_schema()) as writer:
        for batch in _record_batches(records):
            writer.write_batch(batch)


def _write_hf(records: Iterable[LogRecord], target: Path) -> None:
    import datasets
    import pyarrow as pa

    table = pa.Table.from_batches(list(_record_batches(records)), schema=_arrow_schema())
    # At least one shard: `datasets` saves an empty table as zero shards, which it cannot load back.
    datasets.Dataset(table).save_to_disk(str(target), num_shards=1 if table.num_rows == 0 else None)


def _is_saved_dataset(path: Path) -> bool:
    return (path / "state.json").exists() or (path / "dataset_dict.json").exists()


def _iter_tabular(path: Path, kind: Format) -> Iterator[LogRecord]:
    json_columns = _json_columns()
    index = 0
    for batch in _tabular_batches(path, kind):
        for row in batch.to_pylist():
            where = f"{path}: row {index}"
            for name in json_columns & row.keys():
                row[name] = _decode_json_cell(row[name], f"{where}: {name}")
            yield _validate(row, where)
            index += 1


def _tabular_batches(path: Path, kind: Format) -> Iterator[Any]:
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as error:
            raise LogFileError(f"{path}: not a readable Parquet file ({error})") from None
        yield from parquet.iter_batches(batch_size=_BATCH_ROWS)
        return
    dataset = load_dataset_dir(path, LogFileError)
    yield from dataset.with_format("arrow").iter(batch_size=_BATCH_ROWS)


def _decode_json_cell(value: Any, where: str) -> Any:
    if not isinstance(value, str):
        return {} if value is None else value
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise LogFileError(f"{where}: not valid JSON ({error.msg})") from None


def _validate(row: Any, where: str) -> LogRecord:
    if not isinstance(row, dict):
        raise LogFileError(f"{where}: expected a JSON object, got {type(row).__name__}")
    # Tools such as pandas write "missing" as NaN; the schema's word for it is None.
    for name in _NULLABLE_FLOATS:
        value = row.get(name)
        if isinstance(value, float) and math.isnan(value):
            row[name] = None
    try:
        return LogRecord.model_validate(row)
    except ValidationError as error:
        raise LogFileError(describe_validation_error(where, error)) from None


@contextlib.contextmanager
def _replacing(target: Path, is_dir: bool) -> Iterator[Path]:
    """A temporary sibling path to write into, swapped over `target` only when writing succeeded."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    tmp = scratch / target.name
    try:
        yield tmp
        if not is_dir:
            os.replace(tmp, target)
        elif target.exists():
            # Directories cannot be renamed over a non-empty one: park the old one, then drop it.
            old = scratch / f"{target.name}.old"
            os.replace(target, old)
            os.replace(tmp, target)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
