"""Top-k shards of one source model: written shard by shard and resumable, read back by chunk id.

Layout: `OUT/sources/<source>/shard-00000.safetensors` + `manifest.json`. A shard holds `shard_size`
chunks, concatenated: `token_ids` int32 (N,), `offsets` int32 (N,2), `topk_ids` int32 (N,k) (-1 = no
entry), `topk_logprobs` float16 (N,k) (-inf where the id is -1), `seq_starts` int64 (n+1,),
`chunk_ids` int64 (n,), `ce` float32 (n,). Row i of a sequence is the distribution after reading its
token i (predicting token i+1); special tokens with empty spans (BOS) have no row.

A shard file is renamed into place whole and only then recorded in the manifest, so a killed run
loses at most the shard in progress; a rerun skips every recorded shard whose chunk texts hash the
same, and refuses to mix a different model, k or corpus into the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from llm_alloy.distill.corpus import Chunk, batched
from llm_alloy.files import write_atomic

FORMAT = 1
MANIFEST = "manifest.json"
HEADER_KEYS = ("format", "source", "model", "tokenizer", "k", "shard_size")


class ShardError(ValueError):
    """A shard folder that cannot be used as asked; the message is one line naming the folder."""


@dataclass
class SourceSequence:
    """One chunk as one source model read it (numpy arrays, one row per non-special token)."""

    token_ids: np.ndarray  # int32 (n,)
    offsets: np.ndarray  # int32 (n, 2), character spans in the chunk text
    topk_ids: np.ndarray  # int32 (n, k), -1 = no entry
    topk_logprobs: np.ndarray  # float16 (n, k)
    ce: float  # mean next-token NLL of the source on the chunk; NaN when nothing was predicted


ComputeShard = Callable[[list[Chunk], Callable[[int], Any]], list[SourceSequence]]
"""Computes the sequences of a shard's chunks, calling the second argument with the number of chunks done."""


def source_dir(out_dir: str | Path, source: str) -> Path:
    return Path(out_dir) / "sources" / source


def texts_digest(chunks: Iterable[Chunk]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        encoded = chunk.text.encode("utf-8")
        digest.update(f"{chunk.id}:{len(encoded)}:".encode() + encoded)
    return digest.hexdigest()


def shard_header(source: str, model: str, tokenizer: str, k: int, shard_size: int) -> dict[str, Any]:
    """What a shard folder's content depends on, besides the corpus."""
    if k < 1 or shard_size < 1:
        raise ValueError(f"k and shard_size must be at least 1, got k={k}, shard_size={shard_size}")
    return {"format": FORMAT, "source": source, "model": model, "tokenizer": tokenizer, "k": k, "shard_size": shard_size}


class ShardWriter:
    def __init__(self, directory: Path, header: dict[str, Any]) -> None:
        self.directory = directory
        self.manifest_path = directory / MANIFEST
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(".shard-*.tmp"):
            stale.unlink()
        if self.manifest_path.exists():
            self.manifest = _read_manifest(self.manifest_path)
            for key in HEADER_KEYS:
                if self.manifest.get(key) != header[key]:
                    raise ShardError(
                        f"{self.manifest_path}: made with {key}={self.manifest.get(key)!r}, now {key}={header[key]!r};"
                        f" use another output folder or delete {directory}"
                    )
        else:
            self.manifest = {**header, "complete": False, "n_chunks": None, "corpus_sha256": None, "shards": []}
        self.records = {record["index"]: record for record in self.manifest["shards"]}
        self.digests: list[str] = []

    def done(self, index: int, chunks: list[Chunk]) -> bool:
        """Whether this shard is already written; raises if it was written from other text."""
        digest = texts_digest(chunks)
        self.digests.append(digest)
        record = self.records.get(index)
        if record is None:
            if self.manifest["complete"]:
                raise ShardError(f"{self.manifest_path}: the corpus now has more than the {self.manifest['n_chunks']} chunks it was made from; use another output folder")
            return False
        if record["texts_sha256"] != digest:
            raise ShardError(
                f"{self.manifest_path}: shard {index} was made from other text (chunks {record['first_chunk']}-{record['last_chunk']});"
                f" the corpus or its chunking changed: use another output folder or delete {self.directory}"
            )
        path = self.directory / record["file"]
        return path.exists() and path.stat().st_size == record["bytes"]

    def write(self, index: int, chunks: list[Chunk], sequences: list[SourceSequence]) -> dict[str, Any]:
        from safetensors.numpy import save_file

        name = f"shard-{index:05d}.safetensors"
        tensors = _concatenate(chunks, sequences, self.manifest["k"])
        tmp = self.directory / f".{name}.tmp"
        save_file(tensors, str(tmp), metadata={"source": self.manifest["source"], "k": str(self.manifest["k"])})
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, self.directory / name)
        record = {
            "index": index,
            "file": name,
            "first_chunk": chunks[0].id,
            "last_chunk": chunks[-1].id,
            "n_chunks": len(chunks),
            "rows": int(len(tensors["token_ids"])),
            "bytes": (self.directory / name).stat().st_size,
            "texts_sha256": self.digests[index],
            "complete": True,
        }
        self.records[index] = record
        self._save()
        return record

    def finish(self) -> None:
        extra = sorted(i for i in self.records if i >= len(self.digests))
        if extra:
            raise ShardError(f"{self.manifest_path}: holds shards past the end of the corpus (shard {extra[0]} on); the corpus shrank: use another output folder")
        self.manifest["complete"] = True
        self.manifest["n_chunks"] = sum(record["n_chunks"] for record in self.records.values())
        self.manifest["corpus_sha256"] = hashlib.sha256("".join(self.digests).encode()).hexdigest()
        self._save()

    def _save(self) -> None:
        self.manifest["shards"] = [self.records[i] for i in sorted(self.records)]
        write_atomic(self.manifest_path, json.dumps(self.manifest, indent=1) + "\n")


