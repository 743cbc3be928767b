"""The text corpus of logit-level fusion: documents read from a file, cut into chunks of at most L
target tokens.

A chunk is a plain text slice of one document (cut at a target-token boundary), so every model reads
exactly the same characters with its own tokenizer and the chunks of a document concatenate back into
the document.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

import numpy as np

from llm_alloy.files import load_dataset_dir

T = TypeVar("T")


class CorpusError(ValueError):
    """A corpus that cannot be read; the message is one line naming the file and the problem."""


@dataclass(frozen=True)
class Chunk:
    id: int
    text: str


def read_corpus(path: str | Path, text_field: str = "text", limit: int | None = None) -> Iterator[str]:
    """Documents of a corpus, in file order, empty ones skipped; a missing file or unknown format
    fails at once, a missing text field when the reading gets there.

    Formats: `.jsonl` (one JSON object per line), `.parquet`, `.txt` (documents separated by blank
    lines), or a folder written by `datasets.Dataset.save_to_disk` (its `train` split, or its only one).
    """
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"{path}: corpus file not found")
    if path.is_dir():
        documents = _dataset_dir(path, text_field)
    elif path.suffix == ".jsonl":
        documents = _jsonl(path, text_field)
    elif path.suffix == ".parquet":
        documents = _parquet(path, text_field)
    elif path.suffix == ".txt":
        documents = _txt(path)
    else:
        raise CorpusError(f"{path}: unknown corpus format '{path.suffix}' (expected .jsonl, .parquet, .txt or a saved dataset folder)")
    return _non_empty(documents, limit)


def _non_empty(documents: Iterator[str], limit: int | None) -> Iterator[str]:
    count = 0
    for text in documents:
        if limit is not None and count >= limit:
            return
        if text.strip():
            count += 1
            yield text


def _check_text(value: Any, where: str, text_field: str) -> str:
    if not isinstance(value, str):
        raise CorpusError(f"{where}: field '{text_field}' is {type(value).__name__}, expected a string")
    return value


def _jsonl(path: Path, text_field: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise CorpusError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict) or text_field not in record:
                fields = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                raise CorpusError(f"{path}:{number}: no '{text_field}' field (found: {fields})")
            yield _check_text(record[text_field], f"{path}:{number}", text_field)


def _parquet(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    columns = parquet.schema_arrow.names
    if text_field not in columns:
        raise CorpusError(f"{path}: no '{text_field}' column (found: {', '.join(columns)})")
    for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            yield _check_text(value, str(path), text_field)


def _txt(path: Path) -> Iterator[str]:
    paragraph: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                paragraph.append(line)
            elif paragraph:
                yield "".join(paragraph).rstrip("\n")
                paragraph = []
    if paragraph:
        yield "".join(paragraph).rstrip("\n")


def _dataset_dir(path: Path, text_field: str) -> Iterator[str]:
    loaded = load_dataset_dir(path, CorpusError, split="train")
    if text_field not in loaded.column_names:
        raise CorpusError(f"{path}: no '{text_field}' column (found: {', '.join(loaded.column_names)})")
    for batch in loaded.select_columns([text_field]).iter(batch_size=1024):
        for value in batch[text_field]:
            yield _check_text(value, str(path), text_field)


def clean_boundaries(offsets: np.ndarray) -> np.ndarray:
    """Token indices where a document can be cut without splitting any token's characters.

    Byte-fallback and byte-level tokens of one character share or overlap spans; cutting between
    them would hand half of a character's tokens to each chunk.
    """
    starts, ends = offsets[:, 0], offsets[:, 1]
    if len(starts) == 0:
        return np.zeros(0, dtype=np.int64)
    reach = np.maximum.accumulate(ends)
    clean = np.ones(len(starts), dtype=bool)
    clean[1:] = starts[1:] >= reach[:-1]
    clean[1:] &= starts[1:] > starts[:-1]
    return np.flatnonzero(clean)


def cut_candidates(offsets: np.ndarray, clean: np.ndarray, position: int, max_tokens: int) -> np.ndarray:
    """Token indices where the chunk starting at token `position` may end, best first: the clean
    boundaries in reach, latest first; else (a run of tokens with no clean boundary) the last token
    in reach that starts a new character, or the first one past it."""
    reach = position + max_tokens
    inside = clean[np.searchsorted(clean, position, "right") : np.searchsorted(clean, reach, "right")]
    if len(inside):
        return inside[::-1]
    starts = offsets[:, 0]
    moves = np.flatnonzero(starts[position + 1 :] > starts[position]) + position + 1
    within = moves[moves <= reach]
    return within[-1:] if len(within) else moves[:1]


def chunk_corpus(texts: Iterable[str], target_tokenizer, max_tokens: int, batch_docs: int = 64) -> Iterator[Chunk]:
    """Cut each document into text chunks of at most `max_tokens` target tokens (special tokens not
    counted), numbered from 0 across the corpus.

    A slice can tokenize differently on its own (SentencePiece adds a word-start marker), so each
    chunk is re-tokenized and cut at an earlier clean boundary when it comes out too long.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    next_id = 0
    for batch in batched(texts, batch_docs):
        encoded = target_tokenizer(batch, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        for text, offsets in zip(batch, encoded["offset_mapping"]):
            for piece in _split(text, np.asarray(offsets, dtype=np.int64).reshape(-1, 2), target_tokenizer, max_tokens):
                yield Chunk(next_id, piece)
                next_id += 1


def _split(text: str, offsets: np.ndarray, tokenizer, max_tokens: int) -> Iterator[str]:
    def fits(piece: str) -> bool:
        return len(tokenizer(piece, add_special_tokens=False, verbose=False)["input_ids"]) <= max_tokens

    clean = clean_boundaries(offsets)
    char_start, position = 0, 0
    while True:
        rest = text[char_start:]
        if len(offsets) - position <= max_tokens and fits(rest):
            yield rest
            return
        candidates = cut_candidates(offsets, clean, position, max_tokens)
        if not len(candidates):
            yield rest
            return
        for cut in candidates:
            piece = text[char_start : offsets[cut, 0]]
            if fits(piece):
                break
        yield piece
        char_start, position = int(offsets[cut, 0]), int(cut)


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
