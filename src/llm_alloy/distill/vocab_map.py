"""Vocabulary mapping: each source token id -> the target token id that stands for the same text.

Token strings are first normalized to the text they spell (`normalize_token`): byte-level BPE
('Ġthe', 'Ċ', 'Ã©'), SentencePiece ('▁the', byte fallback '<0x0A>') and plain vocabularies all become
' the', '\\n', 'é'. Exact matches of normalized strings are found with one dict; the remainder gets the
closest target token by Levenshtein distance among a bounded candidate set (rapidfuzz), so a 262k
vocabulary maps in seconds. The map is computed once per (source, target) pair and cached as
safetensors + json, keyed by a hash of both vocabularies.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from llm_alloy.files import write_atomic

FORMAT_VERSION = 1
# Candidates for the edit-distance fallback are at most this many bytes longer or shorter than the
# source string (a Levenshtein distance is at least the length difference).
LENGTH_WINDOW = 2

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class VocabMapError(RuntimeError):
    """A cached vocabulary map that cannot be read back, or a tokenizer without a vocabulary."""


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: printable bytes stand for themselves, the other 68 bytes
    (controls, space, 0x7F-0xA0, 0xAD) were shifted to U+0100.. so that 'Ġ' is the space byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [byte for byte in range(256) if byte not in printable]
    alphabet = {chr(byte): byte for byte in printable}
    alphabet.update({chr(256 + rank): byte for rank, byte in enumerate(shifted)})
    return alphabet


_BYTES_OF = _byte_alphabet()
_TO_LATIN1 = {ord(char): byte for char, byte in _BYTES_OF.items()}


def normalize_token(token: str, byte_level: bool | None = None) -> str:
    """The text a vocabulary entry spells, comparable across tokenizer conventions.

    Byte-level BPE entries are decoded through GPT-2's byte alphabet ('Ġthe' -> ' the', 'Ċ' -> '\\n',
    'Ã©' -> 'é'); SentencePiece entries get '▁' -> ' ' and byte-fallback entries ('<0x0A>') become their
    byte. Bytes that are only part of a UTF-8 character (the pieces of a split emoji) become surrogate
    escapes ('\\udcf0'), so a byte-level piece 'ð' and SentencePiece's '<0xF0>' both normalize to
    '\\udcf0' and match each other; `_utf8` turns them back into the raw bytes.

    `byte_level`: the tokenizer's convention (`is_byte_level`). None guesses from the token alone: byte-
    level when it contains '\u0120'-style shifted bytes (Ġ, Ċ, ĉ, ...) and no '▁'. The guess cannot tell
    a byte-level 'Ã©' from a SentencePiece 'Ã©', so pass the convention when it is known.
    """
    if byte_level is None:
        byte_level = "▁" not in token and any(ord(char) >= 256 and char in _BYTES_OF for char in token)
    if byte_level:
        try:
            raw = token.translate(_TO_LATIN1).encode("latin-1")
        except UnicodeEncodeError:  # an added token outside the byte alphabet spells itself
            raw = b"".join(bytes([_BYTES_OF[char]]) if char in _BYTES_OF else char.encode("utf-8") for char in token)
    else:
        fallback = _BYTE_FALLBACK.fullmatch(token)
        if fallback:
            raw = bytes([int(fallback.group(1), 16)])
        else:
            return token.replace("▁", " ")
    return raw.decode("utf-8", "surrogateescape")


def _utf8(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def load_tokenizer(name_or_path: str) -> Any:
    """A fast tokenizer for a packaged short name ('tiny-llama'), a local folder or a hub id.
    Raises `ModelNotAvailable` for a packaged model whose package is not installed."""
    from transformers import AutoTokenizer

    from llm_alloy.models.registry import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))


def _vocabulary(tokenizer: Any) -> dict[str, int]:
    vocabulary = tokenizer.get_vocab()
    if not vocabulary:
        raise VocabMapError(f"{type(tokenizer).__name__}: the tokenizer has an empty vocabulary")
    return vocabulary


def is_byte_level(tokenizer: Any) -> bool:
    """Whether a tokenizer's vocabulary uses GPT-2's byte alphabet: word-initial entries start with
    'Ġ' in byte-level BPE and with '▁' in SentencePiece, and either convention has thousands of them."""
    return _byte_level_vocabulary(_vocabulary(tokenizer))


def _byte_level_vocabulary(vocabulary: dict[str, int]) -> bool:
    byte_marked = sum(token.startswith("Ġ") for token in vocabulary)
    piece_marked = sum(token.startswith("▁") for token in vocabulary)
    return byte_marked > piece_marked


def token_strings(tokenizer: Any, ids: Iterable[int], *, byte_level: bool | None = None) -> list[str]:
    """Normalized strings of a token id sequence; special tokens (BOS, EOS, chat markers) become ''
    because they spell no text. Input for `align.align_by_edit_distance`."""
    ids = [int(token_id) for token_id in ids]
    if byte_level is None:
        byte_level = is_byte_level(tokenizer)
    special = _special_ids(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    return ["" if token_id in special else normalize_token(token, byte_level) for token_id, token in zip(ids, tokens)]


def vocabulary_key(tokenizer: Any) -> str:
    """Hash of everything the map depends on: the vocabulary, its convention, the special tokens."""
    return _vocabulary_key(tokenizer, _vocabulary(tokenizer))


def _vocabulary_key(tokenizer: Any, vocabulary: dict[str, int]) -> str:
    payload = {
        "format": FORMAT_VERSION,
        "byte_level": _byte_level_vocabulary(vocabulary),
        "vocabulary": sorted(vocabulary.items(), key=lambda item: item[1]),
        "special": sorted(_special_ids(tokenizer)),
        "roles": _special_roles(tokenizer),
    }
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode("utf-8", "surrogatepass")).hexdigest()


def _special_ids(tokenizer: Any) -> set[int]:
    # all_special_ids holds the named ones (bos, eos, ...); added tokens flagged special (chat and
    # repository markers) spell no text either.
    added = getattr(tokenizer, "added_tokens_decoder", {})
    return set(tokenizer.all_special_ids) | {int(token_id) for token_id, token in added.items() if token.special}


def _special_roles(tokenizer: Any) -> dict[str, int]:
    roles = {}
    for role in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{role}_token_id", None)
        if token_id is not None:
            roles[role] = int(token_id)
    return roles


@dataclass(frozen=True)
class VocabMap:
    """`source_to_target[source_id]`: target id, -1 = unmapped (its probability mass is dropped).
    `exact[source_id]`: the normalized strings are identical (False for edit-distance matches)."""

    source_to_target: np.ndarray
    exact: np.ndarray
    source_key: str
    target_key: str

    def map_ids(self, source_ids: np.ndarray) -> np.ndarray:
        """Target ids for an array of source ids; -1 for unmapped ids and for ids past the map (a model's
        embedding matrix may be padded beyond its tokenizer's vocabulary), and for negative ids."""
        ids = np.asarray(source_ids, dtype=np.int64)
        inside = (ids >= 0) & (ids < len(self.source_to_target))
        return np.where(inside, self.source_to_target[np.where(inside, ids, 0)], -1)

    @property
    def coverage(self) -> float:
        return float(np.mean(self.source_to_target >= 0))


def build_vocab_map(source_tokenizer: Any, target_tokenizer: Any, *, progress: bool = False) -> VocabMap:
    """Map every source vocabulary entry to a target entry.

    1. Special tokens map by role (bos->bos, eos->eos, unk->unk, pad->pad), else to the identical target
       special token, else stay unmapped: a chat marker must not become ordinary text.
    2. Ordinary tokens whose normalized string equals a target's map exactly (dict lookup). When several
       target entries spell the same string ('\\n' and '<0x0A>' in Gemma) the one that is not a byte
       fallback wins (that is what the target tokenizer produces), then the lowest id.
    3. The rest: the closest target string by Levenshtein distance over UTF-8 bytes, among a bounded
       candidate set (exhaustive search of a 262k vocabulary against another is billions of distances):
       target entries with the same first two bytes within LENGTH_WINDOW bytes of its length; if there
       are none, the same first byte within that window; if none, the same first byte at any length.
       So a word-initial space stays word-initial and a CJK character goes to an entry starting with its
       lead byte. Ties go to a target entry that is a prefix of the source string (the piece the target
       tokenizer would emit first), then to the lowest id. Entries whose first byte starts no target
       entry stay unmapped.
    """
    source_vocabulary = _vocabulary(source_tokenizer)
    target_vocabulary = _vocabulary(target_tokenizer)
    source_byte_level = _byte_level_vocabulary(source_vocabulary)
    target_byte_level = _byte_level_vocabulary(target_vocabulary)
    size = max(source_vocabulary.values()) + 1
    mapping = np.full(size, -1, dtype=np.int64)
    exact = np.zeros(size, dtype=bool)

    target_special = _special_ids(target_tokenizer)
    source_special = _special_ids(source_tokenizer)
    target_roles = _special_roles(target_tokenizer)
    special_by_token = {token: token_id for token, token_id in target_vocabulary.items() if token_id in target_special}
    for role, source_id in _special_roles(source_tokenizer).items():
        if role in target_roles and 0 <= source_id < size:
            mapping[source_id] = target_roles[role]

    target_of: dict[str, int] = {}
    ranked = sorted(
        (bool(_BYTE_FALLBACK.fullmatch(token)), token_id, token)
        for token, token_id in target_vocabulary.items()
        if token_id not in target_special
    )
    for _, token_id, token in ranked:
        target_of.setdefault(normalize_token(token, target_byte_level), token_id)

    unmatched: list[tuple[str, int]] = []
    for token, source_id in source_vocabulary.items():
        if source_id in source_special:
            if mapping[source_id] < 0 and token in special_by_token:
                mapping[source_id] = special_by_token[token]
            continue
        key = normalize_token(token, source_byte_level)
        match = target_of.get(key)
        if match is not None:
            mapping[source_id] = match
            exact[source_id] = True
        elif key:
            unmatched.append((key, source_id))

    _closest_by_edit_distance(unmatched, target_of, mapping, progress)
    return VocabMap(
        mapping,
        exact,
        _vocabulary_key(source_tokenizer, source_vocabulary),
        _vocabulary_key(target_tokenizer, target_vocabulary),
    )


def _latin1(key: str) -> str:
    # Levenshtein over bytes, carried as a str for rapidfuzz: one character per byte.
    return _utf8(key).decode("latin-1")


def _closest_by_edit_distance(
    unmatched: list[tuple[str, int]], target_of: dict[str, int], mapping: np.ndarray, progress: bool
) -> None:
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cdist
    from tqdm import tqdm

    # Candidate tiers, narrowest first: same first two bytes and near length; same first byte and near
    # length; same first byte. The first tier keeps the cdist blocks small ('Ġ'/'▁' words all share the
    # first byte, the space).
    by_two: dict[tuple[str, int], list[tuple[str, int]]] = defaultdict(list)
    by_one: dict[tuple[str, int], list[tuple[str, int]]] = defaultdict(list)
    by_first: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for key, target_id in sorted(target_of.items(), key=lambda item: item[1]):
        raw = _latin1(key)
        by_two[raw[:2], len(raw)].append((raw, target_id))
        by_one[raw[0], len(raw)].append((raw, target_id))
        by_first[raw[0]].append((raw, target_id))

    groups: dict[tuple[str, int], list[tuple[str, int]]] = defaultdict(list)
    for key, source_id in unmatched:
        raw = _latin1(key)
        groups[raw[:2], len(raw)].append((raw, source_id))

    window = range(-LENGTH_WINDOW, LENGTH_WINDOW + 1)
    for (head, length), queries in tqdm(groups.items(), desc="vocab map (edit distance)", disable=not progress):
        candidates = [entry for shift in window for entry in by_two.get((head, length + shift), ())]
        if not candidates:
            candidates = [entry for shift in window for entry in by_one.get((head[0], length + shift), ())]
        candidates = sorted(candidates, key=lambda entry: entry[1]) or by_first.get(head[0], [])
        if not candidates:
            continue
        candidate_strings = [raw for raw, _ in candidates]
        distance = cdist([raw for raw, _ in queries], candidate_strings, scorer=Levenshtein.distance, dtype=np.int32)
        # Tie-break towards a candidate that is a prefix of the query: look each query's prefixes up.
        column_of = {raw: column for column, raw in reversed(list(enumerate(candidate_strings)))}
        not_prefix = np.ones(distance.shape, dtype=np.int32)
        for row, (raw, _) in enumerate(queries):
            for end in range(1, len(raw) + 1):
                column = column_of.get(raw[:end])
                if column is not None:
                    not_prefix[row, column] = 0
        best = np.argmin(2 * distance + not_prefix, axis=1)
        candidate_ids = np.array([target_id for _, target_id in candidates], dtype=np.int64)
        mapping[[source_id for _, source_id in queries]] = candidate_ids[best]


def _cache_paths(cache_dir: Path, source_key: str, target_key: str) -> tuple[Path, Path]:
    stem = f"vocab-map-{source_key[:16]}-to-{target_key[:16]}"
    return cache_dir / f"{stem}.safetensors", cache_dir / f"{stem}.json"


def vocab_map_for(source_tokenizer: Any, target_tokenizer: Any, cache_dir: Path, *, progress: bool = False) -> VocabMap:
    """The map for a (source, target) pair, built once and then read from `cache_dir`.

    Files: `vocab-map-<source hash>-to-<target hash>.safetensors` (source_to_target int64, exact bool)
    and a `.json` beside it (both full hashes, sizes, counts, build seconds). The json is written last,
    so it marks a complete map; a crash before it leaves a map that is rebuilt.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file, save_file

    cache_dir = Path(cache_dir)
    source_key, target_key = vocabulary_key(source_tokenizer), vocabulary_key(target_tokenizer)
    tensors_path, meta_path = _cache_paths(cache_dir, source_key, target_key)
    if meta_path.exists() and tensors_path.exists():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            tensors = load_file(str(tensors_path))
            cached = VocabMap(tensors["source_to_target"], tensors["exact"], source_key, target_key)
        except (OSError, ValueError, KeyError, SafetensorError) as error:
            raise VocabMapError(f"{tensors_path}: unreadable cached vocabulary map ({error}); delete it to rebuild") from None
        if meta.get("source_key") == source_key and meta.get("target_key") == target_key:
            return cached

    started = time.perf_counter()
    built = build_vocab_map(source_tokenizer, target_tokenizer, progress=progress)
    seconds = time.perf_counter() - started
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(dir=cache_dir, prefix=f".{tensors_path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({"source_to_target": built.source_to_target, "exact": built.exact}, staging)
        os.replace(staging, tensors_path)
    finally:
        Path(staging).unlink(missing_ok=True)
    meta = {
        "format": FORMAT_VERSION,
        "source_key": source_key,
        "target_key": target_key,
        "source_size": int(len(built.source_to_target)),
        "mapped": int(np.sum(built.source_to_target >= 0)),
        "exact": int(np.sum(built.exact)),
        "build_seconds": round(seconds, 3),
    }
    write_atomic(meta_path, json.dumps(meta, indent=2) + "\n")
    return built