def write_shards(
    chunks: Iterable[Chunk],
    directory: Path,
    header: dict[str, Any],
    compute: ComputeShard,
    progress: bool = True,
    on_shard: Callable[[dict[str, Any]], None] | None = None,
) -> "SourceShards":
    """Stream the chunks through `compute` one shard at a time, skipping shards already written."""
    from tqdm.auto import tqdm

    writer = ShardWriter(directory, header)
    with tqdm(desc=f"top-k {header['source']}", unit="chunk", disable=not progress) as bar:
        for index, shard_chunks in enumerate(batched(chunks, header["shard_size"])):
            if writer.done(index, shard_chunks):
                bar.update(len(shard_chunks))
                continue
            record = writer.write(index, shard_chunks, compute(shard_chunks, bar.update))
            if on_shard:
                on_shard(record)
    writer.finish()
    return SourceShards(directory)


def _concatenate(chunks: list[Chunk], sequences: list[SourceSequence], k: int) -> dict[str, np.ndarray]:
    lengths = [len(s.token_ids) for s in sequences]
    return {
        "token_ids": np.concatenate([s.token_ids for s in sequences]).astype(np.int32),
        "offsets": np.concatenate([s.offsets.reshape(-1, 2) for s in sequences]).astype(np.int32),
        "topk_ids": np.concatenate([s.topk_ids.reshape(-1, k) for s in sequences]).astype(np.int32),
        "topk_logprobs": np.concatenate([s.topk_logprobs.reshape(-1, k) for s in sequences]).astype(np.float16),
        "seq_starts": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "chunk_ids": np.array([c.id for c in chunks], dtype=np.int64),
        "ce": np.array([s.ce for s in sequences], dtype=np.float32),
    }


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ShardError(f"{path}: cannot read the shard manifest ({error})") from None
    if not isinstance(manifest, dict) or "shards" not in manifest:
        raise ShardError(f"{path}: not a shard manifest")
    return manifest


class SourceShards:
    """Read access to one source's shards, by chunk id; keeps the last few shards in memory."""

    def __init__(self, directory: str | Path, cached_shards: int = 2) -> None:
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST
        if not manifest_path.exists():
            raise ShardError(f"{self.directory}: no {MANIFEST}, not a source shard folder")
        self.manifest = _read_manifest(manifest_path)
        self.records = self.manifest["shards"]
        self._firsts = [record["first_chunk"] for record in self.records]
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._cached_shards = cached_shards

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    @property
    def k(self) -> int:
        return int(self.manifest["k"])

    @property
    def source(self) -> str:
        return self.manifest["source"]

    @property
    def tokenizer(self) -> str:
        return self.manifest["tokenizer"]

    def __len__(self) -> int:
        return sum(record["n_chunks"] for record in self.records)

    def chunk_ids(self) -> np.ndarray:
        return np.concatenate([self._shard(i)["chunk_ids"] for i in range(len(self.records))]) if self.records else np.zeros(0, np.int64)

    def bytes_per_token(self) -> float:
        """Disk bytes per stored token row (all arrays included; the top-k part alone is k * 6)."""
        rows = sum(record["rows"] for record in self.records)
        return sum(record["bytes"] for record in self.records) / rows if rows else 0.0

    def sequence(self, chunk_id: int) -> SourceSequence:
        position = bisect_right(self._firsts, chunk_id) - 1
        if position >= 0 and chunk_id <= self.records[position]["last_chunk"]:
            arrays = self._shard(position)
            row = int(np.searchsorted(arrays["chunk_ids"], chunk_id))
            if row < len(arrays["chunk_ids"]) and arrays["chunk_ids"][row] == chunk_id:
                start, end = arrays["seq_starts"][row], arrays["seq_starts"][row + 1]
                return SourceSequence(
                    token_ids=arrays["token_ids"][start:end],
                    offsets=arrays["offsets"][start:end],
                    topk_ids=arrays["topk_ids"][start:end],
                    topk_logprobs=arrays["topk_logprobs"][start:end],
                    ce=float(arrays["ce"][row]),
                )
        raise KeyError(f"chunk {chunk_id} is not in {self.directory}")

    def _shard(self, position: int) -> dict[str, np.ndarray]:
        from safetensors.numpy import load_file

        if position not in self._cache:
            self._cache[position] = load_file(str(self.directory / self.records[position]["file"]))
            while len(self._cache) > self._cached_shards:
                self._cache.popitem(last=False)
        self._cache.move_to_end(position)
        return self._cache[position]
